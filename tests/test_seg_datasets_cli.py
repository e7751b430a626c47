"""``internimage train|eval --task segmentation --dataset <layout>``: a tiny UperNet trains a few steps on fixtures in
the real layouts and evaluates them (single-scale and multi-scale + flip)."""

from __future__ import annotations

import json

import pytest

from reference.seg_fixtures import SPLITS, write_layout

TINY = ["model=internimage_test_32", "decode_channels=16", "aux_channels=8", "crop_size=[24,24]", "img_scale=[48,24]"]
TINY += ["warmup_iters=1", "eval_every=0", "workers=0", "log_every=1"]


@pytest.mark.parametrize("name", list(SPLITS))
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
    ms = ss
    if name in ("nyu", "mapillary"):  # the multi-scale + flip path once per reader kind is enough
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


def _train_extra(root, n: int = 2) -> None:
    """Cityscapes ``train_extra`` images with refined coarse labels in ``refinement_final`` (cityscapes_extra.py)."""
    import numpy as np
    from PIL import Image

    for i in range(n):
        stem = f"bad-honnef_{i:06d}_000000"
        label = np.full((24, 32), 0, np.uint8)
        label[4:14, 6:20] = 13
        lab = label.astype(np.int64)
        img = np.stack([(lab * 37) % 256, (lab * 91 + 60) % 256, (lab * 53 + 120) % 256], -1).astype(np.uint8)
        for path, arr in (
            (f"leftImg8bit/train_extra/bad-honnef/{stem}_leftImg8bit.png", img),
            (f"refinement_final/train_extra/bad-honnef/{stem}_gtFine_labelTrainIds.png", label),
        ):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / path)


STREET_TINY = [o for o in TINY if not o.startswith(("crop_size", "img_scale"))]
STREET_TINY += ["crop_size=[24,24]", "img_scale=[48,24]", "test_crop=[24,24]", "test_stride=[16,16]", "layer_decay=1.0"]


def test_cityscapes_preset_keeps_150_outputs_trains_on_train_extra_and_scores_19_classes(tmp_path, capsys):
    """The official street UperNet: 150 outputs, fine + refined coarse labels, mIoU over the 19 classes."""
    from internimage.cli import main

    data = tmp_path / "cityscapes"
    write_layout("cityscapes", data, n=2)
    _train_extra(data)
    run = tmp_path / "run"
    args = ["train", "--task", "segmentation", "--preset", "upernet_internimage_l_512x1024_160k_mapillary2cityscapes"]
    args += ["--dataset", "cityscapes", "--data-root", str(data), "--output", str(run), "--iters", "2"]
    args += ["--batch-size", "2", "--device", "cpu", *STREET_TINY]
    assert main([*args, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "num_classes: 150" in out and "train_split: train+train_extra" in out and "- motorcycle" in out
    assert main(args) == 0
    from internimage.engine.config import apply_overrides
    from internimage.segmentation import SegmentationConfig, build_dataset

    cfg = SegmentationConfig.from_checkpoint(str(run / "model.safetensors"))
    assert cfg.num_classes == 150 and len(cfg.classes) == 19
    joined = build_dataset(apply_overrides(cfg, {"data_root": str(data)}), "train+train_extra", train=False)
    assert len(joined) == 4 and any("refinement_final" in str(label) for _, label in joined.samples)
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--task",
                "segmentation",
                "--checkpoint",
                str(run / "model.safetensors"),
                "--data-root",
                str(data),
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "ev" / "seg_metrics.json").read_text())
    assert len(result["per_class"]) == 19 and list(result["per_class"])[-1] == "bicycle"


def test_mapillary_preset_evaluates_on_cityscapes_val(tmp_path, capsys):
    """Mapillary (merged into the 19 classes) trains, Cityscapes ``val`` evaluates: the official configs' pairing."""
    from internimage.cli import main

    write_layout("mapillary", tmp_path / "vistas", n=2)
    write_layout("cityscapes", tmp_path / "cityscapes", n=2)
    run = tmp_path / "run"
    args = ["train", "--task", "segmentation", "--preset", "segformer_internimage_l_512x1024_80k_mapillary"]
    args += ["--data-root", str(tmp_path / "vistas"), "--output", str(run), "--iters", "2", "--batch-size", "2"]
    args += ["--device", "cpu", *STREET_TINY, "--set", "eval_every=2"]
    assert main(args) == 1
    assert "--val-data-root" in capsys.readouterr().err
    assert main([*args, "--val-data-root", str(tmp_path / "cityscapes")]) == 0
    result = json.loads((run / "result.json").read_text())
    assert 0.0 <= result["mIoU"] <= 1.0
