"""``internimage train|eval|predict --task occupancy``: parsing and printing over :mod:`internimage.occupancy`.

Examples::

    internimage train --task occupancy --preset bevformer_intern-s_occ --data-root data/nuscenes \\
        --occ-root data/occ3d-nus --pretrained mask_rcnn_internimage_s_fpn_3x_coco.pth --output runs/occ
    internimage eval --task occupancy --checkpoint runs/occ/model.safetensors --data-root data/nuscenes \\
        --occ-root data/occ3d-nus
    internimage predict --task occupancy --checkpoint runs/occ/model.safetensors --data-root data/nuscenes \\
        --occ-root data/occ3d-nus --scenes scene-0003 --output occ_out/       # <token>_bev.png + <token>_occ.npz
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..io import atomic_write
from ..occupancy import (
    OccupancyConfig,
    OccupancyTask,
    build_dataset,
    collate_occupancy,
    evaluate_occupancy,
    load_occupancy_model,
    save_prediction,
)
from ._common import (
    add_config_arguments,
    add_output,
    add_overwrite,
    check_outputs,
    print_config,
    resolve_config,
    resolve_device,
    train_and_report,
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    from ..occupancy.presets import list_presets

    parser.add_argument("--preset", choices=list_presets(), help="official recipe to start from")
    parser.add_argument("--config", help="YAML config (e.g. a run's config.yaml)")
    parser.add_argument("--model", help="backbone name (see `internimage info`)")
    parser.add_argument("--data-root", help="nuScenes root (v1.0-*/ tables, samples/, optional can_bus/)")
    parser.add_argument("--occ-root", help="Occ3D root holding gts/<scene>/<token>/labels.npz (default: --data-root)")
    parser.add_argument("--version", help="nuScenes table version (default v1.0-trainval)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def _flags(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model": args.model,
        "data_root": args.data_root,
        "occ_root": args.occ_root,
        "version": args.version,
        **(extra or {}),
    }


# ------------------------------------------------------------------------------------------------- train
def _train_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--pretrained", help="backbone checkpoint (e.g. Mask R-CNN-S 3x) or a whole occupancy model")
    add_output(parser, "run directory (default: runs/<preset or occupancy>)")
    parser.add_argument("--epochs", type=int, help="epochs (24 officially)")
    parser.add_argument("--batch-size", type=int, help="samples (temporal queues) per process")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    add_config_arguments(parser)


def _train(args: argparse.Namespace) -> int:
    extra = {
        "pretrained": args.pretrained,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "resume": args.resume,
        "output": args.output or (None if args.config else f"runs/{args.preset or 'occupancy'}"),
        "device": None if args.device == "auto" else args.device,
    }
    cfg = resolve_config(OccupancyConfig, args, True, _flags(args, extra))
    if args.print_config:
        print_config(cfg)
        return 0
    return train_and_report(cfg, OccupancyTask(cfg))


# ------------------------------------------------------------------------------------------------- eval
def _eval_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--checkpoint", required=True, help="our model.safetensors, a training or an official file")
    parser.add_argument("--scenes", help="scenes to evaluate: val (default), all, or comma-separated names")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N frames only")
    add_output(parser, "folder for occ_metrics.json")
    add_overwrite(parser)
    add_config_arguments(parser)


def _eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    cfg = resolve_config(OccupancyConfig, args, False, _flags(args, {"val_scenes": args.scenes}))
    if args.print_config:
        print_config(cfg)
        return 0
    ds = build_dataset(cfg, train=False)
    out = Path(args.output) if args.output else None
    check_outputs([out / "occ_metrics.json"] if out else [], [Path(args.checkpoint)], args.overwrite)
    model = load_occupancy_model(cfg, args.checkpoint, resolve_device(args.device))
    if args.limit > 0:
        ds = Subset(ds, range(min(args.limit, len(ds))))
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_occupancy, num_workers=min(2, os.cpu_count() or 1))
    result = evaluate_occupancy(model, loader, cfg.num_classes, progress=True)
    print(result["table"])
    print(f"frames {result['count']}  mIoU {result['mIoU']:.2f}")
    if out:
        keep = {k: result[k] for k in ("mIoU", "per_class_iou", "count")}
        atomic_write(out / "occ_metrics.json", json.dumps(keep, indent=2))
        print(f"wrote {out / 'occ_metrics.json'}")
    return 0


# ------------------------------------------------------------------------------------------------- predict
def _predict_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--checkpoint", required=True, help="our model.safetensors, a training or an official file")
    parser.add_argument("--scenes", help="scenes to predict: val (default), all, or comma-separated names")
    parser.add_argument("--limit", type=int, default=0, help="the first N frames only")
    add_output(parser, "folder for <sample token>_bev.png and _occ.npz", default="occ_predictions")
    add_overwrite(parser)
    add_config_arguments(parser)


def _predict(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from ..occupancy.task import frame_inputs

    cfg = resolve_config(OccupancyConfig, args, False, _flags(args, {"val_scenes": args.scenes}))
    if args.print_config:
        print_config(cfg)
        return 0
    labelled = (Path(cfg.occ_root or cfg.data_root) / "gts").is_dir()  # ground truth drawn beside when present
    ds = build_dataset(cfg, train=False, require_labels=labelled)
    frames = ds.frames if args.limit <= 0 else ds.frames[: args.limit]
    out = Path(args.output)
    targets = [out / f"{f.token}_{kind}" for f in frames for kind in ("bev.png", "occ.npz")]
    check_outputs(targets, [Path(args.checkpoint)], args.overwrite)
    device = resolve_device(args.device)
    model = load_occupancy_model(cfg, args.checkpoint, device)
    subset = ds if args.limit <= 0 else Subset(ds, range(len(frames)))
    loader = DataLoader(subset, batch_size=1, collate_fn=collate_occupancy)
    for batch in tqdm(loader, desc="predict", unit="frame"):
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in frame_inputs(batch, 0).items()}
        occ = model.predict(**inputs)["occ"][0].cpu().numpy()
        gt = batch["voxel_semantics"][0].numpy() if "voxel_semantics" in batch else None
        mask = batch["mask_camera"][0].numpy() if "mask_camera" in batch else None
        png, _ = save_prediction(out, batch["sample_token"][0], occ, gt, mask)
        tqdm.write(f"{batch['scene_name'][0]} {batch['sample_token'][0]} -> {png}")
    print(f"{len(frames)} frames: {2 * len(frames)} files -> {out}/")
    return 0


COMMANDS = {
    "train": (_train_args, _train),
    "eval": (_eval_args, _eval),
    "predict": (_predict_args, _predict),
}
