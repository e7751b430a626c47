"""Section 4 of the GPU check: end-to-end training runs through the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .correctness import pf
from .report import REPO, Report, logger, write_text


# ----------------------------------------------------------------------------------------------- section 4
def make_image_folder(root: Path, per_class: int, size: int = 48, seed: int = 0) -> int:
    """Two classes of random PNGs whose dominant colour is the class (learnable in a few steps)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(2):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(folder / f"{i}.png")
    return 2 * per_class


def cli_command() -> list[str]:
    """The installed ``internimage`` console script, else the module (the checkout may not be installed)."""
    exe = shutil.which("internimage") or shutil.which("internimage", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "internimage.cli"]


def run_logged(report: Report, name: str, cmd: list[str], timeout: float) -> tuple[int, str, float]:
    """Run ``cmd`` in the repository, its output in logs/<name>.log: (return code, stdout, seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    start = time.monotonic()
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=max(timeout, 5.0))
    seconds = time.monotonic() - start
    write_text(report.out / "logs" / f"{name}.log", f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"{name} exited with {proc.returncode}: {tail[-1] if tail else '(no stderr)'}")
    return proc.returncode, proc.stdout, seconds


def training_smoke(report: Report) -> None:
    plan = report.plan
    cols = ["step", "figures", "seconds", "status"]
    section = report.section("smoke", "4. Training smoke: internimage train (20 steps, bf16) + eval", cols)
    steps = 20
    data = report.out / "smoke"
    run = data / "run"
    with report.item("smoke", "train", need_s=40) as go:
        if not go:
            return
        shutil.rmtree(data, ignore_errors=True)
        n_train = make_image_folder(data / "train", steps * plan.smoke_batch // 2)
        n_val = make_image_folder(data / "val", 2 * plan.smoke_batch, seed=1)
        cmd = [*cli_command(), "train", "--preset", "internimage_t_1k_224"]
        cmd += ["--train-data", str(data / "train"), "--val-data", str(data / "val"), "--output", str(run)]
        cmd += ["--device", plan.device, "--amp", "bf16", "--batch-size", str(plan.smoke_batch)]
        cmd += ["--workers", str(plan.smoke_workers), "--set", f"img_size={plan.smoke_img_size}", "epochs=1"]
        cmd += [f"max_steps={steps}", "eval_every=0", "log_every=5", "warmup_epochs=0", "ema=false"]
        _, out, seconds = run_logged(report, "train", cmd, report.left())
        result = json.loads(out.strip().splitlines()[-1])
        ok = result.get("step") == steps and math.isfinite(result.get("train_loss", math.nan))
        ok = ok and (run / "model.safetensors").is_file()
        device_line = _trainer_device(report.out / "logs" / "train.log")
        ok = ok and plan.device in device_line
        section.rows.append(
            {
                "step": f"train ({n_train} PNGs, batch {plan.smoke_batch}, {plan.smoke_img_size}px, {plan.device})",
                "figures": f"step {result.get('step')}, loss {result.get('train_loss', math.nan):.3f}, "
                f"val top-1 {result.get('top1', math.nan):.1f}%; {device_line}",
                "seconds": f"{seconds:.0f}",
                "status": pf(ok),
            }
        )
        section.figures.append({"step": "train", "result": result, "seconds": seconds, "cmd": cmd})
    with report.item("smoke", "eval", need_s=15) as go:
        if not go:
            return
        cmd = [*cli_command(), "eval", "--checkpoint", str(run / "model.safetensors"), "--val-data", str(data / "val")]
        cmd += ["--device", plan.device, "--batch-size", str(2 * plan.smoke_batch)]
        cmd += ["--workers", str(plan.smoke_workers), "--json"]
        _, out, seconds = run_logged(report, "eval", cmd, report.left())
        metrics = json.loads(out.strip().splitlines()[-1])
        ok = metrics.get("samples") == n_val and 0 <= metrics.get("top1", -1) <= 100
        section.rows.append(
            {
                "step": "eval model.safetensors",
                "figures": f"top-1 {metrics['top1']:.1f}%, loss {metrics['loss']:.3f}, "
                f"{int(metrics['samples'])} images",
                "seconds": f"{seconds:.0f}",
                "status": pf(ok),
            }
        )
        section.figures.append({"step": "eval", "metrics": metrics, "seconds": seconds, "cmd": cmd})


def _trainer_device(log: Path) -> str:
    """The trainer's 'N process(es) on DEVICE' log line, shortened."""
    match = re.search(r"process\(es\) on (\S+?),", log.read_text(errors="replace"))
    return f"ran on {match.group(1)}" if match else "device not found in the log"
