"""``internimage demo`` end to end on a small synthetic Fashion-MNIST-format set (the real one needs apt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_idx
from internimage.classification import load_classifier
from internimage.classification.demo import TensorImages, augment, demo_config, fit_to_budget
from internimage.cli import main
from internimage.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from internimage.data import fashion_mnist as fm


def _fake_fashion_mnist(root: Path, n: int = 96) -> Path:
    """Class k is a bright bar at a class-specific place: learnable in a few steps."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, k in enumerate(labels):
        r, c = 2 + (k // 5) * 12, 2 + (k % 5) * 5
        images[i, r : r + 10, c : c + 4] = 255
    root.mkdir(parents=True)
    for img_name, lbl_name in fm._FILES.values():
        write_idx(root / f"{img_name}.gz", images)
        write_idx(root / f"{lbl_name}.gz", labels)
    return root


@pytest.mark.parametrize("img_size", [32, 28])
def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture, img_size: int) -> None:
    data = _fake_fashion_mnist(tmp_path / "fmnist")
    out = tmp_path / "demo"
    argv = ["demo", "--data", str(data), "--output", str(out), "--epochs", "3", "--threads", "1"]
    # lr 1e-3 for batches of 16 (the recipe's 2e-3 is for 128: 18 steps of it leave the bars at chance level)
    overrides = ["batch_size=16", "lr=1e-3", "log_every=2", "warmup_epochs=0.5", "eval_every=2", f"img_size={img_size}"]
    budget = ["--minutes", "60"] if img_size == 28 else []  # a budget that the 18 steps fit: the recipe stays
    aug = ["--augment"] if img_size == 28 else []
    assert main([*argv, *budget, *aug, "--set", *overrides]) == 0
    text = capsys.readouterr().out
    assert "test accuracy: top-1" in text and ("budget 60 min: 18 training steps" in text) == bool(budget)
    summary = json.loads((out / "demo.json").read_text())
    assert summary["epochs"] == 3 and summary["steps"] == 18 and summary["img_size"] == img_size
    assert summary["wall_time_s"] > 0 and summary["cpu_time_s"] > 0
    for name in ("curves.png", "predictions.png", "model.safetensors", "metrics.csv", "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["split"] == "val"] == [2, 3]  # every 2 epochs and at the end
    # The demo's weights are a normal checkpoint: load_classifier (behind `internimage predict`) reads the
    # architecture, input size and class names from it, and its predictions reproduce the demo's evaluation.
    model, info = load_classifier(str(out / "model.safetensors"))
    assert info["classes"] == list(FASHION_MNIST_CLASSES) and info["img_size"] == img_size
    assert info["image_mode"] == "L" and model.num_classes == 10
    xt, yt = load_fashion_mnist(data, "test")
    test = TensorImages(xt, yt, img_size)
    with torch.no_grad():
        pred = model(test.images).argmax(1)
    top1 = 100.0 * float((pred == test.labels).float().mean())
    assert top1 == pytest.approx(summary["test_top1"], abs=0.01)
    assert top1 > 30  # 18 steps learn the bars well beyond chance (10%)
    drawn = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:16]  # the grid's fixed draw
    assert summary["grid_correct"] == f"{int((pred[drawn] == test.labels[drawn]).sum())}/16"


def test_demo_without_data_says_how_to_install(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install dataset-fashion-mnist" in err[0]


def test_augment_flips_and_shifts_within_bounds() -> None:
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 10:20, 4:8] = 1.0  # an off-centre bar
    y = augment(x, max_shift=2)
    assert y.shape == x.shape
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # the bar moved, nothing clipped
    cols = y[:, 0].sum(1).argmax(1)  # left-most column of the bar
    assert (cols <= 6).any() and (cols >= 22).any()  # some flipped, some not
    assert len(set(torch.nonzero(y[:, 0].sum(2))[:, 1].tolist())) > 10  # rows shifted by different amounts


def test_images_are_padded_black_and_sizes_checked() -> None:
    images = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    x = TensorImages(images, torch.tensor([0, 1]), 32).images
    assert x.shape == (2, 1, 32, 32)
    assert torch.allclose(x[:, :, :2], torch.tensor(-0.2860 / 0.3530))  # padding is black after normalising
    assert torch.allclose(x[:, :, 2:30, 2:30], torch.tensor((1 - 0.2860) / 0.3530))
    with pytest.raises(ValueError, match="28 \\+ an even number"):
        TensorImages(images, torch.tensor([0, 1]), 31)
    with pytest.raises(ValueError, match="expected \\(N, 28, 28\\)"):
        TensorImages(images[:, :20], torch.tensor([0, 1]))


def test_budget_shortens_the_schedule_never_lengthens_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import internimage.classification.demo as demo

    cfg = demo_config(str(tmp_path))  # 3 epochs of 60000 // 128 = 468 steps: 1404 steps
    monkeypatch.setattr(demo, "_time_steps", lambda cfg, task: (0.1, 0.05))  # s per step, s per eval batch
    eval_s = 0.05 * 79  # 10000 test images in batches of 128
    assert fit_to_budget(cfg, None, 60.0, 60_000) == 1404 and cfg.iters == 0  # 35960 would fit
    assert fit_to_budget(cfg, None, 2.0, 60_000) == int((120 - eval_s) / 0.1) == cfg.iters == 1160
    assert cfg.eval_every == 0
    with pytest.raises(ValueError, match="minutes must be > 0"):
        fit_to_budget(cfg, None, 0, 60_000)
    with pytest.raises(ValueError, match="leaves no time"):
        fit_to_budget(demo_config(str(tmp_path)), None, 0.05, 60_000)
