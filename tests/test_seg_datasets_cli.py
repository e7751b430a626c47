"""``internimage train|eval --task segmentation --dataset <layout>``: a tiny UperNet trains a few steps on fixtures in
the real layouts and evaluates them (single-scale and multi-scale + flip)."""

from __future__ import annotations

import json

import pytest

from reference.seg_fixtures import SPLITS, write_layout

TINY = ["model=internimage_test_32", "decode_channels=16", "aux_channels=8", "crop_size=[24,24]", "img_scale=[48,24]"]
TINY += ["warmup_iters=1", "eval_every=0", "workers=0", "log_every=1"]


@pytest.mark.parametrize("name", ["nyu", "mapillary"])
def test_cli_train_and_eval_on_a_layout(name, tmp_path, capsys):
    from internimage.cli import main

    write_layout(name, tmp_path / "data", n=2)
    run = tmp_path / "run"
    args = ["train", "--task", "segmentation", "--dataset", name, "--data-root", str(tmp_path / "data")]
    args += ["--output", str(run), "--iters", "2", "--batch-size", "2", "--device", "cpu", *TINY]
    assert main(args) == 0
    result = json.loads((run / "result.json").read_text())
    assert 0.0 <= result["mIoU"] <= 1.0
    weights = str(run / "model.safetensors")
    args = ["eval", "--task", "segmentation", "--checkpoint", weights, "--dataset", name]
    args += ["--data-root", str(tmp_path / "data"), "--device", "cpu"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "ss")]) == 0
    ss = json.loads((tmp_path / "ss" / "seg_metrics.json").read_text())
    assert main([*args, "--ms", "--flip", "--out", str(tmp_path / "ms")]) == 0
    ms = json.loads((tmp_path / "ms" / "seg_metrics.json").read_text())
    from internimage.segmentation.datasets import dataset_fields

    classes = dataset_fields(name)["classes"]
    assert list(ss["per_class"]) == classes == list(ms["per_class"])
    assert 0.0 <= ss["aAcc"] <= 1.0 and 0.0 <= ms["mIoU"] <= 1.0
    assert "images 2" in capsys.readouterr().out


def test_cli_dataset_flag_sets_classes_and_splits_and_names_the_problem(tmp_path, capsys):
    from internimage.cli import main

    write_layout("cocostuff10k", tmp_path, n=2)
    base = ["train", "--task", "segmentation", "--dataset", "cocostuff10k", "--data-root", str(tmp_path)]
    assert main([*base, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "num_classes: 171" in out and "train_split: train2014" in out and "reduce_zero_label: true" in out
    bad = next((tmp_path / "annotations" / "train2014").iterdir())
    from PIL import Image

    Image.new("RGB", (32, 24)).save(bad)
    args = [*base, "--output", str(tmp_path / "run"), "--iters", "1", "--batch-size", "2", "--device", "cpu", *TINY]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "mode RGB" in err
    assert SPLITS["cocostuff10k"] == ("train2014", "test2014")
