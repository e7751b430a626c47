"""Semantic segmentation: UperNet heads, segmentor inference, metrics, mmseg checkpoints, data, presets.

Everything runs on the tiny ``internimage_test_32`` backbone (C=16) with 32-64 px images and narrow heads.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

import internimage
from internimage.data.transforms import hsv_to_rgb, rgb_to_hsv
from internimage.engine.optim import param_groups
from internimage.models.checkpoint import CheckpointError
from internimage.models.internimage import MODEL_SPECS, InternImage
from internimage.segmentation.data import (
    ADE20KDataset,
    CityscapesDataset,
    SegTestTransform,
    SegTrainTransform,
    photometric_distortion,
    seg_collate,
)
from internimage.segmentation.evaluation import SegMetric
from internimage.segmentation.models import (
    build_upernet,
    load_segmentation_checkpoint,
    mmseg_layer_id,
    rescale_size,
)

K = 4
CH, AUX = 16, 8  # head widths of the tiny test segmentor


def tiny_segmentor(num_classes: int = K, **backbone_kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"num_classes": 0, "layer_scale": 1.0, **backbone_kwargs}
    backbone = internimage.create_model("internimage_test_32", **kwargs)
    return build_upernet(backbone, num_classes, channels=CH, aux_channels=AUX)


COLOURS = np.array([[230, 30, 30], [30, 200, 30], [30, 30, 230], [235, 235, 235], [200, 60, 200]], dtype=np.float32)


def synthetic_scene(rng: np.random.Generator, size: int = 64, num_classes: int = K) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image of coloured rectangles on noise, (H, W) labels 0..num_classes-1."""
    label = np.zeros((size, size), dtype=np.uint8)
    for c in rng.permutation(np.arange(1, num_classes)):  # every class, as large blocks
        h, w = rng.integers(size // 3, size * 2 // 3, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        label[y : y + h, x : x + w] = c
    img = COLOURS[label] + rng.normal(0, 15, (size, size, 3))
    return img.clip(0, 255).astype(np.uint8), label


def write_ade(root, split: str, n: int, size: int = 64, seed: int = 0, classes: bool = True) -> None:
    """ADE20K layout with ADE's convention: stored label = class + 1, 0 = unlabelled (a border here)."""
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, label = synthetic_scene(rng, size)
        stored = label + 1
        stored[:2] = 0
        Image.fromarray(img).save(root / "images" / split / f"img_{i:03d}.jpg", quality=95)
        Image.fromarray(stored).save(root / "annotations" / split / f"img_{i:03d}.png")
    if classes:
        (root / "classes.txt").write_text("\n".join(["red", "green", "blue", "yellow"]) + "\n")


# ----------------------------------------------------------------------------------------------- model
def test_shapes_losses_and_every_parameter_gets_a_gradient():
    model = tiny_segmentor()
    x, y = torch.randn(2, 3, 64, 48), torch.randint(0, K, (2, 64, 48))
    y[:, :5] = 255
    assert model(x).shape == (2, K, 64, 48)
    out = model(x, y)
    assert set(out) == {"loss", "loss_decode", "loss_aux", "acc_seg"}
    assert torch.allclose(out["loss"], out["loss_decode"] + out["loss_aux"])
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad


def test_backbone_is_the_one_internimage_class_read_through_forward_intermediates():
    model = tiny_segmentor().eval()
    assert type(model.backbone) is InternImage
    assert not any(k.startswith(("backbone.head", "backbone.conv_head")) for k in model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    feats = model.extract_feat(x)
    ref = model.backbone.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[1:] for f in feats] == [(16 * 2**i, 64 // 2 ** (i + 2), 64 // 2 ** (i + 2)) for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(feats, ref))


def test_ignore_index_and_loss_averaging():
    model = tiny_segmentor().eval()
    x, y = torch.randn(1, 3, 32, 32), torch.randint(0, K, (1, 32, 32))
    y_half = y.clone()
    y_half[:, :16] = 255
    full_avg = model(x, y_half)["loss_decode"]
    model.avg_non_ignore = True
    valid_avg = model(x, y_half)["loss_decode"]
    # mmseg 0.x divides by all pixels: half of them ignored -> half the per-labelled-pixel mean.
    assert torch.allclose(full_avg * 2, valid_avg, rtol=1e-5)
    y_all = torch.full_like(y, 255)
    assert model(x, y_all)["loss_decode"].item() == 0.0


def test_slide_inference_matches_whole_when_one_window_covers_the_image_and_covers_every_pixel():
    model = tiny_segmentor().eval()
    x = torch.randn(1, 3, 64, 96)
    whole = model.inference(x, "whole")
    one = model.inference(x, "slide", crop_size=(64, 96), stride=(32, 32))
    assert torch.allclose(whole, one, atol=1e-6)
    slid = model.inference(x, "slide", crop_size=(32, 32), stride=(24, 24))
    assert slid.shape == whole.shape and torch.isfinite(slid).all()
    # A window position is an exact crop: its logits must equal a direct run of that crop where not overlapped.
    corner = model(x[:, :, :32, :32])
    assert torch.allclose(slid[:, :, :24, :24], corner[:, :, :24, :24], atol=1e-5)
    with pytest.raises(ValueError, match="slide inference needs"):
        model.inference(x, "slide")


def test_predict_tta_is_the_mean_of_view_probabilities_at_original_size():
    model = tiny_segmentor().eval()
    x = torch.randn(1, 3, 40, 56)
    probs = model.predict(x, scale=None, ratios=(1.0,), flip=True, size_divisor=0)
    views = [model(x).softmax(1), model(x.flip(-1)).flip(-1).softmax(1)]
    assert torch.allclose(probs, sum(views) / 2, atol=1e-6)
    ms = model.predict(x, scale=(112, 40), ratios=(0.5, 1.0, 1.5), flip=True)
    assert ms.shape == (1, K, 40, 56)
    assert torch.allclose(ms.sum(1), torch.ones(1, 40, 56), atol=1e-5)


def test_rescale_size_follows_mmcv_keep_ratio():
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)  # short side bound
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long side bound


# ----------------------------------------------------------------------------------------------- checkpoints
def official_head_shapes(in_channels: list[int], ch: int, aux: int, k: int) -> dict[str, tuple[int, ...]]:
    """The mmseg 0.x UPerHead + FCNHead parameter and buffer names, with shapes written from the architecture."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_module(prefix: str, cin: int, cout: int, ksize: int) -> None:
        shapes[f"{prefix}.conv.weight"] = (cout, cin, ksize, ksize)
        for b in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{b}"] = (cout,)
        shapes[f"{prefix}.bn.num_batches_tracked"] = ()

    last = in_channels[-1]
    for i in range(4):  # pool scales (1, 2, 3, 6)
        conv_module(f"decode_head.psp_modules.{i}.1", last, ch, 1)
    conv_module("decode_head.bottleneck", last + 4 * ch, ch, 3)
    for i, c in enumerate(in_channels[:-1]):
        conv_module(f"decode_head.lateral_convs.{i}", c, ch, 1)
        conv_module(f"decode_head.fpn_convs.{i}", ch, ch, 3)
    conv_module("decode_head.fpn_bottleneck", len(in_channels) * ch, ch, 3)
    shapes["decode_head.conv_seg.weight"], shapes["decode_head.conv_seg.bias"] = (k, ch, 1, 1), (k,)
    conv_module("auxiliary_head.convs.0", in_channels[2], aux, 3)
    shapes["auxiliary_head.conv_seg.weight"], shapes["auxiliary_head.conv_seg.bias"] = (k, aux, 1, 1), (k,)
    return shapes


def synthetic_mmseg_checkpoint(path, model) -> dict[str, torch.Tensor]:
    """An official-named mmseg state dict (random values) saved as ``{'state_dict', 'meta'}``."""
    g = torch.Generator().manual_seed(1)
    sd = {f"backbone.{k}": torch.randn(v.shape, generator=g) for k, v in model.backbone.state_dict().items()}
    for name, shape in official_head_shapes([16, 32, 64, 128], CH, AUX, K).items():
        sd[name] = torch.randint(0, 100, shape) if name.endswith("num_batches_tracked") else torch.randn(shape)
    torch.save({"state_dict": sd, "meta": {"mmseg_version": "0.27.0", "CLASSES": ["a", "b", "c", "d"]}}, path)
    return sd


def test_official_mmseg_names_map_one_to_one(tmp_path):
    model = tiny_segmentor()
    heads = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert heads == official_head_shapes([16, 32, 64, 128], CH, AUX, K)
    sd = synthetic_mmseg_checkpoint(tmp_path / "upernet.pth", model)
    result = load_segmentation_checkpoint(model, tmp_path / "upernet.pth")
    assert result.ok and result.format == "mmdet"
    own = model.state_dict()
    assert set(own) == set(sd)
    assert all(torch.equal(own[k], v.to(own[k].dtype)) for k, v in sd.items())


def test_mmseg_checkpoint_new_classes_and_errors(tmp_path):
    synthetic_mmseg_checkpoint(tmp_path / "upernet.pth", tiny_segmentor())
    other = tiny_segmentor(num_classes=7)
    with pytest.raises(CheckpointError, match="conv_seg"):
        load_segmentation_checkpoint(other, tmp_path / "upernet.pth")
    result = load_segmentation_checkpoint(other, tmp_path / "upernet.pth", new_classes=True)
    assert result.ok and other.decode_head.conv_seg.out_channels == 7
    bigger = build_upernet(internimage.create_model("internimage_test_32", num_classes=0, channels=32), K, CH, AUX)
    with pytest.raises(CheckpointError, match="shape conflicts"):
        load_segmentation_checkpoint(bigger, tmp_path / "upernet.pth")


def test_classification_checkpoint_loads_into_the_backbone_only(tmp_path):
    cls = internimage.create_model("internimage_test_32")  # no layer scale, with a classifier
    torch.save({"model": cls.state_dict()}, tmp_path / "cls.pth")
    model = tiny_segmentor()  # layer_scale=1.0 like the official seg configs
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    result = load_segmentation_checkpoint(model, tmp_path / "cls.pth")
    assert result.ok
    own = model.state_dict()
    for k, v in cls.state_dict().items():
        if not k.startswith(("head.", "conv_head.")):
            assert torch.equal(own[f"backbone.{k}"], v), k
    gammas = [v for k, v in own.items() if k.endswith(("gamma1", "gamma2"))]
    assert gammas and all(torch.equal(g, torch.ones_like(g)) for g in gammas)
    assert all(torch.equal(own[k], v) for k, v in heads_before.items())


def test_segmentor_roundtrip_through_safetensors(tmp_path):
    from internimage.models.checkpoint import save_state_dict

    a, b = tiny_segmentor(), tiny_segmentor(num_classes=K)
    for p in b.parameters():
        torch.nn.init.normal_(p)
    save_state_dict(a.state_dict(), tmp_path / "seg.safetensors")
    result = load_segmentation_checkpoint(b, tmp_path / "seg.safetensors")
    assert result.ok and result.format == "ours"  # our own file, not "mmdet" (it used to be logged so)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a.eval()(x), b.eval()(x))


# ----------------------------------------------------------------------------------------------- optimisation
def original_layer_id(var_name: str, num_max_layer: int, depths) -> int:
    """``get_num_layer_for_swin`` of the original segmentation/mmcv_custom/custom_layer_decay_optimizer_constructor.py
    (OpenGVLab/InternImage), rewritten from its text: same branch order, same prefix and substring tests."""
    if var_name.startswith("backbone.patch_embed"):
        return 0
    for prefix in ("mask_embed", "cls_embed", "level_embed", "query_embed", "query_feat"):
        if var_name.startswith(f"decode_head.{prefix}"):
            return 0
    if var_name.startswith("backbone.cb_modules.0.patch_embed") or "level_embeds" in var_name:
        return 0
    if var_name.startswith("backbone.layers") or var_name.startswith("backbone.levels"):
        parts = var_name.split(".")
        stage_id = int(parts[2])
        if parts[3] not in ["downsample", "norm"]:
            layer_id = int(parts[4])
            if stage_id == 0:
                return layer_id + 1
            if stage_id == 1:
                return layer_id + 1 + depths[0]
            if stage_id == 2:
                return layer_id + 1 + depths[0] + depths[1]
            return layer_id + 1 + depths[0] + depths[1] + depths[2]
        if stage_id == 0:
            return 1 + depths[0]
        if stage_id == 1:
            return 1 + depths[0] + depths[1]
        return 1 + depths[0] + depths[1] + depths[2]  # stage 2 and the last stage alike
    return num_max_layer - 1


def original_param_groups(model: torch.nn.Module, num_layers: int, rate: float, depths, weight_decay: float):
    """``CustomLayerDecayOptimizerConstructor.add_params`` of the same file (``paramwise_cfg`` num_layers, depths,
    layer_decay_rate; no DINO head, no backbone_small_lr): parameter name -> (lr_scale, weight_decay)."""
    num_layers = num_layers + 2  # the original's ``self.paramwise_cfg.get('num_layers') + 2``
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = (
            len(param.shape) == 1
            or name.endswith(".bias")
            or "relative_position" in name
            or "norm" in name
            or "sampling_offsets" in name
        )
        layer_id = original_layer_id(name, num_layers, depths)
        out[name] = (rate ** (num_layers - layer_id - 1), 0.0 if no_decay else weight_decay)
    return out


def test_official_layer_decay_ids_and_groups():
    depths, n = (4, 4, 18, 4), 30  # InternImage-T, num_layers=30 (upernet_internimage_t_512_160k_ade20k.py)
    assert mmseg_layer_id("backbone.patch_embed.conv1.weight", depths, n) == 0
    assert mmseg_layer_id("backbone.levels.0.blocks.3.dcn.offset.weight", depths, n) == 4
    assert mmseg_layer_id("backbone.levels.1.blocks.0.mlp.fc1.weight", depths, n) == 5
    assert mmseg_layer_id("backbone.levels.0.downsample.conv.weight", depths, n) == 5
    assert mmseg_layer_id("backbone.levels.2.norm.0.weight", depths, n) == 27
    assert mmseg_layer_id("backbone.levels.3.norm.0.weight", depths, n) == 27
    assert mmseg_layer_id("backbone.levels.3.blocks.3.gamma1", depths, n) == 30
    assert mmseg_layer_id("decode_head.conv_seg.weight", depths, n) == 31
    # Every parameter name of a full-size T and H backbone (H: level-2 post_norms, levels.3.norm), a UperNet with its
    # auxiliary head and a Mask2Former head, against the original rule. mmseg_layer_id(..., num_layers) is the
    # original's id under paramwise_cfg num_layers (the original adds 2 to get its number of ids).
    names = {}
    for arch in ("internimage_t_1k_224", "internimage_h_22kto1k_640"):
        with torch.device("meta"):
            backbone = internimage.create_model(arch, num_classes=0)
        names[backbone.depths] = ["backbone." + k for k, _ in backbone.named_parameters()]
    assert any(".post_norms." in k for k in names[(6, 6, 32, 6)]) and "backbone.levels.3.norm.0.weight" in names[depths]
    model = tiny_segmentor()
    heads = [k for k, _ in model.named_parameters() if not k.startswith("backbone.")]
    heads += [k for k, _ in tiny_mask2former().named_parameters() if not k.startswith("backbone.")]
    assert any(k.startswith("auxiliary_head.") for k in heads) and any(".query_embed." in k for k in heads)
    for backbone_depths, backbone_names in names.items():
        num = sum(backbone_depths)
        for name in backbone_names + heads:
            assert mmseg_layer_id(name, backbone_depths, num) == original_layer_id(name, num + 2, backbone_depths), name
    # The AdamW groups of the tiny UperNet against the original constructor, parameter by parameter.
    num = sum(model.backbone.depths)
    expected = original_param_groups(model, num, 0.9, model.backbone.depths, weight_decay=0.05)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.9, rule="segmentation")
    by_name = {id(p): g for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(params)
    for name, (scale, wd) in expected.items():
        group = by_name[id(params[name])]
        assert group["lr_scale"] == pytest.approx(scale), name
        assert group["weight_decay"] == wd, name
    assert by_name[id(params["decode_head.conv_seg.weight"])]["lr_scale"] == 1.0
    assert by_name[id(params["backbone.patch_embed.conv1.weight"])]["lr_scale"] == pytest.approx(0.9 ** (num + 1))


def test_mask2former_param_groups_follow_the_original_constructor():
    # The original constructor (also the Mask2Former-H config's) puts every name containing 'sampling_offsets' in
    # its no-decay group; the removed seg_param_groups used to decay those weights.
    model = tiny_mask2former()
    num = sum(model.backbone.depths)
    expected = original_param_groups(model, num, 0.95, model.backbone.depths, weight_decay=0.05)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.95, rule="segmentation")
    by_name = {id(p): g for g in groups for p in g["params"]}
    ours = {name: (by_name[id(p)]["lr_scale"], by_name[id(p)]["weight_decay"]) for name, p in model.named_parameters()}
    assert {k: v for k, v in ours.items() if v != pytest.approx(expected[k])} == {}


def test_engine_uses_the_official_segmentation_rule():
    from internimage.segmentation import SegmentationConfig, SegmentationTask

    cfg = SegmentationConfig(model="internimage_test_32", num_classes=K, decode_channels=CH, aux_channels=AUX)
    cfg.layer_decay = 0.9
    task = SegmentationTask(cfg)
    model = task.build_model()
    scale = {n: g["lr_scale"] for g in task.param_groups(model) for n in g["names"]}
    wd = {n: g["weight_decay"] for g in task.param_groups(model) for n in g["names"]}
    ids, num_ids = model.layer_id_fn()
    assert all(scale[n] == pytest.approx(0.9 ** (num_ids - 1 - ids(n))) for n in scale)
    assert scale["backbone.patch_embed.conv1.weight"] == pytest.approx(0.9 ** (sum(model.backbone.depths) + 1))
    assert scale["decode_head.conv_seg.weight"] == 1.0 and wd["decode_head.conv_seg.bias"] == 0.0
    assert wd["backbone.levels.0.blocks.0.dcn.offset.weight"] == cfg.weight_decay
    cfg.batch_size = 1
    with pytest.raises(ValueError, match="batch_size 1 without multi-GPU SyncBatchNorm"):
        SegmentationTask(cfg).build_model()


# ----------------------------------------------------------------------------------------------- metrics
def test_confusion_matrix_metrics_match_torchmetrics():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    k = 6
    ours = SegMetric(k)
    per_class = MulticlassJaccardIndex(k, ignore_index=255, average="none")
    macro = MulticlassJaccardIndex(k, ignore_index=255, average="macro")
    micro_acc = MulticlassAccuracy(k, ignore_index=255, average="micro")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        target = torch.randint(0, k - 1, (2, 24, 24), generator=g)  # class k-1 never in labels...
        target[torch.rand(target.shape, generator=g) < 0.2] = 255
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=k - 1), 0)
        pred[:, 0, 0] = k - 2
        for metric in (per_class, macro, micro_acc):
            metric.update(pred, target)
        ours.update(pred, target)
    result = ours.compute()
    assert result["mIoU"] == pytest.approx(macro.compute().item(), abs=1e-6)
    assert result["aAcc"] == pytest.approx(micro_acc.compute().item(), abs=1e-6)
    ref = per_class.compute()
    assert np.allclose(result["IoU"][: k - 1], ref[: k - 1].numpy(), atol=1e-6)
    assert np.isnan(result["IoU"][k - 1])  # ...nor in predictions: excluded from mIoU, like mmseg


def test_metric_update_from_scores_and_bad_labels():
    metric = SegMetric(3)
    scores = torch.zeros(1, 3, 2, 2)
    scores[:, 1] = 1.0
    metric.update(scores, torch.tensor([[[1, 1], [2, 255]]]))
    res = metric.compute()
    assert res["aAcc"] == pytest.approx(2 / 3) and res["IoU"][1] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="label value 7"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # a forked rank starts its own (tiny) thread pool, not the parent's
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 8, 8), generator=g)
    pred = torch.randint(0, 3, (4, 8, 8), generator=g)
    metric = SegMetric(3)
    metric.update(pred[rank::world], target[rank::world])
    metric.all_reduce()
    queue.put((rank, metric.cm.numpy().copy()))  # by value: a tensor would be shared through a file descriptor
    dist.destroy_process_group()


def test_confusion_matrix_is_all_reduced_under_ddp():
    import torch.multiprocessing as mp

    # Forked ranks: gloo and SegMetric are already imported here (a spawned rank imports this module, torch and
    # internimage again, seconds each).
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = random.randint(20000, 40000)
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 8, 8), generator=g)
    pred = torch.randint(0, 3, (4, 8, 8), generator=g)
    full = SegMetric(3)
    full.update(pred, target)
    assert torch.equal(torch.from_numpy(results[0]), full.cm) and torch.equal(torch.from_numpy(results[1]), full.cm)


# ----------------------------------------------------------------------------------------------- data
def test_ade20k_reduce_zero_label_and_classes(tmp_path):
    write_ade(tmp_path, "training", 2, size=32)
    ds = ADE20KDataset(tmp_path, "training", transform=None)
    assert ds.classes == ("red", "green", "blue", "yellow") and len(ds) == 2
    sample = ds[0]
    stored = torch.from_numpy(np.array(Image.open(tmp_path / "annotations" / "training" / "img_000.png")))
    assert (sample["label"][stored == 0] == 255).all()
    assert torch.equal(sample["label"][stored > 0], stored[stored > 0].long() - 1)
    raw = ADE20KDataset(tmp_path, "training", reduce_zero_label=False, classes=list("abcde"))
    assert torch.equal(raw[0]["label"], stored.long())
    with pytest.raises(FileNotFoundError, match="no image folder"):
        ADE20KDataset(tmp_path, "validation")


def test_cityscapes_layout_and_label_id_mapping(tmp_path):
    city = tmp_path / "leftImg8bit" / "val" / "lindau"
    gt = tmp_path / "gtFine" / "val" / "lindau"
    city.mkdir(parents=True)
    gt.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(city / "lindau_000000_000019_leftImg8bit.png")
    ids = np.full((8, 16), 7, np.uint8)  # road
    ids[:, 8:] = 26  # car
    ids[0] = 1  # ego vehicle: ignored
    Image.fromarray(ids).save(gt / "lindau_000000_000019_gtFine_labelIds.png")
    ds = CityscapesDataset(tmp_path, "val")
    label = ds[0]["label"]
    assert ds.num_classes == 19 and label[1, 0] == 0 and label[1, 15] == 13 and (label[0] == 255).all()


def test_train_transform_official_pipeline_shapes_padding_and_determinism():
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    label = torch.randint(0, K, (40, 60))
    t = SegTrainTransform(crop_size=(64, 64), scale=(128, 32), ratio_range=(0.5, 2.0), seed=3)
    out_img, out_label = t(img, label)
    assert out_img.shape == (3, 64, 64) and out_label.shape == (64, 64) and out_img.dtype == torch.float32
    a = SegTrainTransform(crop_size=(16, 16), scale=(64, 32), seed=5)(img, label)
    b = SegTrainTransform(crop_size=(16, 16), scale=(64, 32), seed=5)(img, label)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Small image (short side 32 * 0.5 = 16 < crop 64): padded with image 0 and label 255.
    small = SegTrainTransform(crop_size=(64, 64), scale=(32, 16), ratio_range=(1.0, 1.0), photometric=False, seed=0)
    out_img, out_label = small(img, label)
    assert (out_label[20:] == 255).all() and (out_img[:, 20:] == 0).all() and (out_label[:16, :24] != 255).all()


def test_cat_max_ratio_rejects_crops_dominated_by_one_class():
    label = torch.zeros(64, 64, dtype=torch.long)
    label[:, 56:] = 1  # class 1 only in the right eighth
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)

    def hits(ratio: float) -> int:
        t = SegTrainTransform((16, 16), (64, 64), (1.0, 1.0), ratio, flip_prob=0, photometric=False, seed=0)
        return sum(int((t(img, label)[1] == 1).any()) for _ in range(60))

    # Uniform crops see class 1 ~16 % of the time; with up to 10 retries for a < 75 % majority, ~57 %.
    assert hits(0.75) > 2 * hits(1.0) and hits(0.75) >= 25


def test_photometric_distortion_stays_in_range_and_hsv_roundtrip():
    img = torch.rand(3, 16, 16) * 255
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(img)), img, atol=1e-3)
    rng = random.Random(0)
    outs = [photometric_distortion(img.clone(), rng) for _ in range(10)]
    assert all(o.min() >= 0 and o.max() <= 255 for o in outs)
    assert any(not torch.allclose(o, img) for o in outs)


def test_collate_and_test_transform():
    mean_image = torch.tensor([124, 116, 104], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4)
    x, y = SegTestTransform()(mean_image, torch.zeros(4, 4, dtype=torch.long))
    assert x.abs().max() < 0.01  # ImageNet mean (123.675, 116.28, 103.53) maps to ~0
    batch = seg_collate([{"image": x, "label": y, "path": "a"}, {"image": x, "label": y, "path": "b"}])
    assert batch["image"].shape == (2, 3, 4, 4) and batch["path"] == ["a", "b"]
    with pytest.raises(ValueError, match="different sizes"):
        seg_collate([{"image": x, "label": y, "path": "a"}, {"image": x[:, :2], "label": y[:2], "path": "b"}])


# ----------------------------------------------------------------------------------------------- presets
def test_presets_follow_the_official_recipes():
    from internimage.segmentation import SegmentationConfig
    from internimage.segmentation.presets import get_preset, list_presets

    expected = {  # variant: (crop, lr, layer decay, images per GPU)
        "t": (512, 6e-5, 1.0, 2),
        "s": (512, 6e-5, 1.0, 2),
        "b": (512, 6e-5, 1.0, 2),
        "l": (640, 2e-5, 0.94, 2),
        "xl": (640, 2e-5, 0.94, 2),
        "h": (896, 2e-5, 0.95, 1),
        "g": (896, 2e-5, 0.95, 1),
    }
    # The ADE20K UperNet presets; the other datasets' are checked in tests/test_segmentation_presets_more.py.
    names = [n for n in list_presets() if n.startswith("upernet_") and n.endswith("_ade20k")]
    assert len(names) == 7
    for name in names:
        variant = name.split("_")[2]
        crop, lr, decay, batch = expected[variant]
        assert name == f"upernet_internimage_{variant}_{crop}_160k_ade20k"
        cfg = SegmentationConfig.from_dict({**SegmentationConfig().to_dict(), **get_preset(name)})
        cfg.validate()
        assert (cfg.crop_size, cfg.lr, cfg.layer_decay, cfg.batch_size) == ((crop, crop), lr, decay, batch)
        assert (cfg.iters, cfg.warmup_iters, cfg.sched, cfg.poly_power, cfg.min_lr) == (160000, 1500, "poly", 1.0, 0)
        assert cfg.img_scale == (4 * crop, crop) and cfg.weight_decay == 0.05
        assert cfg.layer_scale == (None if variant in ("h", "g") else 1.0)
        assert MODEL_SPECS[cfg.model][0] == variant  # the backbone of the right size
    with pytest.raises(ValueError, match="unknown segmentation preset"):
        get_preset("upernet_internimage_q_512_160k_ade20k")


def test_full_size_parameter_counts_match_the_official_zoo():
    from internimage.engine.config import apply_overrides
    from internimage.segmentation import SegmentationConfig, build_segmentor
    from internimage.segmentation.presets import get_preset

    readme = {"t_512": 59e6, "s_512": 80e6, "b_512": 128e6, "l_640": 256e6, "xl_640": 368e6, "h_896": 1.12e9}
    readme = {f"upernet_internimage_{k}_160k_ade20k": v for k, v in readme.items()}
    readme["mask2former_internimage_h_896_80k_cocostuff2ade20k_ss"] = 1.31e9
    for key, official in readme.items():
        cfg = apply_overrides(SegmentationConfig(), get_preset(key))
        with torch.device("meta"):  # shapes only: no memory, no init time
            model = build_segmentor(cfg, load_pretrained=False)
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(official, rel=0.005), key


# ----------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_overfitting_a_few_images_reaches_high_miou():
    rng = np.random.default_rng(0)
    scenes = [synthetic_scene(rng, 64) for _ in range(4)]
    norm = SegTestTransform()
    x = torch.stack([norm(torch.from_numpy(i).permute(2, 0, 1), None)[0] for i, _ in scenes])
    y = torch.stack([torch.from_numpy(lab).long() for _, lab in scenes])
    model = tiny_segmentor()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        loss = model(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    metric = SegMetric(K)
    metric.update(model.eval().predict(x, scale=None), y)
    assert metric.compute()["mIoU"] > 0.8


# ----------------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step training run through ``internimage train --task segmentation`` on a synthetic ADE20K folder."""
    from internimage.cli import main

    root = tmp_path_factory.mktemp("seg")
    write_ade(root / "data", "training", 4, size=64)
    write_ade(root / "data", "validation", 2, size=48, seed=1)
    args = ["train", "--task", "segmentation", "--data-root", str(root / "data"), "--num-classes", "4"]
    args += ["--output", str(root / "run"), "--iters", "2", "--batch-size", "2", "--device", "cpu"]
    args += ["model=internimage_test_32", "decode_channels=16", "aux_channels=8", "crop_size=[32,32]"]
    args += ["img_scale=[64,32]", "warmup_iters=1", "eval_every=0", "workers=0", "log_every=1"]
    assert main(args) == 0
    return root


def test_cli_train_writes_weights_with_model_metadata(trained_run):
    import json

    from safetensors import safe_open

    with safe_open(str(trained_run / "run" / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    fields = json.loads(meta["segmentation_config"])
    assert meta["task"] == "segmentation" and fields["model"] == "internimage_test_32"
    assert fields["classes"] == ["red", "green", "blue", "yellow"] and fields["decode_channels"] == 16
    result = json.loads((trained_run / "run" / "result.json").read_text())
    assert {"mIoU", "aAcc", "mAcc"} <= set(result)


def test_cli_eval_and_predict(trained_run, capsys):
    from internimage.cli import main

    weights = str(trained_run / "run" / "model.safetensors")
    out = trained_run / "eval"
    args = ["eval", "--task", "segmentation", "--checkpoint", weights, "--data-root", str(trained_run / "data")]
    assert main([*args, "--flip", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "yellow" in printed
    import json

    result = json.loads((out / "seg_metrics.json").read_text())
    assert 0.0 <= result["mIoU"] <= 1.0 and set(result["per_class"]) == {"red", "green", "blue", "yellow"}
    assert (out / "per_class_iou.png").is_file()

    preds = trained_run / "preds"
    image = trained_run / "data" / "images" / "validation" / "img_000.jpg"
    assert main(["predict", "--task", "segmentation", "--checkpoint", weights, str(image), "--output", str(preds)]) == 0
    overlay = Image.open(preds / "img_000_seg.png")
    label = np.array(Image.open(preds / "img_000_label.png"))
    assert overlay.size[0] > 48 and overlay.size[1] >= 48  # image + legend panel on the right
    assert label.shape == (48, 48) and label.max() < 4


def test_cli_errors_are_one_line(tmp_path, capsys):
    from internimage.cli import main

    args = ["eval", "--task", "segmentation", "--checkpoint", str(tmp_path / "missing.safetensors")]
    assert main([*args, "--data-root", str(tmp_path)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- Mask2Former
def tiny_mask2former(num_classes: int = K):
    from internimage.segmentation.models.segmentor import build_mask2former

    torch.manual_seed(0)
    backbone = internimage.create_model("internimage_test_32", num_classes=0, layer_scale=1.0)
    kwargs = dict(dim=32, num_queries=8, heads=4, hidden=64, enc_layers=2, dec_layers=3, num_points=256)
    return build_mask2former(backbone, num_classes, **kwargs)


def test_deformable_attention_samples_exactly_at_reference_points():
    from internimage.segmentation.models.mask2former import MSDeformAttn

    attn = MSDeformAttn(8, heads=2, levels=1, points=1)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)  # zero offsets: sample at the reference point itself
    h, w = 3, 5
    value = torch.randn(2, h * w, 8)
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    ref = torch.stack((xs, ys), -1).view(1, -1, 2).expand(2, -1, -1)
    out = attn(torch.randn(2, h * w, 8), ref, value, [(h, w)])
    assert torch.allclose(out, attn.output_proj(attn.value_proj(value)), atol=1e-5)


def test_hungarian_matching_recovers_the_planted_assignment():
    from internimage.segmentation.models.mask2former import hungarian_match, semantic_targets

    label = torch.zeros(16, 16, dtype=torch.long)
    label[:8] = 2
    label[12:, :4] = 3
    label[0, 0] = 255
    gt_cls, gt_masks = semantic_targets(label, num_classes=4)
    assert gt_cls.tolist() == [0, 2, 3] and not gt_masks[:, 0, 0].any()
    queries = [5, 1, 3]  # query q_i carries target i
    cls = torch.zeros(6, 5)
    masks = torch.full((6, 16, 16), -8.0)
    for t, q in enumerate(queries):
        cls[q, gt_cls[t]] = 6.0
        masks[q][gt_masks[t]] = 8.0
    qi, ti = hungarian_match(cls, masks, gt_cls, gt_masks, num_points=512)
    assert dict(zip(ti.tolist(), qi.tolist())) == dict(enumerate(queries))


def test_mask2former_shapes_gradients_and_loss_falls():
    model = tiny_mask2former()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    y[:, :4] = 255
    out = model(x, y)
    assert {"loss", "loss_cls", "loss_mask", "loss_dice"} <= set(out) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    model.eval()
    probs = model.predict(x, scale=None)
    assert probs.shape == (2, K, 64, 64) and torch.allclose(probs.sum(1), torch.ones(2, 64, 64), atol=1e-5)
    model.train()
    rng = np.random.default_rng(0)
    scenes = [synthetic_scene(rng, 64) for _ in range(2)]
    x = torch.stack([SegTestTransform()(torch.from_numpy(i).permute(2, 0, 1), None)[0] for i, _ in scenes])
    y = torch.stack([torch.from_numpy(lab).long() for _, lab in scenes])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(16):
        loss = model(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3])


def test_mask2former_layer_decay_puts_query_embeddings_with_the_stem():
    depths, n = (6, 6, 32, 6), 50
    for name in (
        "query_embed.weight",
        "query_feat.weight",
        "level_embed.weight",
        "cls_embed.bias",
        "mask_embed.0.weight",
    ):
        assert mmseg_layer_id(f"decode_head.{name}", depths, n) == 0
    assert mmseg_layer_id("decode_head.pixel_decoder.mask_feature.weight", depths, n) == n + 1


def official_mask2former_shapes(
    in_ch: list[int], dim: int, hidden: int, q: int, k: int, enc: int, dec: int, heads: int
):
    """mmseg/mmdet 2.x Mask2FormerHead names of the InternImage-H config, shapes written from the architecture."""
    shapes: dict[str, tuple[int, ...]] = {}
    pd = "decode_head.pixel_decoder"
    for i, c in enumerate(in_ch[1:][::-1]):
        shapes.update({f"{pd}.input_convs.{i}.conv.weight": (dim, c, 1, 1), f"{pd}.input_convs.{i}.conv.bias": (dim,)})
        shapes.update({f"{pd}.input_convs.{i}.gn.weight": (dim,), f"{pd}.input_convs.{i}.gn.bias": (dim,)})
    shapes[f"{pd}.level_encoding.weight"] = (3, dim)

    def ffn(prefix: str) -> None:
        shapes.update(
            {f"{prefix}.ffns.0.layers.0.0.weight": (hidden, dim), f"{prefix}.ffns.0.layers.0.0.bias": (hidden,)}
        )
        shapes.update({f"{prefix}.ffns.0.layers.1.weight": (dim, hidden), f"{prefix}.ffns.0.layers.1.bias": (dim,)})

    def norms(prefix: str, n: int) -> None:
        for j in range(n):
            shapes.update({f"{prefix}.norms.{j}.weight": (dim,), f"{prefix}.norms.{j}.bias": (dim,)})

    for i in range(enc):
        a = f"{pd}.encoder.layers.{i}.attentions.0"
        # heads x 3 levels x 4 points (x 2 coordinates for the offsets)
        shapes.update({f"{a}.sampling_offsets.weight": (heads * 24, dim), f"{a}.sampling_offsets.bias": (heads * 24,)})
        shapes.update(
            {f"{a}.attention_weights.weight": (heads * 12, dim), f"{a}.attention_weights.bias": (heads * 12,)}
        )
        for proj in ("value_proj", "output_proj"):
            shapes.update({f"{a}.{proj}.weight": (dim, dim), f"{a}.{proj}.bias": (dim,)})
        ffn(f"{pd}.encoder.layers.{i}")
        norms(f"{pd}.encoder.layers.{i}", 2)
    shapes.update(
        {
            f"{pd}.lateral_convs.0.conv.weight": (dim, in_ch[0], 1, 1),
            f"{pd}.output_convs.0.conv.weight": (dim, dim, 3, 3),
        }
    )
    for name in ("lateral_convs", "output_convs"):
        shapes.update({f"{pd}.{name}.0.gn.weight": (dim,), f"{pd}.{name}.0.gn.bias": (dim,)})
    shapes.update({f"{pd}.mask_feature.weight": (dim, dim, 1, 1), f"{pd}.mask_feature.bias": (dim,)})
    for i in range(dec):
        layer = f"decode_head.transformer_decoder.layers.{i}"
        for j in range(2):
            shapes.update({f"{layer}.attentions.{j}.attn.in_proj_weight": (3 * dim, dim)})
            shapes.update({f"{layer}.attentions.{j}.attn.in_proj_bias": (3 * dim,)})
            shapes.update({f"{layer}.attentions.{j}.attn.out_proj.weight": (dim, dim)})
            shapes.update({f"{layer}.attentions.{j}.attn.out_proj.bias": (dim,)})
        ffn(layer)
        norms(layer, 3)
    shapes.update(
        {
            "decode_head.transformer_decoder.post_norm.weight": (dim,),
            "decode_head.transformer_decoder.post_norm.bias": (dim,),
        }
    )
    shapes.update({"decode_head.query_embed.weight": (q, dim), "decode_head.query_feat.weight": (q, dim)})
    shapes.update(
        {
            "decode_head.level_embed.weight": (3, dim),
            "decode_head.cls_embed.weight": (k + 1, dim),
            "decode_head.cls_embed.bias": (k + 1,),
        }
    )
    for j in (0, 2, 4):
        shapes.update({f"decode_head.mask_embed.{j}.weight": (dim, dim), f"decode_head.mask_embed.{j}.bias": (dim,)})
    return shapes


def test_official_mask2former_names_map_one_to_one(tmp_path):
    model = tiny_mask2former()
    heads = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    expected = official_mask2former_shapes([16, 32, 64, 128], 32, 64, 8, K, enc=2, dec=3, heads=4)
    assert heads == expected
    g = torch.Generator().manual_seed(2)
    sd = {f"backbone.{k}": torch.randn(v.shape, generator=g) for k, v in model.backbone.state_dict().items()}
    sd.update({k: torch.randn(v, generator=g) for k, v in expected.items()})
    torch.save({"state_dict": sd, "meta": {}}, tmp_path / "m2f.pth")
    assert load_segmentation_checkpoint(model, tmp_path / "m2f.pth").ok
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
