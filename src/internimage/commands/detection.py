"""``internimage train|eval|predict --task detection``: parsing and printing over :mod:`internimage.detection`.

Examples::

    internimage train --task detection --preset mask_rcnn_internimage_t_fpn_1x_coco --data-root coco \\
        --pretrained internimage_t_1k_224.pth --output runs/mask_rcnn_t
    torchrun --nproc_per_node 8 -m internimage.cli train --task detection --preset ... (multi-GPU)
    internimage eval --task detection --checkpoint runs/mask_rcnn_t/model.safetensors --data-root coco
    internimage eval --task detection --preset mask_rcnn_internimage_t_fpn_1x_coco \\
        --checkpoint mask_rcnn_internimage_t_fpn_1x_coco.pth --data-root coco       (official mmdet weights)
    internimage predict --task detection --checkpoint runs/mask_rcnn_t/model.safetensors photo.jpg --output out/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..data.datasets import collect_images, load_image
from ..detection import (
    DetectionConfig,
    DetectionTask,
    build_dataset,
    detect,
    evaluate_detector,
    load_detector,
    render_detections,
)
from ..engine.config import apply_overrides
from ..io import atomic_write
from ._common import (
    add_config_arguments,
    add_output,
    add_overrides,
    add_overwrite,
    check_outputs,
    output_stems,
    print_config,
    resolve_config,
    resolve_device,
    save_png,
    train_and_report,
)

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------- config resolution


def _resolve_config(args: argparse.Namespace, train: bool) -> DetectionConfig:
    flags = {
        "arch": args.arch,
        "model": args.model,
        "num_classes": args.num_classes,
        "data_root": getattr(args, "data_root", None),
        "dataset": getattr(args, "dataset", None),
        "score_thresh": getattr(args, "score_thresh", None),  # predict's flag, range-checked by validate()
    }
    return resolve_config(DetectionConfig, args, train, flags)


def _add_common(parser: argparse.ArgumentParser) -> None:
    from ..detection.models import ARCHITECTURES
    from ..detection.presets import list_presets

    parser.add_argument("--preset", choices=list_presets(), help="official recipe to start from")
    parser.add_argument("--config", help="YAML config (e.g. a run's config.yaml)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="detector architecture")
    parser.add_argument("--model", help="backbone name (see `internimage info`)")
    parser.add_argument("--num-classes", type=int, help="number of foreground classes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def _add_dataset(parser: argparse.ArgumentParser) -> None:
    from ..detection.config import DATASETS

    parser.add_argument(
        "--dataset", choices=DATASETS, help="annotation layout and metric (default: the preset's, else coco)"
    )


# ------------------------------------------------------------------------------------------------- train
def _train_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--data-root", help="folder the annotation / image paths are relative to")
    _add_dataset(parser)
    parser.add_argument("--pretrained", help="classification, mmdet or our checkpoint to start from")
    add_output(parser, "run directory (default: runs/<preset or model>)")
    parser.add_argument("--epochs", type=int, help="training epochs (12 for 1x, 36 for 3x)")
    parser.add_argument("--batch-size", type=int, help="images per process")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    add_config_arguments(parser)


def _train(args: argparse.Namespace) -> int:

    cfg = _resolve_config(args, train=True)
    extra = {
        "pretrained": args.pretrained,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "resume": args.resume,
        "output": args.output or (None if args.config else f"runs/{args.preset or cfg.model}"),
    }
    if args.device != "auto":
        extra["device"] = args.device
    cfg = apply_overrides(cfg, {k: v for k, v in extra.items() if v is not None})
    if args.print_config:
        print_config(cfg)
        return 0
    return train_and_report(cfg, DetectionTask(cfg))


# ------------------------------------------------------------------------------------------------- eval
def _eval_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--checkpoint", required=True, help="our model.safetensors, a training or an mmdet checkpoint")
    parser.add_argument("--data-root", help="folder the annotation / image paths are relative to")
    _add_dataset(parser)
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    add_output(parser, "folder for det_metrics.json")
    add_overwrite(parser)
    add_config_arguments(parser)


def _eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    from ..detection.data import collate_detection

    cfg = _resolve_config(args, train=False)
    if args.print_config:
        print_config(cfg)
        return 0
    device = resolve_device(args.device)
    ds = build_dataset(cfg, train=False)  # the annotations are checked before the model is built
    target = Path(args.output) / "det_metrics.json" if args.output else None
    if target is not None:
        check_outputs([target], [Path(args.checkpoint), getattr(ds, "ann_file", None) or ds.source], args.overwrite)
    model = load_detector(cfg, args.checkpoint, device)
    if args.limit > 0:
        ds = Subset(ds, range(min(args.limit, len(ds))))
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_detection, num_workers=min(2, os.cpu_count() or 1))
    metrics = evaluate_detector(model, loader)
    for key, value in metrics.items():
        print(f"{key:<14} {value:.4f}")
    if target is not None:
        atomic_write(target, json.dumps(metrics, indent=2))
        print(f"metrics: {target}")
    return 0


# ------------------------------------------------------------------------------------------------- predict
def _predict_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    add_overrides(parser)
    parser.add_argument("--checkpoint", required=True, help="our model.safetensors, a training or an mmdet checkpoint")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    add_output(parser, "folder for the PNGs and predictions.json", default="predictions")
    add_overwrite(parser)
    parser.add_argument("--score-thresh", type=float, help="minimum score drawn (default: the config's, 0.3)")


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    cfg = _resolve_config(args, train=False)
    out = Path(args.output)
    paths = collect_images(args.inputs)
    pngs = [out / stem.with_name(stem.name + ".png") for stem in output_stems(paths)]
    # Every target is checked before the first write: an --output equal to an input folder would draw over it.
    check_outputs([*pngs, out / "predictions.json"], [*paths, Path(args.checkpoint)], args.overwrite)
    device = resolve_device(args.device)
    model = load_detector(cfg, args.checkpoint, device)
    names = cfg.class_names()
    records = []
    for path, png in zip(tqdm(paths, desc="predict"), pngs):
        rgb = _read_rgb(path)
        if rgb is None:
            continue
        pred = detect(model, rgb, cfg)
        save_png(render_detections(rgb, pred, names), png)
        records.append({"image": str(path), "png": str(png), "detections": _detections(pred, names)})
        print(f"{path}: {len(records[-1]['detections'])} objects -> {png}")
    if not records:
        raise RuntimeError(f"none of the {len(paths)} images could be read")
    atomic_write(out / "predictions.json", json.dumps(records, indent=2))
    print(f"{len(records)} images: {len(records)} PNGs and predictions.json -> {out}/")
    if len(paths) > len(records):
        print(f"{len(paths) - len(records)} unreadable image(s) skipped")
    return 0


def _read_rgb(path: Path) -> Any:
    """(H, W, 3) uint8 RGB, or None (logged) for an unreadable file: one bad image does not end the run."""
    import numpy as np

    try:
        return np.asarray(load_image(path, "RGB")).copy()  # 16-bit images scaled, not clipped to white
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        logger.warning("skipping unreadable image %s: %s", path, err)
        return None


def _detections(pred: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """JSON records of one image's detections, labelled with the model's class names."""
    return [
        {"label": names[int(lb) - 1], "score": round(float(s), 4), "box": [round(float(c), 1) for c in b]}
        for b, s, lb in zip(pred["boxes"], pred["scores"], pred["labels"])
    ]


COMMANDS = {
    "train": (_train_args, _train),
    "eval": (_eval_args, _eval),
    "predict": (_predict_args, _predict),
}
