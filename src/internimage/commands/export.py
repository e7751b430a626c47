"""``internimage export``: ONNX / ONNX with the TensorRT DCNv3 plugin / torch.export, verified on the spot.

Examples::

    internimage export internimage_t_1k_224 --checkpoint t.safetensors --format onnx -o t.onnx
    internimage export internimage_t_1k_224 --format onnx,onnx-trt,pt2 -o exports/t
    internimage export upernet_internimage_t_512_160k_ade20k --task segmentation --checkpoint seg.pth --size 512
    internimage export internimage_t_1k_224 --task detection --arch cascade_mask_rcnn --checkpoint det.safetensors
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from ._common import add_overwrite, check_outputs

_SUFFIX = {"onnx": ".onnx", "onnx-trt": ".trt.onnx", "pt2": ".pt2"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..detection import ARCHITECTURES
    from ..export import FORMATS, TASKS

    parser.add_argument(
        "model",
        nargs="?",
        help="InternImage name (e.g. internimage_t_1k_224) or a detection / segmentation preset; optional with a "
        "--checkpoint written by `internimage train` (it describes its model)",
    )
    parser.add_argument("--task", default="classification", choices=TASKS, help="model family (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None, help="weights of the whole model (any supported format)")
    parser.add_argument(
        "--format",
        default="onnx",
        help=f"comma-separated formats among {', '.join(FORMATS)} (default: %(default)s); onnx and pt2 share one trace",
    )
    parser.add_argument(
        "-o", "--output", default=None, help="output file (one format) or stem (several); default: ./<model>"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes (default: the checkpoint's, else the model's or preset's)",
    )
    parser.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        help="detection architecture (default: the checkpoint's, else mask_rcnn)",
    )
    parser.add_argument("--size", type=int, default=224, help="side of the first verification input (default: 224)")
    parser.add_argument("--atol", type=float, default=1e-3, help="fail if the max abs error exceeds this")
    parser.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    add_overwrite(parser)


def _paths(args: argparse.Namespace, formats: list[str]) -> dict[str, Path]:
    if args.output is None:
        stem = Path(args.model)
        return {f: stem.with_name(stem.name + _SUFFIX[f]) for f in formats}
    out = Path(args.output)
    if len(formats) == 1 and out.suffix in (".onnx", ".pt2"):
        return {formats[0]: out}
    name = out.name.removesuffix(".onnx").removesuffix(".pt2")
    return {f: out.with_name(name + _SUFFIX[f]) for f in formats}


def run(args: argparse.Namespace) -> int:
    from ..export import FORMATS, build_exportable, default_verify_shapes, export, trace

    if not args.verbose:  # the ONNX optimiser logs every folded constant at INFO
        for name in ("onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format must be among {', '.join(FORMATS)}, got {args.format!r}")
    if args.checkpoint is not None and Path(args.checkpoint).is_dir():
        raise IsADirectoryError(f"checkpoint {args.checkpoint} is a directory, not a weights file")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    if args.size < 1:
        raise ValueError(f"--size must be >= 1, got {args.size}")
    if args.model is None and args.checkpoint is None:
        raise ValueError("name the model to export, or give a --checkpoint written by `internimage train`")
    model = build_exportable(args.task, args.model, args.checkpoint, args.num_classes, args.arch)
    args.model = model.name
    paths = _paths(args, formats)
    check_outputs(list(paths.values()), [Path(args.checkpoint)] if args.checkpoint else [], args.overwrite)
    shapes = [] if args.no_verify else default_verify_shapes(model, args.size)
    print(f"{args.task} model {args.model}: {sum(p.numel() for p in model.module.parameters()) / 1e6:.2f} M params")
    if model.task == "detection" and model.output_names[-1] == "query_index":
        print("detection: exporting the whole DINO detector (scores, labels, boxes, query_index; no NMS needed)")
    elif model.task == "detection":
        print("detection: exporting backbone + FPN + RPN head (NMS/RoI heads run after, see the README)")
    failed = False
    reference_program = None
    for fmt, path in paths.items():
        program = None
        if fmt != "onnx-trt":  # onnx and pt2 export the same grid_sample trace
            reference_program = reference_program or trace(model)
            program = reference_program
        fmt_shapes = shapes
        if fmt == "onnx-trt" and shapes and importlib.util.find_spec("onnxruntime_extensions") is None:
            print("[onnx-trt] onnxruntime-extensions is not installed: checking the plugin nodes only, not numbers")
            fmt_shapes = []
        report = export(model, path, fmt, verify_shapes=fmt_shapes, program=program)
        extra = f", {report.trt_nodes} TRTDCNv3 nodes" if fmt == "onnx-trt" else ""
        files = ", ".join(f"{f} ({f.stat().st_size / 1e6:.1f} MB)" for f in report.files)
        print(f"[{fmt}] wrote {files} in {report.export_seconds:.1f} s{extra}")
        runtime = "torch.export.load" if fmt == "pt2" else "onnxruntime"
        for shape, err in report.errors:
            status = "ok" if err <= args.atol else "FAIL"
            failed |= err > args.atol
            print(f"[{fmt}]   {runtime} vs PyTorch on {'x'.join(map(str, shape))}: max abs error {err:.2e} {status}")
    if failed:
        print(f"error: an export differs from PyTorch by more than --atol {args.atol}")
    return 1 if failed else 0


COMMANDS = {"export": (add_arguments, run)}
