"""``internimage info`` and ``internimage convert``."""

from __future__ import annotations

import argparse
import json

from ..models import convert_checkpoint, list_models
from ..models.complexity import model_complexity

# Published figures of the official model zoo (the official README's model tables): params, GFLOPs at that size.
ZOO = {
    "t": (30e6, 5e9),
    "s": (50e6, 8e9),
    "b": (97e6, 16e9),
    "l": (223e6, 108e9),
    "xl": (335e6, 163e9),
    "h": (1.08e9, 1478e9),
    "g": (3e9, 2700e9),
}
ZOO_RESOLUTION = {"t": 224, "s": 224, "b": 224, "l": 384, "xl": 384, "h": 640, "g": 512}


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="*", help="glob of model names (default: all)")
    parser.add_argument("--include-test", action="store_true", help="also list the tiny test variants")
    parser.add_argument("--resolution", type=int, default=None, help="count at this square input size")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _run_info(args: argparse.Namespace) -> int:
    from ..models.internimage import MODEL_SPECS

    names = list_models(args.models, include_test=args.include_test)
    if not names:
        raise ValueError(f"no model matches {args.models!r}")
    rows = []
    for name in names:
        c = model_complexity(name, args.resolution)
        arch = MODEL_SPECS[name][0]
        row = {
            "model": name,
            "arch": arch.upper(),
            "resolution": c.resolution,
            "classes": MODEL_SPECS[name][1]["num_classes"],
            "params": c.params,
            "gmacs": round(c.macs / 1e9, 2),
            "dcn_gmacs": round(c.dcn_macs / 1e9, 3),
        }
        if arch in ZOO and c.resolution == ZOO_RESOLUTION[arch] and row["classes"] == 1000:
            row["zoo_params_diff_pct"] = round(100 * (c.params / ZOO[arch][0] - 1), 2)
            row["zoo_flops_diff_pct"] = round(100 * (c.macs / ZOO[arch][1] - 1), 2)
        rows.append(row)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    header = f"{'model':<30} {'arch':>9} {'res':>4} {'classes':>7} {'params':>15} {'GFLOPs':>9} {'DCN':>6}  vs zoo"
    print(header)
    print("-" * len(header))
    for r in rows:
        zoo = ""
        if "zoo_params_diff_pct" in r:
            zoo = f"params {r['zoo_params_diff_pct']:+.1f}%, FLOPs {r['zoo_flops_diff_pct']:+.1f}%"
        print(
            f"{r['model']:<30} {r['arch']:>9} {r['resolution']:>4} {r['classes']:>7} {r['params']:>15,d} "
            f"{r['gmacs']:>9.2f} {r['dcn_gmacs']:>6.2f}  {zoo}"
        )
    print("GFLOPs count multiply-accumulates (as the paper does), including the DCNv3 sampling core (DCN column).")
    return 0


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint: official .pth, HF, mmdet/mmseg, or safetensors")
    parser.add_argument("dst", help="output .safetensors path")
    parser.add_argument("--ema", action="store_true", help="take the EMA weights of a training checkpoint")
    parser.add_argument("--backbone-only", action="store_true", help="drop classifier / head weights")
    parser.add_argument("--model", default=None, help="verify the result loads strictly into this model")


def _run_convert(args: argparse.Namespace) -> int:
    if not args.dst.endswith(".safetensors"):
        raise ValueError(f"destination must end in .safetensors, got {args.dst}")
    model = None
    if args.model:
        import torch

        from ..models import create_model

        with torch.device("meta"):
            model = create_model(args.model)
    # With --model the weights are checked against it before the destination is written.
    fmt, path, count = convert_checkpoint(
        args.src, args.dst, use_ema=args.ema, backbone_only=args.backbone_only, verify_model=model
    )
    print(f"{args.src} ({fmt}) -> {path}: {count} tensors")
    if args.model:
        print(f"verified: loads into {args.model}")
    return 0


COMMANDS = {"info": (_info_arguments, _run_info), "convert": (_convert_arguments, _run_convert)}
