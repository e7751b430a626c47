"""Bad input through the CLI (issue #14): a clear one-line error and a non-zero exit, or the right answer.

Each case runs ``internimage.cli.main([...])`` in-process and checks: the exit code, exactly one error line on
stderr that names the problem, no traceback, and no partial output file. The silent failures (eval labelling
val folders by sorted order; predict/extract on an untrained model) are regression cases here too.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_fails
from internimage.cli import main
from internimage.models import create_model
from internimage.models.checkpoint import save_state_dict

MODEL = "internimage_test_32"
KWARGS = {"depths": [1, 1, 1, 1], "num_classes": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A cat/dog checkpoint whose head says "cat" for every image, a val folder of dogs, odd files."""
    root = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    model = create_model(MODEL, **KWARGS)
    sd = model.state_dict()
    sd["head.weight"] = torch.zeros_like(sd["head.weight"])
    sd["head.bias"] = torch.tensor([10.0, -10.0])  # class 0 ("cat") wins for any input
    meta = {
        "task": "classification",
        "model": MODEL,
        "model_kwargs": json.dumps(KWARGS),
        "classes": json.dumps(["cat", "dog"]),
        "img_size": "32",
        "mean": json.dumps([0.5] * 3),
        "std": json.dumps([0.5] * 3),
        "image_mode": "RGB",
    }
    save_state_dict(sd, root / "catdog.safetensors", meta)
    rng = np.random.default_rng(0)
    for folder, names in (("val/dog", ["0.png", "1.png", "2.png"]), ("mixed", ["ok.png"])):
        (root / folder).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / folder / name)
    (root / "mixed" / "broken.png").write_bytes(b"not a png")
    (root / "broken").mkdir()
    for name in ("a.png", "b.jpg"):
        (root / "broken" / name).write_bytes(b"not an image")
    (root / "wrong/bird").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "wrong/bird/0.png")
    (root / "one/only").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "one/only/0.png")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pickled code ran",))

    with open(root / "evil.pth", "wb") as f:
        pickle.dump({"model": Payload()}, f)
    (root / "bad.yaml").write_text("epochs: 3\nlr: [0.1\n")
    (root / "a_file").write_text("I am a file, not a folder")
    return root


def test_eval_maps_val_folders_to_the_checkpoint_classes(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The model says "cat" for every image; a folder of dogs used to score 100% (its only folder became class 0).
    ck = str(files / "catdog.safetensors")
    code = main(["eval", "--checkpoint", ck, "--val-data", str(files / "val"), "--json", "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["samples"] == 3 and metrics["top1"] == 0.0
    cli_fails(capsys, ["eval", "--checkpoint", ck, "--val-data", str(files / "wrong")], "bird", "cat, dog")


def test_untrained_models_run_only_when_asked(files: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    image = str(files / "val/dog/0.png")
    need = "pass --checkpoint FILE or --pretrained"
    cli_fails(capsys, ["predict", image, "--model", MODEL], need)
    cli_fails(capsys, ["extract", image, "--model", MODEL, "--output", str(tmp_path / "f")], need)
    assert not (tmp_path / "f").exists()
    assert main(["predict", image, "--model", MODEL, "--random-weights", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["image"] == image


def test_checkpoint_errors(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(files / "val/dog/0.png")
    cli_fails(capsys, ["predict", image, "--checkpoint", str(files)], "is a directory")
    cli_fails(capsys, ["predict", image, "--checkpoint", str(files / "corrupt.safetensors")], "cannot read checkpoint")
    line = cli_fails(capsys, ["predict", image, "--checkpoint", str(files / "evil.pth"), "--model", MODEL])
    assert "holds pickled Python objects (builtins.print)" in line and "weights_only" not in line
    assert "pickled code ran" not in capsys.readouterr().out


def test_counts_and_sizes(files: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ck = ["--checkpoint", str(files / "catdog.safetensors")]
    image = str(files / "val/dog/0.png")
    for topk in ("0", "-3"):
        cli_fails(capsys, ["predict", image, *ck, "--topk", topk], f"--topk must be >= 1, got {topk}")
    cli_fails(capsys, ["predict", image, *ck, "--img-size", "0"], "--img-size must be >= 1, got 0")
    cli_fails(capsys, ["extract", image, *ck, "--img-size", "0", "--output", str(tmp_path / "x")], "--img-size")
    cli_fails(capsys, ["export", MODEL, "--size", "0", "-o", str(tmp_path / "m.onnx")], "--size must be >= 1, got 0")
    assert not list(tmp_path.iterdir())
    # Nothing readable: an error, not an empty success.
    cli_fails(capsys, ["predict", str(files / "broken"), *ck], "none of the 2 images could be read")
    cli_fails(capsys, ["extract", str(files / "broken"), *ck, "--output", str(tmp_path / "x")], "none of the 2 images")
    assert not (tmp_path / "x").exists()
    # Some readable: extract says how many it skipped.
    assert main(["extract", str(files / "mixed"), *ck, "--output", str(tmp_path / "feats"), "--stages", "pooled"]) == 0
    out = capsys.readouterr().out
    assert "1 images" in out and "1 unreadable image(s) skipped" in out


def test_file_system_errors(files: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ck = ["--checkpoint", str(files / "catdog.safetensors")]
    # The output folder is an existing file: OSError, one line naming the path.
    line = cli_fails(capsys, ["extract", str(files / "val/dog"), *ck, "--output", str(files / "a_file")])
    assert line.endswith("--output " + str(files / "a_file") + " is a file, not a folder (or name a .safetensors file)")
    assert (files / "a_file").read_text() == "I am a file, not a folder"
    # convert --model checks the weights before writing anything.
    dst = tmp_path / "converted.safetensors"
    cli_fails(capsys, ["convert", str(files / "catdog.safetensors"), str(dst), "--model", "internimage_t_1k_224"])
    assert not dst.exists() and not list(tmp_path.iterdir())
    assert main(["convert", str(files / "catdog.safetensors"), str(dst), "--model", MODEL]) == 1  # depths differ
    capsys.readouterr()
    assert not dst.exists()


def test_config_errors(files: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = ["train", "--print-config"]
    cli_fails(capsys, [*cfg, "--config", str(files / "bad.yaml")], "bad.yaml is not valid YAML (line")
    cli_fails(capsys, [*cfg, "--set", "epochs=1.7"], "epochs must be an integer, got 1.7")
    cli_fails(capsys, [*cfg, "--set", "batch_size=true"], "batch_size must be an integer, got True")
    cli_fails(capsys, [*cfg, "--set", "img_size=0"], "img_size must be > 0, got 0")
    cli_fails(capsys, [*cfg, "--set", "drop_path_rate=1.5"], "drop_path_rate must be in [0, 1), got 1.5")
    cli_fails(capsys, [*cfg, "--set", "mean=[0.5,0.5]"], "mean has 2 values but std has 3")
    cli_fails(capsys, [*cfg, "--set", "weight_decay=-1"], "weight_decay must be >= 0")
    cli_fails(capsys, [*cfg, "--workers", "-1"], "workers must be >= 0, got -1")
    cli_fails(capsys, [*cfg, "--config", str(files)], "is a directory")
    # Training data with one class: refused before any model is built or file written.
    out = tmp_path / "run"
    argv = ["train", "--model", MODEL, "--train-data", str(files / "one"), "--output", str(out), "--device", "cpu"]
    cli_fails(capsys, argv, "has a single class (only)")
    assert not out.exists() or not list(out.iterdir())


def test_real_stderr_is_one_line(files: Path) -> None:
    # Through a real process: the logging setup of the CLI adds nothing to stderr for these errors.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cases = [
        (["train", "--print-config", "--set", "epochs=1.7"], "epochs must be an integer, got 1.7"),
        (["predict", str(files / "val/dog/0.png"), "--checkpoint", str(files / "corrupt.safetensors")], "cannot read"),
    ]
    for argv, needle in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "internimage.cli", *argv], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 1, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_resume_into_another_architecture_is_one_line(files: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    # A run of one architecture, then a resume of the same output folder with another: one line, nothing written.
    data = tmp_path / "data"
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / cls / f"{i}.png")
    out = tmp_path / "run"
    base = ["train", "--model", MODEL, "--train-data", str(data), "--output", str(out), "--device", "cpu"]
    common = ["img_size=32", "batch_size=2", "epochs=1", "eval_every=0", "workers=0", "ema=false"]
    assert main([*base, "--set", *common, "model_kwargs={depths: [1, 1, 1, 1]}"]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    argv = [*base, "--resume", "auto", "--set", *common, "epochs=2", "model_kwargs={depths: [1, 1, 2, 1]}"]
    cli_fails(capsys, argv, "was written for another architecture")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_extract_and_export_never_write_over_a_file(files: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    ck = ["--checkpoint", str(files / "catdog.safetensors")]
    argv = ["extract", str(files / "val/dog"), *ck, "--output", str(tmp_path / "f"), "--stages", "pooled"]
    assert main(argv) == 0
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").iterdir()}
    cli_fails(capsys, argv, "already exists", "pass --overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").iterdir()} == first
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    onnx = tmp_path / "mine.onnx"
    onnx.write_text("a file of the user's")
    cli_fails(capsys, ["export", MODEL, "-o", str(onnx), "--no-verify"], "mine.onnx already exists")
    assert onnx.read_text() == "a file of the user's"
