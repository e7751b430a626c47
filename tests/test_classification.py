"""Classification: CLI train/eval/predict/extract/plot on a tiny folder with broken images, presets, metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import internimage
from conftest import make_folder
from internimage.classification import (
    ClassificationConfig,
    imagenet_22k_to_1k_indices,
    list_presets,
    load_preset,
    topk_correct,
)
from internimage.cli import main
from internimage.engine import load_config, read_metrics, save_config

TRAIN_SET = [
    "model=internimage_test_32",
    "img_size=32",
    "epochs=2",
    "batch_size=4",
    "workers=0",
    "warmup_epochs=0.5",
    "log_every=1",
    "auto_augment=rand-m9-mstd0.5-inc1",
    "reprob=0.25",
    "mixup=0.8",
    "cutmix=1.0",
    "ema=true",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-epoch run of the T preset (shrunk model) on a folder with 3 unreadable images."""
    tmp = tmp_path_factory.mktemp("cls")
    data = make_folder(tmp / "data", corrupt=2)
    run = tmp / "run"
    argv = ["train", "--preset", "internimage_t_1k_224", "--train-data", str(data), "--val-data", str(data)]
    assert main([*argv, "--output", str(run), "--set", *TRAIN_SET]) == 0
    return data, run


def test_train_writes_run_and_counts_skipped_images(trained: tuple[Path, Path]) -> None:
    data, run = trained
    for name in ("config.yaml", "metrics.csv", "metrics.jsonl", "model.safetensors", "model_ema.safetensors"):
        assert (run / name).is_file(), name
    cfg = load_config(ClassificationConfig, run / "config.yaml")  # the effective config, reloadable
    assert cfg.model == "internimage_test_32" and cfg.epochs == 2 and cfg.label_smoothing == 0.1
    # The one metadata format of every task: "task" and the model fields as JSON under "<task>_config".
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    fields = json.loads(meta["classification_config"])
    assert meta["task"] == "classification" and fields["model"] == "internimage_test_32"
    assert fields["classes"] == ["class0", "class1", "class2"] and fields["img_size"] == cfg.img_size
    rows = read_metrics(run)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert len(train) == 6 and all(np.isfinite(r["loss"]) for r in train)
    assert train[-1]["skipped"] >= 1  # broken images met during training were dropped and counted
    assert val[-1]["samples"] == 12 and val[-1]["skipped"] == 3 and "ema_top1" in val[-1]
    result = json.loads((run / "result.json").read_text())
    assert result["step"] == 6 and 0 <= result["top1"] <= 100


def test_eval_predict_extract_plot(trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, run = trained
    assert main(["eval", "--checkpoint", str(run / "model.safetensors"), "--val-data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["samples"] == 12 and metrics["skipped"] == 3
    val = [r for r in read_metrics(run) if r["split"] == "val"][-1]
    assert metrics["top1"] == pytest.approx(val["top1"])  # same weights, same metric as the training run's eval

    # predict from our safetensors (architecture + class names from its metadata)
    assert main(["predict", str(data / "class2"), "--checkpoint", str(run / "model.safetensors"), "--json"]) == 0
    preds = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(preds) == 4 and len(preds[0]["top"]) == 3
    assert {t["label"] for t in preds[0]["top"]} == {"class0", "class1", "class2"}
    assert sum(t["score"] for t in preds[0]["top"]) == pytest.approx(1.0, abs=1e-4)

    # predict from the training checkpoint (.pth, EMA) and from an official-layout .pth given --model
    ckpt = sorted((run / "checkpoints").glob("epoch_*.pth"))[-1]
    assert main(["predict", str(data / "class0" / "0.png"), "--checkpoint", str(ckpt), "--use-ema"]) == 0
    assert "class" in capsys.readouterr().out
    official = tmp_path / "official.pth"
    model = internimage.create_model("internimage_test_32", num_classes=3)
    torch.save({"model": model.state_dict()}, official)
    argv = ["predict", str(data / "class0"), "--checkpoint", str(official), "--model", "internimage_test_32"]
    assert main([*argv, "--img-size", "32", "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert "unreadable image(s) skipped" in out and len(out.strip().splitlines()) == 5

    # extract features of chosen stages
    feats = tmp_path / "feats"
    argv = ["extract", str(data / "class1"), "--checkpoint", str(run / "model.safetensors")]
    assert main([*argv, "--stages", "0,3,pooled", "--output", str(feats)]) == 0
    assert np.load(feats / "0_stage0.npy").shape == (16, 8, 8)
    assert np.load(feats / "0_stage3.npy").shape == (128, 1, 1)
    assert np.load(feats / "0_pooled.npy").shape == (192,)
    assert main([*argv, "--stages", "1", "--output", str(tmp_path / "f.safetensors")]) == 0
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "f.safetensors")
    assert len(tensors) == 4 and next(iter(tensors.values())).shape == (32, 4, 4)
    assert main([*argv, "--stages", "7", "--output", str(feats)]) == 1

    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").stat().st_size > 1000


def test_resume_continues_a_finished_run_without_retraining(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    argv = ["train", "--config", str(run / "config.yaml"), "--resume", "auto", "--set", "epochs=3"]
    assert main(argv) == 0
    rows = [r for r in read_metrics(run) if r["split"] == "train"]
    assert rows[-1]["step"] == 9 and rows[-1]["epoch"] == 2


def test_presets_reproduce_official_recipes_and_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = list_presets()
    expected = {"internimage_t_1k_224", "internimage_s_1k_224", "internimage_b_1k_224", "internimage_g_22kto1k_512"}
    assert expected <= set(names) and len(names) == 9
    for name in names:
        cfg = load_preset(name)
        # Fine-tuning presets name their task; the model is the checkpoint they start from.
        start = {"internimage_h_22ktoinat18_384": "internimage_h_jointto22k_384"}.get(name, name)
        assert cfg.model == start and cfg.model in internimage.list_models()
        save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config(ClassificationConfig, tmp_path / f"{name}.yaml") == cfg
    t = load_preset("internimage_t_1k_224")
    assert (t.epochs, t.warmup_epochs, t.lr, t.lr_base_batch, t.min_lr, t.warmup_lr) == (300, 20, 5e-4, 512, 5e-6, 5e-7)
    assert (t.weight_decay, t.clip_grad, t.label_smoothing, t.mixup, t.cutmix, t.reprob) == (
        0.05,
        5.0,
        0.1,
        0.8,
        1.0,
        0.25,
    )
    assert t.auto_augment == "rand-m9-mstd0.5-inc1" and t.ema_decay == 0.9999 and t.drop_path_rate == 0.1
    assert load_preset("internimage_b_1k_224").drop_path_rate == 0.5
    g = load_preset("internimage_g_22kto1k_512")
    assert (g.epochs, g.warmup_epochs, g.lr, g.label_smoothing, g.layer_decay, g.offset_lr_mul) == (
        20,
        2,
        2e-5,
        0.3,
        0.9,
        0.1,
    )
    assert g.mixup == g.cutmix == g.reprob == 0 and g.grad_checkpointing and g.ema and g.img_size == 512
    # CLI overrides on top of a preset
    argv = ["train", "--preset", "internimage_s_1k_224", "--lr", "1e-3", "--set", "epochs=5", "amp=bf16"]
    assert main([*argv, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lr"] == 1e-3 and printed["epochs"] == 5 and printed["amp"] == "bf16"
    assert printed["drop_path_rate"] == 0.4 and printed["model"] == "internimage_s_1k_224"
    assert main(["train", "--preset", "internimage_x_1k_224", "--print-config"]) == 1
    assert main(["train", "--preset", "internimage_t_1k_224", "--set", "lr=abc", "--print-config"]) == 1


def test_topk_and_22k_to_1k_mapping() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 1, 0]), ks=(1, 2)) == [1, 2]
    assert topk_correct(logits, torch.tensor([2, 2, 2]), ks=(1, 5)) == [1, 3]  # k capped at 3 classes
    from timm.data import ImageNetInfo

    index = imagenet_22k_to_1k_indices()
    synsets22k, synsets1k = ImageNetInfo("imagenet-22k").label_names(), ImageNetInfo("imagenet-1k").label_names()
    assert index.shape == (1000,) and (index >= 0).sum() == 999
    for k in (0, 1, 500, 999):
        if index[k] >= 0:
            assert synsets22k[int(index[k])] == synsets1k[k]


def test_torchrun_training_with_unreadable_images_does_not_hang(tmp_path: Path) -> None:
    """Ranks whose batch lost images (even down to one) must still join DDP's all-reduce."""
    import os
    import subprocess

    data = make_folder(tmp_path / "data", corrupt=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "internimage.cli"]
    cmd += ["train", "--preset", "internimage_t_1k_224", "--train-data", str(data), "--val-data", str(data)]
    cmd += ["--output", str(tmp_path / "run"), "--workers", "0", "--set", *TRAIN_SET, "batch_size=2", "ema=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == 8 and result["samples"] == 12 and result["skipped"] == 3  # 15 files, 8 per rank
    train = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert train[-1]["skipped"] >= 1


def test_set_accumulates_across_occurrences_for_every_task(capsys: pytest.CaptureFixture) -> None:
    """Issue #14: ``--set a=1 --set b=2`` used to keep only the last occurrence."""
    argv = ["train", "--preset", "internimage_t_1k_224", "--set", "lr=1e-3", "--set", "epochs=5", "amp=bf16"]
    assert main([*argv, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["lr"], printed["epochs"], printed["amp"]) == (1e-3, 5, "bf16")
    for task, preset in (("detection", "mask_rcnn_internimage_t_fpn_1x_coco"), ("segmentation", "")):
        argv = ["train", "--task", task, *(["--preset", preset] if preset else [])]
        assert main([*argv, "--set", "lr=2e-4", "--set", "warmup_iters=7", "--print-config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert (printed["lr"], printed["warmup_iters"]) == (2e-4, 7), task
    # A preset names its task: no --task needed.
    assert main(["train", "--preset", "upernet_internimage_s_512_160k_ade20k", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["head"] == "upernet" and printed["model"] == "internimage_s_1k_224"


def test_extract_mirrors_relative_paths_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue #14: ``a/x.jpg`` and ``b/x.jpg`` used to write the same ``x_*.npy`` (the second silently won)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for rel in ("a/x.jpg", "b/x.jpg", "x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / rel)
    ckpt = tmp_path / "official.pth"
    torch.save({"model": internimage.create_model("internimage_test_32", num_classes=3).state_dict()}, ckpt)
    out = tmp_path / "feats"
    inputs = [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "x.png")]
    argv = ["extract", *inputs, "--checkpoint", str(ckpt), "--model", "internimage_test_32", "--img-size", "32"]
    assert main([*argv, "--stages", "pooled", "--output", str(out)]) == 0
    assert "3 images, 3 .npy files" in capsys.readouterr().out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert written == ["a/x_pooled.npy", "b/x_pooled.npy", "x_pooled.npy"]
    vectors = [np.load(out / w) for w in written]
    assert not np.allclose(vectors[0], vectors[1])  # two different images, two different files
    # Same folder, same stem, different suffix: the suffix stays in the names.
    from internimage.commands._common import output_stems

    assert output_stems([tmp_path / "d" / "x.jpg", tmp_path / "d" / "x.png"]) == [Path("x_jpg"), Path("x_png")]
    with pytest.raises(ValueError, match="given twice"):
        output_stems([tmp_path / "x.png", tmp_path / "x.png"])


def test_load_weights_is_one_entry_point_for_every_model_kind(tmp_path: Path) -> None:
    from internimage.models import load_weights
    from internimage.models.checkpoint import save_state_dict
    from internimage.segmentation import SegmentationConfig, build_segmentor

    torch.manual_seed(0)
    src = internimage.create_model("internimage_test_32", num_classes=3)
    save_state_dict(src.state_dict(), tmp_path / "cls.safetensors")
    dst = internimage.create_model("internimage_test_32", num_classes=3)
    load_weights(dst, tmp_path / "cls.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    cfg = SegmentationConfig(model="internimage_test_32", num_classes=4, decode_channels=16, aux_channels=8)
    seg = build_segmentor(cfg)
    save_state_dict(seg.state_dict(), tmp_path / "seg.safetensors")
    other = build_segmentor(cfg)
    assert load_weights(other, tmp_path / "seg.safetensors").format
    assert all(torch.equal(a, b) for a, b in zip(seg.state_dict().values(), other.state_dict().values()))
    load_weights(other.backbone, tmp_path / "cls.safetensors", strict=False)  # a backbone is an InternImage
    with pytest.raises(ValueError, match="not an InternImage, a segmentor or a detector"):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "cls.safetensors")
