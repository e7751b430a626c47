"""``internimage benchmark``: latency / throughput / memory of a model under PyTorch eager, compiled, onnxruntime.

Example::

    internimage benchmark internimage_t_1k_224 --batch 1 --size 224 --csv bench.csv
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..detection import ARCHITECTURES
    from ..export import TASKS
    from ..export.benchmark import BACKENDS

    parser.add_argument("model", help="InternImage name or segmentation preset")
    parser.add_argument("--task", default="classification", choices=TASKS, help="model family (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None, help="weights (the numbers do not depend on them)")
    parser.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's or preset's)")
    parser.add_argument(
        "--arch", choices=list(ARCHITECTURES), help="detection architecture (default: the checkpoint's, else mask_rcnn)"
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="input side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=20, help="timed calls (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--onnx", default=None, help="use this exported .onnx for onnxruntime instead of exporting")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import build_exportable
    from ..export.benchmark import benchmark, format_table, write_csv

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is available")
    if args.onnx is not None and not os.path.isfile(args.onnx):
        raise FileNotFoundError(f"ONNX file not found: {args.onnx}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = build_exportable(args.task, args.model, args.checkpoint, args.num_classes, args.arch)
    results = benchmark(
        model,
        backends,
        args.batch,
        args.size,
        args.warmup,
        args.iters,
        device=args.device,
        onnx_path=args.onnx,
        threads=args.threads,
    )
    print(f"{args.model} ({args.task}), {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(format_table(results))
    if args.csv:
        write_csv(results, args.csv)
        print(f"wrote {args.csv}")
    return 0


COMMANDS = {"benchmark": (add_arguments, run)}
