"""Does the occupancy task learn? A tiny BEVFormer-Occ trained through the CLI on generated scenes.

Writes ``--scenes`` synthetic scenes in the nuScenes / Occ3D formats (:func:`internimage.occupancy.generate_scenes`),
evaluates the freshly initialised tiny model (the tiny registered InternImage, BEV 50 x 50, 1 encoder layer) on the
held-out last two scenes, then runs ``internimage train --task occupancy`` on the others with an evaluation after
every epoch, and prints the held-out occupancy mIoU (camera-masked, 17 semantic classes) per epoch. With
``--predict`` it also writes the bird's-eye-view PNGs of the held-out frames (``internimage predict``).

Example::

    python benchmarks/occupancy_learning.py --epochs 12 --lr 1e-3 --out /tmp/occ_learn --predict
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from internimage.cli import main as cli
from internimage.occupancy import (
    OccupancyConfig,
    build_dataset,
    build_occupancy_model,
    collate_occupancy,
    evaluate_occupancy,
    generate_scenes,
)
from internimage.occupancy.models import TINY_CONFIG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/occ_learn", help="work folder (scenes, run, predictions)")
    parser.add_argument("--scenes", type=int, default=10, help="generated scenes (the last 2 are held out)")
    parser.add_argument("--frames", type=int, default=6, help="keyframes per scene")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--predict", action="store_true", help="also write the held-out BEV PNGs")
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "scenes"
    if not (data / "v1.0-synthetic").is_dir():
        generate_scenes(data, args.scenes, args.frames, image_size=(96, 54), occ_size=(50, 50, 8), seed=args.seed)
    names = [f"scene-{i:04d}" for i in range(1, args.scenes + 1)]
    kwargs = {k: v for k, v in TINY_CONFIG.items() if k not in ("backbone", "backbone_overrides")}
    fields = {
        "model": "internimage_test_32",
        "backbone_overrides": {},
        "model_kwargs": kwargs,
        "data_root": str(data),
        "version": "v1.0-synthetic",
        "train_scenes": ",".join(names[:-2]),
        "val_scenes": ",".join(names[-2:]),
        "queue_length": 2,
    }
    torch.manual_seed(0)
    cfg = OccupancyConfig(**fields)
    loader = DataLoader(build_dataset(cfg, train=False), batch_size=1, collate_fn=collate_occupancy)
    start = evaluate_occupancy(build_occupancy_model(cfg).eval(), loader)["mIoU"]
    run = out / "run"
    sets = [f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in fields.items() if k != "data_root"]
    sets += [f"lr={args.lr}", f"min_lr={args.lr * 1e-3}", "warmup_iters=20", "workers=0", "eval_every=1"]
    argv = ["train", "--task", "occupancy", "--data-root", str(data), "--output", str(run), "--device", "cpu"]
    argv += ["--epochs", str(args.epochs)]
    t0 = time.perf_counter()
    if cli([*argv, "--set", *sets]) != 0:
        raise SystemExit("training failed")
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if r.get("split") == "val" and "mIoU" in r]
    print(f"\nheld-out mIoU (%), {len(names) - 2} training scenes x {args.frames} frames, {seconds:.0f} s of training")
    print(f"{'epoch':>6} {'step':>6} {'mIoU':>7}")
    print(f"{0:>6} {0:>6} {start:>7.2f}")
    for r in evals:
        print(f"{r.get('epoch', '?'):>6} {r.get('step', '?'):>6} {r['mIoU']:>7.2f}")
    if args.predict:
        pred = ["predict", "--task", "occupancy", "--checkpoint", str(run / "model.safetensors"), "--data-root"]
        pred += [str(data), "--scenes", names[-1], "--device", "cpu", "--output", str(out / "bev"), "--overwrite"]
        cli([*pred, "--set", "version=v1.0-synthetic"])


if __name__ == "__main__":
    main()
