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
import os
from pathlib import Path

from ..data.datasets import collect_images, load_image
from ..detection import (
    META_KEY,
    DetTask,
    DetTrainConfig,
    build_dataset,
    detect,
    evaluate_detector,
    load_detector,
    render_detections,
)
from ..engine.config import apply_overrides, load_config
from ..engine.task import checkpoint_fields
from ..io import atomic_write
from ._common import (
    add_config_arguments,
    add_output,
    add_overrides,
    output_stems,
    overrides,
    print_config,
    resolve_device,
    save_png,
    train_and_report,
)

# ------------------------------------------------------------------------------------------------- config resolution


def _resolve_config(args: argparse.Namespace, train: bool) -> DetTrainConfig:
    """Defaults <- preset <- config file <- checkpoint metadata (eval/predict) <- command-line flags."""
    cfg = DetTrainConfig()
    if args.preset:
        from ..configs.detection import get_preset

        cfg = apply_overrides(cfg, get_preset(args.preset))
    if args.config:
        cfg = load_config(DetTrainConfig, args.config)
    if not train and getattr(args, "checkpoint", None):
        cfg = apply_overrides(cfg, checkpoint_fields(args.checkpoint, META_KEY, DetTrainConfig))
    flags = {
        "arch": args.arch,
        "model": args.model,
        "num_classes": args.num_classes,
        "data_root": getattr(args, "data_root", None),
    }
    cfg = apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})
    cfg = apply_overrides(cfg, overrides(args))
    cfg.validate()
    return cfg


def _add_common(parser: argparse.ArgumentParser) -> None:
    from ..configs.detection import list_presets
    from ..models.detection import ARCHITECTURES

    parser.add_argument("--preset", choices=list_presets(), help="official recipe to start from")
    parser.add_argument("--config", help="YAML config (e.g. a run's config.yaml)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="detector architecture")
    parser.add_argument("--model", help="backbone name (see `internimage info`)")
    parser.add_argument("--num-classes", type=int, help="number of foreground classes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


# ------------------------------------------------------------------------------------------------- train
def _train_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--data-root", help="folder the annotation / image paths are relative to")
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
    return train_and_report(cfg, DetTask(cfg))


# ------------------------------------------------------------------------------------------------- eval
def _eval_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--checkpoint", required=True, help="our model.safetensors, a training or an mmdet checkpoint")
    parser.add_argument("--data-root", help="folder the annotation / image paths are relative to")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    add_output(parser, "folder for det_metrics.json")
    add_config_arguments(parser)


def _eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    from ..data.coco import collate_detection

    cfg = _resolve_config(args, train=False)
    if args.print_config:
        print_config(cfg)
        return 0
    device = resolve_device(args.device)
    model = load_detector(cfg, args.checkpoint, device)
    ds = build_dataset(cfg, train=False)
    if args.limit > 0:
        ds = Subset(ds, range(min(args.limit, len(ds))))
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_detection, num_workers=min(2, os.cpu_count() or 1))
    metrics = evaluate_detector(model, loader)
    for key, value in metrics.items():
        print(f"{key:<14} {value:.4f}")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "det_metrics.json", json.dumps(metrics, indent=2))
        print(f"metrics: {out / 'det_metrics.json'}")
    return 0


# ------------------------------------------------------------------------------------------------- predict
def _predict_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    add_overrides(parser)
    parser.add_argument("--checkpoint", required=True, help="our model.safetensors, a training or an mmdet checkpoint")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    add_output(parser, "folder for the PNGs and predictions.json", default="predictions")
    parser.add_argument("--score-thresh", type=float, help="minimum score drawn (default: the config's, 0.3)")


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    cfg = _resolve_config(args, train=False)
    device = resolve_device(args.device)
    model = load_detector(cfg, args.checkpoint, device)
    names = cfg.class_names()
    out = Path(args.output)
    paths = collect_images(args.inputs)
    records = []
    for path, stem in zip(tqdm(paths, desc="predict"), output_stems(paths)):
        try:
            rgb = np.asarray(load_image(path, "RGB")).copy()  # 16-bit images scaled, not clipped to white
        except OSError as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
        pred = detect(model, rgb, cfg, args.score_thresh)
        target = out / stem.with_name(stem.name + ".png")
        save_png(render_detections(rgb, pred, names), target)
        records.append(
            {
                "image": str(path),
                "png": str(target),
                "detections": [
                    {"label": names[int(lb) - 1], "score": round(float(s), 4), "box": [round(float(c), 1) for c in b]}
                    for b, s, lb in zip(pred["boxes"], pred["scores"], pred["labels"])
                ],
            }
        )
        print(f"{path}: {len(records[-1]['detections'])} objects -> {target}")
    atomic_write(out / "predictions.json", json.dumps(records, indent=2))
    print(f"{len(records)} images: {len(records)} PNGs and predictions.json -> {out}/")
    return 0


COMMANDS = {
    "train": (_train_args, _train),
    "eval": (_eval_args, _eval),
    "predict": (_predict_args, _predict),
}
