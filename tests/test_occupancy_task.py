"""Occupancy as a task: the CLI on generated nuScenes / Occ3D scenes (train, eval, predict), weights, the layer-decay
rule of the original's constructor, the bird's-eye-view drawing and the preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from internimage.occupancy import OccupancyConfig, bev_image, generate_scenes
from internimage.occupancy.models import TINY_CONFIG

TINY = {k: v for k, v in TINY_CONFIG.items() if k not in ("backbone", "backbone_overrides")}
SCENES = ["scene-0001", "scene-0002", "scene-0003"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuscenes")
    generate_scenes(root, num_scenes=3, frames_per_scene=3, image_size=(96, 54), occ_size=(50, 50, 8), seed=0)
    return root


def _tiny_args(root) -> list[str]:
    sets = [f"model_kwargs={json.dumps(TINY)}", "backbone_overrides={}", "version=v1.0-synthetic", "queue_length=2"]
    sets += [f"train_scenes={SCENES[0]},{SCENES[1]}", f"val_scenes={SCENES[2]}", "workers=0", "warmup_iters=1"]
    sets += ["log_every=1"]
    return ["--model", "internimage_test_32", "--data-root", str(root), "--device", "cpu", "--set", *sets]


def test_cli_train_eval_predict_on_generated_scenes(scenes, tmp_path, capsys):
    from PIL import Image

    from internimage.cli import main

    run = tmp_path / "run"
    args = ["train", "--preset", "bevformer_intern-s_occ", *_tiny_args(scenes), "--output", str(run), "--epochs", "1"]
    assert main(args) == 0
    result = json.loads((run / "result.json").read_text())
    assert 0.0 <= result["mIoU"] <= 100.0
    ckpt = str(run / "model.safetensors")
    capsys.readouterr()
    base = ["--task", "occupancy", "--checkpoint", ckpt, "--data-root", str(scenes), "--device", "cpu"]
    base += ["--scenes", SCENES[2], "--set", "version=v1.0-synthetic"]
    assert main(["eval", *base, "--output", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "occ_metrics.json").read_text())
    assert metrics["count"] == 3 and "===> mIoU of 3 samples" in out
    # The in-training evaluation of the same weights and frames gives the same figure.
    assert metrics["mIoU"] == pytest.approx(result["mIoU"], abs=1e-6)
    assert main(["predict", *base, "--output", str(tmp_path / "pred")]) == 0
    pngs = sorted((tmp_path / "pred").glob("*_bev.png"))
    npzs = sorted((tmp_path / "pred").glob("*_occ.npz"))
    assert len(pngs) == len(npzs) == 3
    with np.load(npzs[0]) as z:
        assert z["semantics"].shape == z["gt_semantics"].shape == (50, 50, 8) and z["mask_camera"].dtype == bool
    img = Image.open(pngs[0])
    assert img.width > 2 * 50 and img.height > 50  # prediction and ground truth side by side, plus a legend
    assert main(["predict", *base, "--output", str(tmp_path / "pred")]) == 1  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_cli_names_a_missing_dataset_and_the_preset_is_the_official_recipe(tmp_path, capsys):
    from internimage.cli import main

    assert main(["train", "--preset", "bevformer_intern-s_occ", "--print-config"]) == 0
    out = capsys.readouterr().out
    for line in (
        "model: internimage_s_1k_224",
        "lr: 0.0002",
        "queue_length: 4",
        "clip_grad: 35.0",
        "epochs: 24",
        "layer_decay_rule: occupancy",
        "warmup_iters: 500",
        "post_norm: true",
        "drop_path_rate: 0.3",
    ):
        assert line in out, line
    args = ["train", "--task", "occupancy", "--data-root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")]
    assert main([*args, "--device", "cpu"]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_official_checkpoint_file_loads_strictly_and_refuses_a_detector(tmp_path):
    from internimage.occupancy import build_occupancy_model, load_occupancy_weights

    cfg = OccupancyConfig(model="internimage_test_32", backbone_overrides={}, model_kwargs=TINY)
    model = build_occupancy_model(cfg)
    # An mmdet3d checkpoint: {'meta': ..., 'state_dict': {...}} with the official names (ours are the same).
    torch.save({"meta": {"epoch": 24}, "state_dict": model.state_dict()}, tmp_path / "epoch_24.pth")
    fresh = build_occupancy_model(cfg)
    assert load_occupancy_weights(fresh, tmp_path / "epoch_24.pth") == []
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    detector = {"state_dict": {"backbone.patch_embed.conv1.weight": torch.zeros(8, 3, 3, 3)}}
    torch.save(detector, tmp_path / "det.pth")
    with pytest.raises(ValueError, match="no occupancy model"):
        load_occupancy_weights(fresh, tmp_path / "det.pth")
    # Building from it as `pretrained` takes the whole model.
    cfg2 = OccupancyConfig(model="internimage_test_32", backbone_overrides={}, model_kwargs=TINY,
                           pretrained=str(tmp_path / "epoch_24.pth"))  # fmt: skip
    again = build_occupancy_model(cfg2)
    assert torch.equal(again.pts_bbox_head.bev_embedding.weight, model.pts_bbox_head.bev_embedding.weight)


def test_layer_ids_follow_the_original_constructor():
    """``get_num_layer_for_swin`` of the original's occupancy constructor (num_layers = 33 + 2 for depths 4/4/21/4),
    ids worked out by hand for InternImage-S."""
    from internimage.occupancy.models import build_bevformer_occ

    with torch.device("meta"):
        model = build_bevformer_occ()
    layer_id, num = model.layer_id_fn()
    assert num == 35
    cases = {
        "img_backbone.patch_embed.conv1.weight": 0,
        "img_backbone.levels.0.blocks.0.dcn.offset.weight": 1,
        "img_backbone.levels.1.blocks.2.mlp.fc1.weight": 1 + 4 + 2,
        "img_backbone.levels.2.blocks.20.norm1.0.weight": 1 + 8 + 20,
        "img_backbone.levels.3.blocks.3.mlp.fc2.bias": 1 + 29 + 3,
        "img_backbone.levels.0.downsample.conv.weight": 1 + 4,
        "img_backbone.levels.2.downsample.norm.0.weight": 1 + 29,
        "pts_bbox_head.transformer.level_embeds": 0,
        "pts_bbox_head.transformer.encoder.layers.0.attentions.0.sampling_offsets.weight": 34,
        "img_neck.fpn_convs.0.conv.weight": 34,
    }
    for name, want in cases.items():
        assert layer_id(name) == want, name
    assert model.offset_lr_keys == ("sampling_offsets", "reference_points")


def test_bev_image_draws_the_top_voxel_of_each_column_forward_up():
    from internimage.occupancy import FREE_LABEL, OCC_PALETTE

    occ = np.full((4, 5, 3), FREE_LABEL, np.uint8)
    occ[3, 4, 0] = 11  # driveable surface, front-left corner cell (x max, y max), on the ground
    occ[3, 4, 2] = 4  # a car above it: the top voxel wins
    occ[0, 0, 1] = 16  # vegetation, back-right corner cell
    img = bev_image(occ)
    assert img.shape == (4, 5, 3)
    assert tuple(img[0, 0]) == OCC_PALETTE[4]  # forward is up, left is left
    assert tuple(img[3, 4]) == OCC_PALETTE[16]
    assert tuple(img[1, 1]) == (255, 255, 255)
    mask = np.zeros_like(occ, dtype=bool)
    mask[3, 4, 0] = True  # only the ground voxel is seen: it is drawn, the car is not
    masked = bev_image(occ, mask)
    assert tuple(masked[0, 0]) == OCC_PALETTE[11] and tuple(masked[3, 4]) == (40, 40, 40)


def test_backbone_starts_from_a_mask_rcnn_checkpoint_as_the_config_does(tmp_path):
    """``pretrained`` = an mmdet detector file (``state_dict`` with ``backbone.*``, neck and heads): the InternImage
    body takes its backbone part; the rest of the model keeps its initialisation."""
    from internimage.models import create_model
    from internimage.occupancy import build_occupancy_model

    body = create_model("internimage_test_32", num_classes=0)
    sd = {f"backbone.{k}": v for k, v in body.state_dict().items()}
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(8, 16, 1, 1)
    sd["rpn_head.rpn_conv.weight"] = torch.zeros(8, 8, 3, 3)
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "mask_rcnn_internimage_test_fpn_3x_coco.pth")
    cfg = OccupancyConfig(model="internimage_test_32", backbone_overrides={}, model_kwargs=TINY,
                          pretrained=str(tmp_path / "mask_rcnn_internimage_test_fpn_3x_coco.pth"))  # fmt: skip
    model = build_occupancy_model(cfg)
    got = model.img_backbone.state_dict()
    for k, v in got.items():
        assert torch.equal(v, body.state_dict()[k]), k


def test_evaluation_runs_through_forward_so_wrapper_hooks_run(scenes):
    """FSDP2 gathers the root's parameters in a forward pre-hook: evaluation must call the model, not ``predict``."""
    from torch.utils.data import DataLoader

    from internimage.occupancy import build_dataset, build_occupancy_model, collate_occupancy, evaluate_occupancy

    cfg = OccupancyConfig(model="internimage_test_32", backbone_overrides={}, model_kwargs=TINY, data_root=str(scenes),
                          version="v1.0-synthetic", val_scenes=SCENES[2])  # fmt: skip
    model = build_occupancy_model(cfg).eval()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    loader = DataLoader(build_dataset(cfg, train=False), batch_size=2, collate_fn=collate_occupancy)
    result = evaluate_occupancy(model, loader)
    assert len(calls) == result["count"] == 3
    with pytest.raises(ValueError, match="mode must be"):
        model(mode="export")


def test_training_images_may_have_their_own_scale(scenes):
    """``train_image_scale`` (bevformer_small_occ: 0.2 in training, 0.8 in evaluation) resizes only training images."""
    from internimage.occupancy import build_dataset

    cfg = OccupancyConfig(model="internimage_test_32", backbone_overrides={}, model_kwargs=TINY, data_root=str(scenes),
                          version="v1.0-synthetic", train_scenes=SCENES[0], val_scenes=SCENES[2], image_scale=1.0,
                          train_image_scale=0.5, queue_length=1)  # fmt: skip
    train, val = build_dataset(cfg, train=True), build_dataset(cfg, train=False)
    assert tuple(train[0]["img_shape"].tolist()) == (27, 48) and tuple(val[0]["img_shape"].tolist()) == (54, 96)
