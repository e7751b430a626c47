"""Detection: InternImage-FPN, Mask R-CNN / Cascade heads, mmdet key mapping, COCO data and evaluation."""

from __future__ import annotations

import importlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from internimage import create_model
from internimage.detection.data import (
    CocoDetection,
    Compose,
    RandomFlip,
    Resize,
    collate_detection,
    detection_transforms,
)
from internimage.detection.evaluation import coco_evaluate, predictions_to_coco
from internimage.detection.models import (
    LevelRoIAlign,
    build_detector,
    build_internimage_body,
    load_detector_weights,
    load_mmdet_detector,
    map_mmdet_state_dict,
)
from internimage.models.checkpoint import CheckpointError


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# COCO mask decoding (every CocoDetection target: polygons -> bitmaps) and COCO evaluation use faster-coco-eval, an
# optional extra; only the tests that read the synthetic COCO set or evaluate skip without it.
needs_faster_coco_eval = pytest.mark.skipif(
    not _importable("faster_coco_eval"),
    reason="needs faster-coco-eval (COCO mask decoding / evaluation): pip install 'internimage[detection]'",
)

K = 3  # foreground classes of the tiny detectors
F = 32  # FPN width
FC = 64  # box FC width
M = 16  # mask head width
TINY = dict(
    fpn_channels=F,
    mask_channels=M,
    mask_convs=2,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=64,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=64,
    box_batch_size_per_image=32,
    backbone_overrides=dict(layer_scale=1.0),  # as every official detection config
)
MASK_RCNN = dict(TINY, box_fc_dim=FC)
CASCADE = dict(TINY, head_convs=2, head_conv_channels=M, head_fc_dim=FC)


def make_coco(root: Path, n: int, size: tuple[int, int] = (96, 128), seed: int = 0) -> tuple[Path, Path]:
    """Synthetic COCO: red rectangles (category 3) and blue 16-gon discs (category 6) on noise, polygon masks."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    h, w = size
    images, anns = [], []
    for i in range(n):
        pixels = (np.random.RandomState(seed * 1000 + i).rand(h, w, 3) * 60 + 90).astype(np.uint8)
        img = Image.fromarray(pixels)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 3)):
            cat = rng.choice((3, 6))
            bw, bh = rng.randint(24, 48), rng.randint(24, 48)
            x0, y0 = rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
            if cat == 3:
                poly = [x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]
                draw.polygon(poly, fill=(220, 40, 40))
            else:
                cx, cy = x0 + bw / 2, y0 + bh / 2
                angles = [2 * math.pi * k / 16 for k in range(16)]
                poly = [v for a in angles for v in (cx + bw / 2 * math.cos(a), cy + bh / 2 * math.sin(a))]
                draw.polygon(poly, fill=(40, 40, 220))
            xs, ys = poly[0::2], poly[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            ann = dict(id=len(anns) + 1, image_id=i + 1, category_id=cat, iscrowd=0, bbox=box, area=float(bw * bh))
            anns.append(dict(ann, segmentation=[poly]))
        img.save(root / "images" / f"{i:03d}.png")
        images.append(dict(id=i + 1, file_name=f"{i:03d}.png", height=h, width=w))
    cats = [dict(id=3, name="box"), dict(id=6, name="disc")]
    (root / "ann.json").write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return root / "ann.json", root / "images"


@pytest.fixture(scope="module")
def coco4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_coco(tmp_path_factory.mktemp("coco4"), 4)


# --------------------------------------------------------------------------------------------- backbone
def test_fpn_reads_the_one_backbone_class():
    torch.manual_seed(0)
    model = build_detector("mask_rcnn", "internimage_test_32", K, **MASK_RCNN).eval()
    body = model.backbone.body
    reference = create_model("internimage_test_32", layer_scale=1.0)
    head_free = {k for k in reference.state_dict() if k.startswith(("patch_embed.", "levels."))}
    assert set(body.state_dict()) == head_free  # official backbone layout, classifier pruned
    assert any(k.endswith("gamma1") for k in head_free)  # detection presets' layer_scale=1.0 adds gammas
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = body.forward_intermediates(x, intermediates_only=True)
        out = model.backbone(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 24), (32, 8, 12), (64, 4, 6), (128, 2, 3)]
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert all(v.shape[1] == F for v in out.values()) and model.backbone.out_channels == F
    assert model.backbone.strides == [4, 8, 16, 32, 64]


def test_backbone_loads_classification_and_mmdet_weights(tmp_path):
    torch.manual_seed(0)
    cls = create_model("internimage_test_32")  # classification: head, no gammas
    torch.save({"model": cls.state_dict()}, tmp_path / "cls.pth")
    body = build_internimage_body("internimage_test_32", str(tmp_path / "cls.pth"), layer_scale=1.0)
    sd = body.state_dict()
    key = "levels.2.blocks.1.dcn.offset.weight"
    assert torch.equal(sd[key], cls.state_dict()[key])
    assert torch.equal(sd["levels.0.blocks.0.gamma1"], torch.ones(16))  # new in detection: keeps its init
    mmdet = {f"backbone.{k}": torch.randn_like(v) for k, v in sd.items()}
    mmdet["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    torch.save({"state_dict": mmdet, "meta": {"epoch": 12}}, tmp_path / "det.pth")
    body2 = build_internimage_body("internimage_test_32", str(tmp_path / "det.pth"), layer_scale=1.0)
    assert all(torch.equal(v, mmdet[f"backbone.{k}"]) for k, v in body2.state_dict().items())
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="no InternImage backbone weights"):
        build_internimage_body("internimage_test_32", str(tmp_path / "junk.pth"))


def test_level_roi_align_uses_mmdet_levels_and_aligned_sampling():
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    names, strides = ["0", "1", "2", "3"], [4, 8, 16, 32]
    feats = {n: torch.randn(1, 4, 512 // s, 512 // s) for n, s in zip(names, strides)}
    pool = LevelRoIAlign(names, 7, strides=strides)
    # sqrt(area) 40 -> 0, 120 -> 1, 250 -> 2, 480 -> 3 (floor(log2(s / 56)), clamped)
    boxes = torch.tensor([[10.0, 10, 50, 50], [0, 0, 120, 120], [0, 0, 250, 250], [0, 0, 480, 480]])
    assert pool.levels(boxes).tolist() == [0, 1, 2, 3]
    out = pool(feats, [boxes], [(512, 512)])
    for i, (level, stride) in enumerate(zip(names, strides)):
        rois = torch.cat([torch.zeros(1, 1), boxes[i : i + 1]], 1)
        ref = roi_align(feats[level], rois, 7, 1.0 / stride, sampling_ratio=0, aligned=True)
        torch.testing.assert_close(out[i : i + 1], ref)
    inferred = LevelRoIAlign(names, 7)(feats, [boxes], [(500, 510)])  # strides inferred from padded maps
    torch.testing.assert_close(inferred, out)


# --------------------------------------------------------------------------------------------- mmdet mapping
def _mmdet_neck_rpn(sd: dict[str, torch.Tensor], anchors: int = 3, softmax_rpn: bool = False) -> None:
    """mmdet 2.x FPN(in=[16,32,64,128], out=F, num_outs=5) + RPNHead names and shapes."""
    for i, c in enumerate((16, 32, 64, 128)):
        sd[f"neck.lateral_convs.{i}.conv.weight"] = torch.randn(F, c, 1, 1)
        sd[f"neck.lateral_convs.{i}.conv.bias"] = torch.randn(F)
        sd[f"neck.fpn_convs.{i}.conv.weight"] = torch.randn(F, F, 3, 3)
        sd[f"neck.fpn_convs.{i}.conv.bias"] = torch.randn(F)
    sd["rpn_head.rpn_conv.weight"], sd["rpn_head.rpn_conv.bias"] = torch.randn(F, F, 3, 3), torch.randn(F)
    logits = anchors * (2 if softmax_rpn else 1)
    sd["rpn_head.rpn_cls.weight"], sd["rpn_head.rpn_cls.bias"] = torch.randn(logits, F, 1, 1), torch.randn(logits)
    sd["rpn_head.rpn_reg.weight"], sd["rpn_head.rpn_reg.bias"] = torch.randn(4 * anchors, F, 1, 1), torch.randn(12)


def _mmdet_backbone(sd: dict[str, torch.Tensor]) -> None:
    # The official detection backbone layout is the classification one without head (ORIGINAL.md §1.3-1.4).
    for k, v in create_model("internimage_test_32", layer_scale=1.0).state_dict().items():
        if k.startswith(("patch_embed.", "levels.")):
            sd[f"backbone.{k}"] = torch.randn_like(v)


def _mmdet_mask_rcnn(num_classes: int = K, softmax_rpn: bool = False) -> dict[str, torch.Tensor]:
    """Official mmdet 2.x Mask R-CNN names and shapes for our tiny architecture (Shared2FC box head, FCN mask)."""
    sd: dict[str, torch.Tensor] = {}
    _mmdet_backbone(sd)
    _mmdet_neck_rpn(sd, softmax_rpn=softmax_rpn)
    b = "roi_head.bbox_head."
    sd[b + "shared_fcs.0.weight"], sd[b + "shared_fcs.0.bias"] = torch.randn(FC, F * 49), torch.randn(FC)
    sd[b + "shared_fcs.1.weight"], sd[b + "shared_fcs.1.bias"] = torch.randn(FC, FC), torch.randn(FC)
    sd[b + "fc_cls.weight"], sd[b + "fc_cls.bias"] = torch.randn(num_classes + 1, FC), torch.randn(num_classes + 1)
    sd[b + "fc_reg.weight"], sd[b + "fc_reg.bias"] = torch.randn(4 * num_classes, FC), torch.randn(4 * num_classes)
    m = "roi_head.mask_head."
    for i, c in enumerate((F, M)):
        sd[f"{m}convs.{i}.conv.weight"], sd[f"{m}convs.{i}.conv.bias"] = torch.randn(M, c, 3, 3), torch.randn(M)
    sd[m + "upsample.weight"], sd[m + "upsample.bias"] = torch.randn(M, M, 2, 2), torch.randn(M)
    sd[m + "conv_logits.weight"] = torch.randn(num_classes, M, 1, 1)
    sd[m + "conv_logits.bias"] = torch.randn(num_classes)
    return sd


def _mmdet_cascade(num_classes: int = K) -> dict[str, torch.Tensor]:
    """Official Cascade (3 x ConvFCBBoxHead 2conv1fc + BN, class-specific reg; 3 x FCNMaskHead) names and shapes."""
    sd: dict[str, torch.Tensor] = {}
    _mmdet_backbone(sd)
    _mmdet_neck_rpn(sd)
    for s in range(3):
        b = f"roi_head.bbox_head.{s}."
        for i, c in enumerate((F, M)):
            sd[f"{b}shared_convs.{i}.conv.weight"] = torch.randn(M, c, 3, 3)
            for name in ("weight", "bias", "running_mean"):
                sd[f"{b}shared_convs.{i}.bn.{name}"] = torch.randn(M)
            sd[f"{b}shared_convs.{i}.bn.running_var"] = torch.rand(M) + 0.5
            sd[f"{b}shared_convs.{i}.bn.num_batches_tracked"] = torch.tensor(7)
        sd[b + "shared_fcs.0.weight"], sd[b + "shared_fcs.0.bias"] = torch.randn(FC, M * 49), torch.randn(FC)
        sd[b + "fc_cls.weight"], sd[b + "fc_cls.bias"] = torch.randn(num_classes + 1, FC), torch.randn(num_classes + 1)
        sd[b + "fc_reg.weight"] = torch.randn(4 * num_classes, FC)  # reg_class_agnostic=False
        sd[b + "fc_reg.bias"] = torch.randn(4 * num_classes)
        m = f"roi_head.mask_head.{s}."
        for i, c in enumerate((F, M)):
            sd[f"{m}convs.{i}.conv.weight"], sd[f"{m}convs.{i}.conv.bias"] = torch.randn(M, c, 3, 3), torch.randn(M)
        sd[m + "upsample.weight"], sd[m + "upsample.bias"] = torch.randn(M, M, 2, 2), torch.randn(M)
        sd[m + "conv_logits.weight"] = torch.randn(num_classes, M, 1, 1)
        sd[m + "conv_logits.bias"] = torch.randn(num_classes)
    return sd


_CONVERTED = ("cls_score", "bbox_pred", "mask_fcn_logits", "fc_cls")


@pytest.mark.parametrize("arch", ["mask_rcnn", "cascade_mask_rcnn"])
def test_mmdet_checkpoint_every_tensor_finds_one_place(tmp_path, arch):
    torch.manual_seed(0)
    model = build_detector(arch, "internimage_test_32", K, **(MASK_RCNN if arch == "mask_rcnn" else CASCADE))
    sd = _mmdet_mask_rcnn() if arch == "mask_rcnn" else _mmdet_cascade()
    own = model.state_dict()
    mapped = map_mmdet_state_dict(sd, model)
    assert not mapped.unmapped
    assert sorted(mapped.source.values()) == sorted(sd)  # every checkpoint tensor used exactly once
    assert set(mapped.state_dict) == set(own)  # and every model tensor covered
    for ours, tensor in mapped.state_dict.items():
        assert tensor.shape == own[ours].shape, ours
        if not any(c in ours for c in _CONVERTED):
            assert torch.equal(tensor, sd[mapped.source[ours]]), ours
    torch.save({"state_dict": sd}, tmp_path / "det.pth")
    load_mmdet_detector(model, tmp_path / "det.pth")
    loaded = model.state_dict()
    if arch == "mask_rcnn":
        b, m = "roi_head.bbox_head.", "roi_head.mask_head."
        cls_w = loaded["roi_heads.box_predictor.cls_score.weight"]
        assert torch.equal(cls_w[0], sd[b + "fc_cls.weight"][K]) and torch.equal(cls_w[1:], sd[b + "fc_cls.weight"][:K])
        reg = loaded["roi_heads.box_predictor.bbox_pred.weight"]
        assert torch.equal(reg[:4], torch.zeros(4, FC)) and torch.equal(reg[4:], sd[b + "fc_reg.weight"])
        logits = loaded["roi_heads.mask_predictor.mask_fcn_logits.bias"]
        assert logits[0] == 0 and torch.equal(logits[1:], sd[m + "conv_logits.bias"])
    else:
        for s in range(3):
            w, ref = loaded[f"roi_heads.box_heads.{s}.fc_cls.bias"], sd[f"roi_head.bbox_head.{s}.fc_cls.bias"]
            assert torch.equal(w, torch.cat([ref[K:], ref[:K]]))
    # The same file through the generic loader (what `internimage eval --checkpoint official.pth` uses).
    assert load_detector_weights(model, tmp_path / "det.pth").format == "mmdet"


def test_mmdet_class_scores_agree_after_mapping():
    torch.manual_seed(0)
    model = build_detector("mask_rcnn", "internimage_test_32", K, **MASK_RCNN).eval()
    sd = _mmdet_mask_rcnn(softmax_rpn=True)
    model.load_state_dict(map_mmdet_state_dict(sd, model).state_dict)
    x = torch.randn(5, FC)
    mmdet_prob = torch.softmax(x @ sd["roi_head.bbox_head.fc_cls.weight"].T + sd["roi_head.bbox_head.fc_cls.bias"], -1)
    ours = torch.softmax(model.roi_heads.box_predictor.cls_score(x), -1)
    torch.testing.assert_close(ours[:, 1:], mmdet_prob[:, :K])  # foreground classes
    torch.testing.assert_close(ours[:, 0], mmdet_prob[:, K])  # background
    # Softmax RPN (two logits per anchor, foreground first) becomes the same sigmoid probability.
    feat = torch.randn(1, F, 4, 4)
    two = torch.nn.functional.conv2d(feat, sd["rpn_head.rpn_cls.weight"], sd["rpn_head.rpn_cls.bias"])
    fg = torch.softmax(two.view(1, 3, 2, 4, 4), 2)[:, :, 0]
    torch.testing.assert_close(torch.sigmoid(model.rpn.head.cls_logits(feat)), fg)


def test_mmdet_checkpoint_of_other_shape_is_refused(tmp_path):
    model = build_detector("mask_rcnn", "internimage_test_32", K, **MASK_RCNN)
    torch.save({"state_dict": _mmdet_mask_rcnn(num_classes=K + 2)}, tmp_path / "det.pth")
    with pytest.raises(CheckpointError, match="shape conflicts.*cls_score"):
        load_mmdet_detector(model, tmp_path / "det.pth")
    result = load_detector_weights(model, tmp_path / "det.pth", strict=False)  # fine-tuning: heads skipped
    assert "roi_heads.box_predictor.cls_score.weight" in result.skipped
    assert "backbone.fpn.inner_blocks.0.0.weight" not in result.missing


# --------------------------------------------------------------------------------------------- optimizer
def test_detection_layer_decay_follows_the_official_rule():
    from internimage.engine import param_groups

    model = build_detector("mask_rcnn", "internimage_test_32", K, **MASK_RCNN)
    depths = model.backbone.body.depths  # (1, 1, 2, 1): 5 blocks, ids 1..5, heads 6
    groups = param_groups(model, 0.05, 0.5, "detection")
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    last = sum(depths) + 1
    assert scale["backbone.body.patch_embed.conv1.weight"] == 0.5**last  # id 0
    assert scale["backbone.body.levels.2.blocks.1.mlp.fc1.weight"] == 0.5 ** (last - (1 + 1 + 1 + 1))
    assert scale["backbone.fpn.inner_blocks.0.0.weight"] == 1.0
    assert scale["roi_heads.box_predictor.cls_score.weight"] == 1.0
    assert decay["backbone.body.levels.0.blocks.0.gamma1"] == 0.0  # 1-D
    assert decay["backbone.fpn.inner_blocks.0.0.bias"] == 0.0
    assert decay["roi_heads.box_head.fc6.weight"] == 0.05
    assert decay["backbone.body.levels.0.downsample.conv.weight"] == 0.05


# --------------------------------------------------------------------------------------------- data
@needs_faster_coco_eval
def test_coco_dataset_targets_and_masks(coco4):
    ann, images = coco4
    ds = CocoDetection(ann, images)
    assert len(ds) == 4 and ds.cat_ids == [3, 6] and ds.class_names == ["box", "disc"]
    raw = json.loads(ann.read_text())
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 96, 128)
    n0 = sum(a["image_id"] == 1 for a in raw["annotations"])
    assert target["boxes"].shape == (n0, 4) and target["masks"].shape == (n0, 96, 128)
    assert set(target["labels"].tolist()) <= {1, 2}
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.where(mask > 0)
        assert abs(xs.min() - box[0]) <= 1.5 and abs(xs.max() + 1 - box[2]) <= 1.5
        assert abs(ys.min() - box[1]) <= 1.5 and abs(ys.max() + 1 - box[3]) <= 1.5
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoDetection(ann.parent / "nope.json", images)


@needs_faster_coco_eval
def test_transforms_resize_flip_and_3x_pipeline(coco4):
    ann, images = coco4
    ds = CocoDetection(ann, images)
    image, target = ds[1]
    big, t_big = Resize([(1333, 800)])(image, target)
    assert big.shape[-2:] == (800, 1067)  # scale = min(1333 / 128, 800 / 96)
    torch.testing.assert_close(t_big["boxes"], target["boxes"] * torch.tensor([1067 / 128, 800 / 96] * 2))
    flipped, t_flip = RandomFlip(1.0)(image, target)
    assert torch.equal(flipped, image.flip(-1))
    torch.testing.assert_close(t_flip["boxes"][:, 0], 128 - target["boxes"][:, 2])
    for mask, box in zip(t_flip["masks"], t_flip["boxes"]):
        xs = torch.where(mask.any(0))[0]
        assert abs(xs.min() - box[0]) <= 1.5 and abs(xs.max() + 1 - box[2]) <= 1.5
    random.seed(0)
    pipe = detection_transforms("3x", train=True, scale_factor=0.1)
    for _ in range(10):
        out, t = pipe(image, target)
        h, w = out.shape[-2:]
        assert 48 <= min(h, w) <= 80 and max(h, w) <= 134
        assert t["masks"].shape == (len(t["boxes"]), h, w) and len(t["labels"]) == len(t["boxes"])
        assert (t["boxes"][:, 2:] <= torch.tensor([w, h])).all() and (t["boxes"] >= 0).all()
    with pytest.raises(ValueError, match="recipe"):
        detection_transforms("2x", train=True)


def _gt_predictions(ds: CocoDetection) -> list[dict[str, torch.Tensor]]:
    preds = []
    for i in range(len(ds)):
        t = ds.load_target(i)
        n = len(t["boxes"])
        masks = t["masks"][:, None].float()
        preds.append(dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(n), masks=masks))
    return preds


@needs_faster_coco_eval
def test_coco_evaluate_perfect_and_matches_pycocotools(coco4):
    pytest.importorskip("pycocotools")
    ann, images = coco4
    ds = CocoDetection(ann, images)
    ids = [im["id"] for im in ds.images]
    perfect = coco_evaluate(ann, predictions_to_coco(_gt_predictions(ds), ids, ds.cat_ids))
    assert perfect["bbox_mAP"] == pytest.approx(1.0) and perfect["segm_mAP"] == pytest.approx(1.0)
    torch.manual_seed(0)
    noisy = []
    for p in _gt_predictions(ds):
        n = len(p["boxes"])
        boxes = p["boxes"] + torch.randn(n, 4) * 4
        masks = p["masks"].roll(shifts=3, dims=-1)
        noisy.append(dict(boxes=boxes, labels=p["labels"], scores=torch.rand(n), masks=masks))
    results = predictions_to_coco(noisy, ids, ds.cat_ids)
    fast = coco_evaluate(ann, results)
    ref = coco_evaluate(ann, results, backend="pycocotools")
    assert 0.05 < fast["bbox_mAP"] < 0.95
    for key in fast:
        assert fast[key] == pytest.approx(ref[key], abs=1e-9), key


@needs_faster_coco_eval
def test_detectors_predict_at_original_size(coco4):
    ann, images = coco4
    ds = CocoDetection(ann, images, Compose([Resize([(64, 48)])]))
    batch = collate_detection([ds[0], ds[1]])
    assert batch["images"][0].shape[-2:] == (48, 64)
    for arch, kwargs in (("mask_rcnn", MASK_RCNN), ("cascade_mask_rcnn", CASCADE)):
        torch.manual_seed(0)
        model = build_detector(arch, "internimage_test_32", 2, **kwargs).eval()
        with torch.no_grad():
            preds = model(batch["images"], orig_sizes=[t["orig_size"] for t in batch["targets"]])
        for p in preds:
            d = len(p["boxes"])
            assert p["masks"].shape == (d, 1, 96, 128) and p["scores"].shape == (d,)
            assert ((p["labels"] >= 1) & (p["labels"] <= 2)).all()
            assert (p["boxes"][:, 2:] <= torch.tensor([128.0, 96.0]) + 1e-3).all()


@needs_faster_coco_eval
def test_autocast_keeps_heads_and_boxes_in_float32(coco4):
    ann, images = coco4
    ds = CocoDetection(ann, images, Compose([Resize([(64, 48)])]), train=True)
    batch = collate_detection([ds[0]])
    torch.manual_seed(0)
    model = build_detector("mask_rcnn", "internimage_test_32", 2, **MASK_RCNN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch["images"], batch["targets"])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(batch["images"], orig_sizes=[(96, 128)])[0]
    assert pred["boxes"].dtype == torch.float32 and pred["masks"].dtype == torch.float32


def test_presets_follow_the_official_recipes():
    from internimage.detection import DetectionConfig
    from internimage.detection.presets import get_preset, list_presets
    from internimage.engine.config import apply_overrides

    # The Mask R-CNN / Cascade presets; the DINO ones are checked in tests/test_dino.py.
    names = [n for n in list_presets() if not n.startswith("dino_") and n.endswith("_coco")]
    assert len(names) == 10 and "mask_rcnn_internimage_t_fpn_1x_coco" in names
    for name in names:
        cfg = apply_overrides(DetectionConfig(), get_preset(name))
        cfg.validate()
        assert cfg.layer_scale == 1.0 and cfg.num_classes == 80 and cfg.weight_decay == 0.05
        assert cfg.optimizer == "adamw" and cfg.sched == "step" and cfg.warmup_iters == 500
        assert cfg.layer_decay_rule == "detection" and cfg.clip_grad is None
        assert (cfg.epochs, cfg.decay_milestones, cfg.recipe) == (
            (12, [8, 11], "1x") if "_1x_" in name else (36, [27, 33], "3x")
        )
    t = apply_overrides(DetectionConfig(), get_preset("mask_rcnn_internimage_t_fpn_1x_coco"))
    assert (t.arch, t.model, t.drop_path_rate, t.lr, t.layer_decay) == (
        "mask_rcnn", "internimage_t_1k_224", 0.2, 1e-4, 1.0,
    )  # fmt: skip
    b = get_preset("mask_rcnn_internimage_b_fpn_3x_coco")
    assert b["drop_path_rate"] == 0.4
    xl = apply_overrides(DetectionConfig(), get_preset("cascade_internimage_xl_fpn_3x_coco"))
    assert (xl.arch, xl.lr, xl.layer_decay, xl.drop_path_rate, xl.ema) == ("cascade_mask_rcnn", 2e-4, 0.9, 0.6, True)
    with pytest.raises(ValueError, match="unknown detection preset"):
        get_preset("mask_rcnn_internimage_q_fpn_1x_coco")


@pytest.mark.parametrize(
    "arch,backbone,millions",
    [
        ("mask_rcnn", "internimage_t_1k_224", 49),
        ("mask_rcnn", "internimage_s_1k_224", 69),
        ("mask_rcnn", "internimage_b_1k_224", 115),
        ("cascade_mask_rcnn", "internimage_l_22k_384", 277),
        ("cascade_mask_rcnn", "internimage_xl_22k_384", 387),
    ],
)
def test_full_size_detectors_match_the_official_parameter_counts(arch, backbone, millions):
    # The official model zoo's #params column (COCO, 80 classes); built on the meta device, no memory used.
    # Mask R-CNN T/S/B: 48.92M / 68.72M / 115.25M; Cascade L/XL with class-specific fc_reg (4 x 80 rows per stage):
    # 277.31M / 387.45M.
    with torch.device("meta"):
        model = build_detector(arch, backbone, 80, backbone_overrides=dict(layer_scale=1.0))
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < 0.5


def _official_layer_id(name: str, num_max_layer: int, depths: list[int]) -> int:
    """``get_num_layer_for_swin`` of the official detection/mmcv_custom/custom_layer_decay_optimizer_constructor.py,
    re-written from its text (``num_max_layer`` is the config's ``num_layers + 2``)."""
    if name.startswith("backbone.patch_embed") or "level_embeds" in name:
        return 0
    if name.startswith("backbone.layers") or name.startswith("backbone.levels"):
        parts = name.split(".")
        stage = int(parts[2])
        if parts[3] not in ("downsample", "norm"):
            return int(parts[4]) + 1 + sum(depths[:stage])
        return 1 + sum(depths[: min(stage, 2) + 1])
    return num_max_layer - 1


def _official_groups(names_params, depths, rate, wd, offset_lr_scale):
    """(lr scale, weight decay) of each parameter as the official constructor sets them."""
    num_max_layer = sum(depths) + 2
    out = {}
    for name, param in names_params:
        no_decay = param.ndim == 1 or name.endswith(".bias") or "relative_position" in name or "norm" in name
        no_decay = no_decay or "sampling_offsets" in name
        scale = rate ** (num_max_layer - _official_layer_id(name, num_max_layer, depths) - 1)
        if "sampling_offsets" in name or "reference_points" in name:
            scale *= offset_lr_scale
        out[name] = (scale, 0.0 if no_decay else wd)
    return out


@pytest.mark.parametrize("arch", ["dino", "cb_dino", "mask_rcnn"])
def test_detection_param_groups_are_the_official_constructors(arch):
    # Every parameter's lr scale and weight decay against the official rule applied to the official names.
    from internimage.detection.models.dino import build_cb_dino, build_dino
    from internimage.engine import param_groups

    tiny = dict(neck_channels=32, num_queries=20, enc_layers=1, dec_layers=2, heads=2, hidden=64, num_dn_queries=6)
    if arch == "mask_rcnn":
        model = build_detector("mask_rcnn", "internimage_test_32", K, **MASK_RCNN)
    else:
        build = build_cb_dino if arch == "cb_dino" else build_dino
        model = build("internimage_test_32", K, backbone_overrides=dict(layer_scale=1.0), **tiny)
    depths = [1, 1, 2, 1]  # internimage_test_32
    rate, wd, offset = 0.9, 1e-4, 1e-3
    groups = param_groups(model, wd, rate, "detection", offset_lr_mul=offset)
    ours = {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}
    official_names = [(n.replace("backbone.body.", "backbone."), p) for n, p in model.named_parameters()]
    official = _official_groups(official_names, depths, rate, wd, offset)
    for (name, _), (official_name, _) in zip(model.named_parameters(), official_names):
        assert ours[name][0] == pytest.approx(official[official_name][0], rel=1e-12), name
        assert ours[name][1] == official[official_name][1], name
    if arch == "cb_dino":  # the original's names match no backbone rule: no layer decay on either backbone
        assert {s for n, (s, _) in ours.items() if n.startswith("backbone.")} == {1.0}
    if arch != "mask_rcnn":
        assert ours["bbox_head.transformer.level_embeds"][0] == pytest.approx(rate**6)
        assert any("sampling_offsets" in n and s == pytest.approx(offset) for n, (s, _) in ours.items())


def test_dino_pipelines_follow_the_official_configs():
    from internimage.detection.data import RandomCrop, Resize

    random.seed(0)
    # H/G/CB-H: Resize(img_scale=[(2000, 600), (2000, 1800)], multiscale_mode='range'): short side uniform in 600-1800.
    image = torch.zeros(3, 100, 150, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1])}
    shorts = {detection_transforms("dino_ss", train=True)(image, target)[0].shape[-2] for _ in range(200)}
    assert 600 <= min(shorts) < 700 and 1200 < max(shorts) <= 1334  # 1800 is capped by the long side 2000 / 1.5
    assert len(shorts) > 100  # a range, not a few values
    with pytest.raises(ValueError, match="mode"):
        Resize(mode="ranges")
    # T/L: the crop branch first resizes to a long side of 4200, not 1333. On a 100 x 1000 image the 3x crop branch
    # keeps 133 rows (h/w <= 133/384) while DINO's keeps >= 384 of 400 (h/w >= 384/600); the other branch: 0.1.
    wide = {"boxes": torch.tensor([[0.0, 0, 1000, 100]]), "labels": torch.tensor([1])}
    ratios = {
        recipe: [
            (lambda out: out.shape[-2] / out.shape[-1])(detection_transforms(recipe, train=True)(image_w, wide)[0])
            for image_w in [torch.zeros(3, 100, 1000, dtype=torch.uint8)] * 40
        ]
        for recipe in ("3x", "dino")
    }
    assert max(ratios["3x"]) < 0.4 and max(ratios["dino"]) > 0.6
    # ... and rejects crops without objects (mmdet allow_negative_crop=False): the dataset then draws another image.
    corner = {"boxes": torch.tensor([[0.0, 0, 4, 4]]), "labels": torch.tensor([1])}
    big = torch.zeros(3, 1000, 1000, dtype=torch.uint8)
    drawn = [RandomCrop((384, 600), allow_negative=False)(big, corner) for _ in range(50)]
    assert any(d is None for d in drawn) and all(len(d[1]["boxes"]) == 1 for d in drawn if d is not None)
    assert all(RandomCrop((384, 600))(big, corner) is not None for _ in range(20))


@needs_faster_coco_eval
def test_a_rejected_sample_is_replaced_by_an_image_of_the_same_orientation(coco4):
    ann, images = coco4
    calls = []

    def reject_first(image, target):
        calls.append(target["image_id"])
        return None if len(calls) == 1 else (image, target)

    ds = CocoDetection(ann, images, transforms=reject_first)
    _, target = ds[0]
    wide = {info["id"]: info["width"] > info["height"] for info in ds.images}
    assert len(calls) == 2 and target["image_id"] == calls[1] and wide[calls[1]] == wide[calls[0]]
    with pytest.raises(RuntimeError, match="rejected 100 samples"):
        CocoDetection(ann, images, transforms=lambda image, target: None)[0]


#: The presets of the official configs beyond the COCO ones (detection/configs/{crowd_human,lvis,openimages,voc,coco}).
BEYOND_COCO = {
    "cascade_internimage_xl_fpn_3x_crowd_human": ("crowdhuman", "cascade_mask_rcnn", 1),
    "dino_4scale_cbinternimage_h_objects365_lvis_minival_ss": ("lvis", "cb_dino", 1203),
    "dino_4scale_cbinternimage_h_objects365_lvis_val_ss": ("lvis", "cb_dino", 1203),
    "dino_4scale_cbinternimage_h_objects365_openimages_ss": ("openimages", "cb_dino", 601),
    "dino_4scale_cbinternimage_h_objects365_voc07": ("voc", "cb_dino", 20),
    "dino_4scale_cbinternimage_h_objects365_voc12": ("voc", "cb_dino", 20),
    "mask_rcnn_internimage_t_fpn_1x_coco_with_dcnv4": ("coco", "mask_rcnn", 80),
    "dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr": ("coco", "dino", 80),
}


def test_presets_beyond_coco_follow_the_official_configs():
    from internimage.detection import DetectionConfig
    from internimage.detection.presets import get_preset, list_presets
    from internimage.engine.config import apply_overrides

    assert set(BEYOND_COCO) <= set(list_presets())
    cfgs = {}
    for name, (dataset, arch, classes) in BEYOND_COCO.items():
        cfg = apply_overrides(DetectionConfig(), get_preset(name))
        cfg.validate()
        assert (cfg.dataset, cfg.arch, cfg.num_classes) == (dataset, arch, classes), name
        cfgs[name] = cfg
    # The CB-H fine-tuning configs: short side 600-1200, tested at (2000, 1000), 300 detections, clip 0.1, decay 0.94.
    for name in [n for n in BEYOND_COCO if "objects365" in n]:
        c = cfgs[name]
        assert (c.recipe, tuple(c.img_scale), c.clip_grad, c.layer_decay, c.offset_lr_mul) == (
            "dino_ss_1200", (2000, 1000), 0.1, 0.94, 1e-3,
        )  # fmt: skip
        assert c.model_kwargs["max_per_img"] == 300 and c.batch_size == 1 and c.decay_milestones == []
    iters = {n: (cfgs[n].iters, cfgs[n].eval_every, cfgs[n].lr) for n in BEYOND_COCO if "objects365" in n}
    assert iters["dino_4scale_cbinternimage_h_objects365_lvis_val_ss"] == (80000, 500, 1e-4)
    assert iters["dino_4scale_cbinternimage_h_objects365_openimages_ss"] == (100000, 2000, 1e-4)
    assert iters["dino_4scale_cbinternimage_h_objects365_voc07"] == (20000, 500, 5e-5)
    ch = cfgs["cascade_internimage_xl_fpn_3x_crowd_human"]
    assert (ch.recipe, ch.epochs, ch.lr, ch.weight_decay, ch.layer_decay, ch.drop_path_rate) == (
        "3x", 36, 1e-4, 1e-4, 0.94, 0.4,
    )  # fmt: skip
    v4 = cfgs["mask_rcnn_internimage_t_fpn_1x_coco_with_dcnv4"]
    assert v4.model_kwargs == {"backbone_overrides": {"use_dcn_v4_op": True}} and v4.recipe == "1x"
    lr01 = cfgs["dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr"]
    assert (lr01.backbone_lr_mult, lr01.layer_decay, lr01.weight_decay, lr01.clip_grad) == (0.1, 1.0, 0.05, 0.1)


def test_backbone_lr_mult_and_mmcv_default_decay_follow_mmcv_custom_keys():
    """mmcv's DefaultOptimizerConstructor with custom_keys={'backbone': dict(lr_mult=0.1)}: every parameter whose
    name holds 'backbone' trains at 0.1x, and every parameter (norms and biases included) decays."""
    from internimage.engine.optim import param_groups

    model = build_detector("dino", "internimage_test_32", 3)
    groups = param_groups(model, 0.05, 1.0, "mmcv_default", backbone_lr_mult=0.1)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert all(g["weight_decay"] == 0.05 for g in groups)
    assert {scale[n] for n in scale if "backbone" in n} == {0.1}
    assert {scale[n] for n in scale if "backbone" not in n} == {1.0}


def test_use_dcn_v4_op_preset_builds_the_same_detector_with_the_dcnv4_kernel():
    from internimage.detection import DetectionConfig
    from internimage.detection.task import build_detector_from_config

    cfg = DetectionConfig(model="internimage_test_32", num_classes=3)
    torch.manual_seed(0)
    plain = build_detector_from_config(cfg).eval()
    cfg.model_kwargs = {"backbone_overrides": {"use_dcn_v4_op": True}}
    torch.manual_seed(0)
    v4 = build_detector_from_config(cfg).eval()
    assert plain.state_dict().keys() == v4.state_dict().keys()
    dcns = [m for m in v4.modules() if type(m).__name__ == "DCNv3"]
    assert dcns and all(m.use_dcn_v4_op for m in dcns)
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = plain(x, orig_sizes=[(64, 64)])[0], v4(x, orig_sizes=[(64, 64)])[0]
    torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)


def test_box_only_cascade_of_the_crowd_human_config_trains_and_predicts_without_masks():
    torch.manual_seed(0)
    kw = dict(with_mask=False, head_convs=0, head_fcs=2, head_norm=False, box_loss="smooth_l1", box_loss_weight=1.0)
    model = build_detector("cascade_mask_rcnn", "internimage_test_32", 1, reg_class_agnostic=True, **kw)
    assert not any("mask_head" in n for n, _ in model.named_parameters())
    images = [torch.rand(3, 64, 64)]
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 56.0]]), "labels": torch.tensor([1])}
    losses = model(images, [target])
    assert not any("mask" in k for k in losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        pred = model(images, orig_sizes=[(64, 64)])[0]
    assert "masks" not in pred and pred["boxes"].shape[1] == 4


@pytest.mark.parametrize(
    "preset,millions,tol",
    [
        ("dino_4scale_cbinternimage_h_objects365_lvis_minival_ss", 2180, 5),  # zoo (lvis/README.md): 2.18B
        ("dino_4scale_cbinternimage_h_objects365_lvis_val_ss", 2180, 5),  # zoo: 2.18B
        ("dino_4scale_cbinternimage_h_objects365_openimages_ss", 2180, 5),  # CB-H as in the COCO zoo: 2.18B
        ("dino_4scale_cbinternimage_h_objects365_voc07", 2180, 5),
        ("dino_4scale_cbinternimage_h_objects365_voc12", 2180, 5),
        ("mask_rcnn_internimage_t_fpn_1x_coco_with_dcnv4", 49, 0.5),  # zoo: 49M (the DCNv3 config's)
        ("dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr", 241, 0.5),  # zoo: 241M
        ("cascade_internimage_xl_fpn_3x_crowd_human", 374.4, 0.5),  # zoo: TBD; ours
    ],
)
def test_full_size_presets_beyond_coco_match_the_zoo_counts(preset, millions, tol):
    from internimage.detection.presets import get_preset

    cfg = get_preset(preset)
    kwargs = dict(cfg.get("model_kwargs", {}))
    overrides = dict(layer_scale=cfg.get("layer_scale", 1.0), **kwargs.pop("backbone_overrides", {}))
    with torch.device("meta"):
        model = build_detector(cfg["arch"], cfg["model"], cfg["num_classes"], backbone_overrides=overrides, **kwargs)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < tol
