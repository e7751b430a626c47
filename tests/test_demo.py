"""``internimage demo`` end to end on a small synthetic Fashion-MNIST-format set (the real one needs apt)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from internimage.cli import main
from internimage.data import fashion_mnist as fm
from internimage.tasks.demo import augment

sys.path.insert(0, str(Path(__file__).parent))
from test_data import _write_idx  # noqa: E402


def _fake_fashion_mnist(root: Path, n: int = 96) -> Path:
    """Class k is a bright square at a class-specific place: learnable in a few steps."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, k in enumerate(labels):
        r, c = 2 + (k // 5) * 12, 2 + (k % 5) * 5
        images[i, r : r + 10, c : c + 4] = 255
    root.mkdir(parents=True)
    for img_name, lbl_name in fm._FILES.values():
        _write_idx(root / f"{img_name}.gz", images)
        _write_idx(root / f"{lbl_name}.gz", labels)
    return root


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _fake_fashion_mnist(tmp_path / "fmnist")
    out = tmp_path / "demo"
    argv = ["demo", "--data", str(data), "--output", str(out), "--epochs", "2", "--threads", "1"]
    assert main([*argv, "--set", "batch_size=16", "log_every=2", "warmup_epochs=0.5"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy: top-1" in text
    summary = json.loads((out / "demo.json").read_text())
    assert summary["epochs"] == 2 and summary["grid_correct"].endswith("/16")
    assert 0 <= summary["test_top1"] <= 100 and summary["wall_time_s"] > 0
    for name in ("curves.png", "predictions.png", "model.safetensors", "metrics.csv", "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    # The demo's weights are a normal checkpoint: predict reads architecture and class names from it.
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["split"] == "val"] == [2]  # the demo evaluates every 2 epochs and at the end


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
