"""``internimage train|eval|predict --task segmentation``: parsing and printing over :mod:`internimage.segmentation`.

Examples::

    internimage train --task segmentation --preset upernet_internimage_t_512_160k_ade20k \\
        --data-root ADEChallengeData2016 --pretrained internimage_t_1k_224.pth --output runs/upernet_t
    torchrun --nproc_per_node 8 -m internimage.cli train --task segmentation --preset ... (multi-GPU)
    internimage eval --task segmentation --checkpoint runs/upernet_t/model.safetensors --data-root ... --ms --flip
    internimage eval --task segmentation --preset upernet_internimage_t_512_160k_ade20k \\
        --checkpoint upernet_internimage_t_512_160k_ade20k.pth --data-root ADEChallengeData2016   (official mmseg)
    internimage predict --task segmentation --checkpoint runs/upernet_t/model.safetensors photo.jpg --output out/
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..data.datasets import collect_images, load_image
from ..engine.config import apply_overrides
from ..io import atomic_write
from ..plotting import plot_per_class
from ..segmentation import (
    SegmentationConfig,
    SegmentationTask,
    build_dataset,
    evaluate_segmentor,
    list_collate,
    load_segmentor,
    render_overlay,
    segment,
)
from ..segmentation.config import DATASET_NAMES
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

# ------------------------------------------------------------------------------------------------- config resolution


def _resolve_config(args: argparse.Namespace, train: bool, extra: dict[str, Any] | None = None) -> SegmentationConfig:
    flags = {"model": args.model, "num_classes": args.num_classes, "data_root": getattr(args, "data_root", None)}
    flags = {**_dataset_flags(args, train), **{k: v for k, v in flags.items() if v is not None}}
    if getattr(args, "classes_file", None):
        flags["classes"] = _read_lines(args.classes_file)
        flags["num_classes"] = flags["num_classes"] or len(flags["classes"])
    return resolve_config(SegmentationConfig, args, train, {**flags, **(extra or {})})


def _dataset_flags(args: argparse.Namespace, train: bool) -> dict[str, Any]:
    """``--dataset``: the layout's classes, ``reduce_zero_label`` and split names (``--set`` and the other flags win).

    Evaluating a checkpoint that stores its classes keeps them (the dataset is relabelled to them by name).
    """
    from ..engine.config import checkpoint_fields
    from ..segmentation.datasets import dataset_fields
    from ._common import overrides

    name = getattr(args, "dataset", None)
    if not name:
        return {}
    if args.preset:
        from ..segmentation.presets import get_preset

        preset = get_preset(args.preset)
        if name in (preset.get("dataset"), preset.get("val_dataset")) and preset.get("classes"):
            return {}  # the preset is made for this layout: its head and class names stay
    # Mapillary with 19 classes is the original's MapillaryHack (merged into the Cityscapes classes).
    merged = args.num_classes == 19 or "num_classes=19" in [o.replace(" ", "") for o in overrides(args)]
    fields = dataset_fields(name, cityscapes_classes=name == "mapillary" and merged)
    if not train and getattr(args, "checkpoint", None):
        try:
            stored = checkpoint_fields(args.checkpoint, SegmentationConfig.meta_key, SegmentationConfig)
        except (OSError, ValueError, KeyError):
            stored = {}  # resolve_config reports an unreadable checkpoint
        if stored.get("classes"):
            fields.pop("classes", None)
            fields.pop("num_classes", None)
    return fields


def _read_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"classes file not found: {p}")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def _add_common(parser: argparse.ArgumentParser) -> None:
    from ..segmentation.presets import list_presets

    parser.add_argument("--preset", choices=list_presets(), help="official recipe to start from")
    parser.add_argument("--config", help="YAML config (e.g. a run's config.yaml)")
    parser.add_argument("--model", help="backbone name (see `internimage info`)")
    parser.add_argument("--num-classes", type=int, help="number of classes")
    parser.add_argument("--classes-file", help="text file with one class name per line")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


# ------------------------------------------------------------------------------------------------- train
def _train_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--data-root", help="dataset root")
    parser.add_argument("--dataset", choices=DATASET_NAMES, help="dataset layout (sets its classes and splits)")
    parser.add_argument("--val-data-root", help="evaluation data root when the config evaluates on another dataset")
    parser.add_argument("--pretrained", help="classification or segmentation checkpoint to start from")
    add_output(parser, "run directory (default: runs/<preset or model>)")
    parser.add_argument("--iters", type=int, help="optimizer steps (160000 officially)")
    parser.add_argument("--batch-size", type=int, help="images per process")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    add_config_arguments(parser)


def _train(args: argparse.Namespace) -> int:

    extra = {
        "val_data_root": args.val_data_root,
        "pretrained": args.pretrained,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "resume": args.resume,
        "output": args.output or (None if args.config else f"runs/{args.preset or args.model or 'segmentation'}"),
        "device": None if args.device == "auto" else args.device,
    }
    cfg = _resolve_config(args, train=True, extra=extra)
    if args.print_config:
        print_config(cfg)
        return 0
    return train_and_report(cfg, SegmentationTask(cfg))


# ------------------------------------------------------------------------------------------------- eval
def _eval_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--checkpoint", required=True, help="our model.safetensors, a training or an mmseg checkpoint")
    parser.add_argument("--data-root", help="dataset root")
    parser.add_argument("--dataset", choices=DATASET_NAMES, help="dataset layout (sets its classes and splits)")
    parser.add_argument("--split", help="split folder (default: the config's val_split)")
    parser.add_argument("--mode", choices=("whole", "slide"), help="inference mode")
    parser.add_argument("--ms", action="store_true", help="official multi-scale test (ratios 0.5 .. 1.75)")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped views")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    add_output(parser, "folder for seg_metrics.json and per_class_iou.png")
    add_overwrite(parser)
    add_config_arguments(parser)


def _eval_config(args: argparse.Namespace) -> SegmentationConfig:
    """The checkpoint's config with the eval flags (``--mode``, ``--ms``, ``--flip``) applied, validated."""
    from ..segmentation.presets import MS_RATIOS

    cfg = _resolve_config(args, train=False)
    over: dict[str, Any] = {}
    if args.mode:
        over["test_mode"] = args.mode
    if args.ms:
        over["test_ratios"] = MS_RATIOS
    if args.flip:
        over["test_flip"] = True
    return apply_overrides(cfg, over)


def _eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    cfg = _eval_config(args)
    if args.print_config:
        print_config(cfg)
        return 0
    # Every refusal (labels, classes, outputs) before the model is built and before anything is written.
    from ..segmentation.datasets import dataset_fields

    # A run trained without evaluation stores no val_split: the layout's own evaluation split then.
    split = args.split or cfg.val_split or dataset_fields(cfg.val_dataset or cfg.dataset)["val_split"]
    ds = build_dataset(cfg, split, train=False, evaluation=True)
    out = Path(args.output) if args.output else None
    targets = [out / "seg_metrics.json", out / "per_class_iou.png"] if out else []
    read = [Path(args.checkpoint), *(p for pair in ds.samples for p in pair if p is not None)]
    check_outputs(targets, read, args.overwrite)
    model = load_segmentor(cfg, args.checkpoint, resolve_device(args.device))
    names = list(ds.classes)
    if args.limit > 0:
        ds = Subset(ds, range(min(args.limit, len(ds))))
    loader = DataLoader(ds, batch_size=1, collate_fn=list_collate, num_workers=min(2, os.cpu_count() or 1))
    result = evaluate_segmentor(model, loader, cfg, names, progress=True)
    _print_metrics(result, len(ds), names)
    if out:
        atomic_write(out / "seg_metrics.json", json.dumps(result, indent=2))
        png = plot_per_class(result, out / "per_class_iou.png")
        print(f"wrote {out / 'seg_metrics.json'}" + (f" and {png}" if png else ""))
    return 0


def _print_metrics(result: dict[str, Any], images: int, names: list[str]) -> None:
    print(f"images {images}  aAcc {100 * result['aAcc']:.2f}  mIoU {100 * result['mIoU']:.2f}  "
          f"mAcc {100 * result['mAcc']:.2f}")  # fmt: skip
    width = max(len(n) for n in names)
    for name, v in result["per_class"].items():
        print(f"  {name:<{width}}  IoU {100 * v['IoU']:6.2f}  Acc {100 * v['Acc']:6.2f}")


# ------------------------------------------------------------------------------------------------- predict
def _predict_args(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    add_overrides(parser)
    parser.add_argument("inputs", nargs="+", help="images or folders of images")
    parser.add_argument("--checkpoint", required=True, help="our model.safetensors, a training or an mmseg checkpoint")
    add_output(parser, "folder for <name>_seg.png and <name>_label.png", default="predictions")
    add_overwrite(parser)
    parser.add_argument("--mode", choices=("whole", "slide"), help="inference mode")
    parser.add_argument("--ms", action="store_true", help="official multi-scale test")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped views")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours (default 0.5)")


def _predict_targets(args: argparse.Namespace, paths: list[Path]) -> list[tuple[Path, Path]]:
    """(overlay, label map) output of every image, checked against the inputs and existing files."""
    out_dir = Path(args.output)
    targets = [
        (out_dir / stem.with_name(stem.name + "_seg.png"), out_dir / stem.with_name(stem.name + "_label.png"))
        for stem in output_stems(paths)
    ]
    check_outputs([t for pair in targets for t in pair], [*paths, Path(args.checkpoint)], args.overwrite)
    return targets


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from ..data.palette import default_palette
    from ..segmentation.presets import MS_RATIOS

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    cfg = _resolve_config(args, train=False)
    paths = collect_images(args.inputs)
    targets = _predict_targets(args, paths)
    model = load_segmentor(cfg, args.checkpoint, resolve_device(args.device))
    names = cfg.class_names()
    palette = default_palette(cfg.num_classes)
    for path, (overlay, label_png) in zip(tqdm(paths, desc="predict", unit="img"), targets):
        try:
            rgb = np.asarray(load_image(path, "RGB")).copy()  # 16-bit images scaled, not clipped to white
        except OSError as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
        ratios = MS_RATIOS if args.ms else None
        label = segment(model, rgb, cfg, ratios=ratios, flip=args.flip or None, mode=args.mode)
        save_png(render_overlay(rgb, label, palette, names, args.alpha), overlay)
        save_png(Image.fromarray(label), label_png)
        top = np.bincount(label.ravel(), minlength=cfg.num_classes).argsort()[::-1][:3]
        shares = ", ".join(f"{names[i]} {100 * (label == i).mean():.1f}%" for i in top if (label == i).any())
        tqdm.write(f"{path}: {shares} -> {overlay}")
    print(f"{len(paths)} images: {2 * len(paths)} PNGs -> {args.output}/")
    return 0


COMMANDS = {
    "train": (_train_args, _train),
    "eval": (_eval_args, _eval),
    "predict": (_predict_args, _predict),
}
