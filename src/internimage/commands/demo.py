"""``internimage demo``: train a small InternImage on Fashion-MNIST, evaluate, predict, draw, all offline.

Argument parsing and printing around :mod:`internimage.classification.demo`. Data come from the Debian package
``dataset-fashion-mnist``, ``--data DIR``, or torchvision's download. Outputs in ``--output``: the run (checkpoints,
``metrics.csv``, ``model.safetensors``), ``curves.png``, ``predictions.png`` and ``demo.json`` (accuracy, steps,
wall and CPU time).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from ..classification.demo import FashionMNISTTask, demo_config, fit_to_budget, prediction_grid
from ..engine import apply_overrides


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="folder with the Fashion-MNIST *-ubyte(.gz) files")
    parser.add_argument("--output", default="runs/demo", help="run folder (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    parser.add_argument(
        "--minutes", type=float, default=None, help="time budget: shorten the schedule to fit this machine"
    )
    parser.add_argument(
        "--augment", action="store_true", help="random flips and 2-pixel shifts (for runs longer than the recipe)"
    )
    parser.add_argument("--train-limit", type=int, default=0, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test images only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any config field")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_demo(args: argparse.Namespace) -> int:
    from ..data import find_fashion_mnist
    from ..engine import Trainer
    from ..io import atomic_write
    from ..plotting import plot_run

    t0, cpu0 = time.time(), _cpu_seconds()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = find_fashion_mnist(args.data)
    print(f"Fashion-MNIST: {data_dir}")
    cfg = demo_config(args.output)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.resume:
        cfg.resume = "auto"
    cfg = apply_overrides(cfg, args.set)
    task = FashionMNISTTask(cfg, data_dir, args.train_limit, args.test_limit, augment_train=args.augment)
    if args.minutes is not None:
        from ..data import load_fashion_mnist

        sizes = [len(load_fashion_mnist(data_dir, split)[1]) for split in ("train", "test")]
        limits = (args.train_limit, args.test_limit)
        train_size, test_size = (min(n, lim) if lim else n for n, lim in zip(sizes, limits))
        steps = fit_to_budget(cfg, task, args.minutes, train_size, test_size)
        print(f"budget {args.minutes:g} min: {steps} training steps")
    trainer = Trainer(cfg, task)
    result = trainer.fit()
    if trainer.preempted:
        print(f"interrupted at step {result['step']}; continue with: internimage demo --resume --output {cfg.output}")
        return 0
    out = Path(cfg.output)
    plot_run(out, out / "curves.png")
    grid = prediction_grid(trainer.model, trainer.val_loader.dataset, task.classes, out / "predictions.png")
    wall, cpu = time.time() - t0, _cpu_seconds() - cpu0
    summary = {
        "test_top1": round(result["top1"], 2),
        "test_top5": round(result["top5"], 2),
        "epochs": cfg.epochs,
        "steps": result["step"],
        "batch_size": cfg.batch_size,
        "img_size": cfg.img_size,
        "train_time_s": result["train_time_s"],
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(cpu, 1),
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "grid_correct": grid,
    }
    atomic_write(out / "demo.json", json.dumps(summary, indent=2) + "\n")
    print(f"test accuracy: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%")
    print(f"wall time: {wall:.0f} s, CPU time {cpu:.0f} s ({torch.get_num_threads()} threads); outputs in {out}/:")
    for name in ("model.safetensors", "metrics.csv", "curves.png", "predictions.png", "demo.json"):
        print(f"  {name}")
    return 0


COMMANDS = {"demo": (_demo_arguments, _run_demo)}
