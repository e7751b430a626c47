"""Detection beyond COCO through the CLI: train a tiny detector a few steps on each layout, evaluate it with the
dataset's own metric, and get the same figures from ``eval`` as from the training loop (issue #24).

The layouts are the ones the dataset tests write (``tests/reference`` fixtures, the real file formats); the metrics
themselves are checked against their references in ``test_lvis.py``, ``test_crowdhuman.py``, ``test_voc.py`` and
``test_openimages.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from internimage.cli import main
from internimage.detection.presets import get_preset
from reference.fixtures_det import write_openimages, write_voc
from test_crowdhuman import ODGT, converted_json, write_images
from test_dino import TINY as DINO_TINY
from test_lvis import write_layout


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_and_eval(tmp_path: Path, capsys, dataset: str, arch: str, classes: int, kwargs: dict, sets: list[str]):
    run = tmp_path / "run"
    common = ["--task", "detection", "--data-root", str(tmp_path / "data"), "--dataset", dataset, "--device", "cpu"]
    # 128 px: DINO's stride-64 level keeps 2x2 maps (GroupNorm needs more than one value per group at batch 1).
    train_sets = [
        f"arch={arch}", "model=internimage_test_32", f"num_classes={classes}", "img_scale=[128,128]", "recipe=1x",
        f"model_kwargs={json.dumps(kwargs)}", "workers=0", "warmup_iters=1", "lr=1e-3", "log_every=1",
        "layer_scale=1.0",
    ]  # fmt: skip
    # Batch 1 in training too: the in-loop eval then pads exactly as `eval` does (DINO sees the padding).
    code = main(["train", *common, "--output", str(run), "--epochs", "1", "--batch-size", "1", *train_sets, *sets])
    assert code == 0
    result = json.loads((run / "result.json").read_text())
    capsys.readouterr()
    code = main(["eval", *common, "--checkpoint", str(run / "model.safetensors"), "--out", str(tmp_path / "ev"), *sets])
    assert code == 0
    metrics = json.loads((tmp_path / "ev" / "det_metrics.json").read_text())
    return result, metrics, capsys.readouterr().out


def test_lvis_train_and_eval_through_the_cli(tmp_path, capsys):
    from reference.lvis_fixture import build_lvis

    data, _ = build_lvis()
    root = tmp_path / "data"
    write_layout(root, data, "train")
    write_layout(root, data, "val")
    sets = [
        "train_ann=annotations/lvis_v1_train.json", "train_images=", "val_ann=annotations/lvis_v1_val.json",
        "val_images=",
    ]  # fmt: skip
    kwargs = dict(DINO_TINY, backbone_overrides=dict(layer_scale=1.0), max_per_img=300)
    result, metrics, out = _train_and_eval(tmp_path, capsys, "lvis", "dino", len(data["categories"]), kwargs, sets)
    keys = {"bbox_AP", "bbox_AP50", "bbox_APr", "bbox_APc", "bbox_APf"}
    assert keys <= set(result) and keys <= set(metrics)
    assert metrics["bbox_AP"] == pytest.approx(result["bbox_AP"], abs=1e-6)  # one evaluator in-loop and in eval
    assert "bbox_APr" in out


def test_crowdhuman_train_and_eval_through_the_cli(tmp_path, capsys):
    root = tmp_path / "data"
    write_images(root / "Images")
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.json").write_text(json.dumps(converted_json(ODGT)))
    (root / "annotations" / "val.odgt").write_text("".join(json.dumps(r) + "\n" for r in ODGT))
    sets = ["train_ann=annotations/train.json", "train_images=Images", "val_ann=annotations/val.odgt",
            "val_images=Images"]  # fmt: skip
    preset = get_preset("cascade_internimage_xl_fpn_3x_crowd_human")["model_kwargs"]
    kwargs = dict(preset, fpn_channels=32, head_fc_dim=64, rpn_post_nms_top_n_train=64, rpn_post_nms_top_n_test=64)
    kwargs["box_batch_size_per_image"] = 32
    result, metrics, out = _train_and_eval(tmp_path, capsys, "crowdhuman", "cascade_mask_rcnn", 1, kwargs, sets)
    assert {"AP", "mMR", "recall"} <= set(result) and metrics["AP"] == pytest.approx(result["AP"], abs=1e-6)
    assert 0.0 <= metrics["mMR"] <= 1.0 and "mMR" in out


def test_voc_train_and_eval_through_the_cli(tmp_path, capsys):
    devkit = tmp_path / "data"
    write_voc(devkit, 2007, seed=3, split="trainval")
    write_voc(devkit, 2012, seed=4, split="trainval")
    write_voc(devkit, 2007, seed=5, split="test")
    sets = [  # the voc07 preset's files: VOC07+12 trainval, VOC2007 test
        "train_ann=VOC2007/ImageSets/Main/trainval.txt,VOC2012/ImageSets/Main/trainval.txt",
        "train_images=VOC2007,VOC2012", "val_ann=VOC2007/ImageSets/Main/test.txt", "val_images=VOC2007",
        "classes=[cat,dog,person,car]",
    ]  # fmt: skip
    kwargs = dict(DINO_TINY, backbone_overrides=dict(layer_scale=1.0), max_per_img=300)
    result, metrics, out = _train_and_eval(tmp_path, capsys, "voc", "dino", 4, kwargs, sets)
    assert {"mAP", "AP50"} <= set(result) and metrics["mAP"] == pytest.approx(result["mAP"], abs=1e-6)
    assert "mAP" in out


def test_openimages_train_and_eval_through_the_cli(tmp_path, capsys):
    from reference.fixtures_det import OI_CLASSES

    info = write_openimages(tmp_path / "data", seed=7)
    rel = {k: str(Path(info[k]).relative_to(tmp_path / "data")) for k in ("ann_file", "label_file", "hierarchy_file")}
    rel["image_level_file"] = str(Path(info["image_level_file"]).relative_to(tmp_path / "data"))
    images = str(Path(info["img_prefix"]).relative_to(tmp_path / "data"))
    sets = [
        f"train_ann={rel['ann_file']}", f"train_images={images}", f"val_ann={rel['ann_file']}",
        f"val_images={images}", f"label_file={rel['label_file']}", f"hierarchy_file={rel['hierarchy_file']}",
        f"val_image_labels={rel['image_level_file']}",
    ]  # fmt: skip
    kwargs = dict(DINO_TINY, backbone_overrides=dict(layer_scale=1.0), max_per_img=300)
    result, metrics, out = _train_and_eval(tmp_path, capsys, "openimages", "dino", len(OI_CLASSES), kwargs, sets)
    assert {"mAP", "AP50"} <= set(result) and metrics["mAP"] == pytest.approx(result["mAP"], abs=1e-6)
