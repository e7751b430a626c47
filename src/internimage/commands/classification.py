"""Classification commands ``train|eval|predict|extract``: parsing and printing over :mod:`internimage.classification`.

Train (one process or ``torchrun``)::

    internimage train --preset internimage_t_1k_224 --train-data /data/train --val-data /data/val \\
        --set batch_size=64 epochs=30 --output runs/t
    torchrun --nproc_per_node 8 -m internimage.cli train --preset internimage_t_1k_224 ...

Any config field can be overridden with ``--set key=value`` (YAML values); ``--config run/config.yaml`` reloads a
saved run's config. ``eval``, ``predict`` and ``extract`` take ``--checkpoint`` in any supported format.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from torch.utils.data import DataLoader

from ..classification import (
    IMAGENET_1K,
    ClassificationConfig,
    ClassificationTask,
    build_val_dataset,
    extract_features,
    image_loader,
    list_presets,
    load_classifier,
    predict,
    save_features,
)
from ..data.datasets import collect_images
from ..engine import Trainer
from ._common import add_output, add_overrides, add_overwrite, check_outputs, output_stems, resolve_config


# ----------------------------------------------------------------------------------------------- commands
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, help=f"official recipe ({', '.join(list_presets())})")
    parser.add_argument("--config", default=None, help="YAML config (e.g. a run's config.yaml) instead of a preset")
    parser.add_argument("--model", default=None, help="model name (default: the preset's)")
    parser.add_argument("--train-data", default=None, help="image folder (root/<class>/<img>) or 'path label' list")
    parser.add_argument("--val-data", default=None, help="image folder or list for evaluation")
    add_output(parser, "run folder")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="per process")
    parser.add_argument("--lr", type=float, default=None, help="lr per lr_base_batch images")
    parser.add_argument("--accum-steps", type=int, default=None, help="gradient accumulation")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None)
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default=None, help="multi-process strategy")
    parser.add_argument("--grad-checkpointing", action="store_true", default=None)
    parser.add_argument("--init-checkpoint", default=None, help="start from these weights (any format)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, help="'auto' or a checkpoint path")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    add_overrides(parser)
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")


def build_train_config(args: argparse.Namespace) -> ClassificationConfig:
    """Preset (default ``internimage_t_1k_224``) or YAML, then named flags, then ``--set`` overrides."""
    if not args.config and not args.preset:
        args.preset = "internimage_t_1k_224"
    flags = {
        "model": args.model,
        "train_data": args.train_data,
        "val_data": args.val_data,
        "output": args.output,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "accum_steps": args.accum_steps,
        "amp": args.amp,
        "strategy": args.strategy,
        "grad_checkpointing": args.grad_checkpointing,
        "init_checkpoint": args.init_checkpoint,
        "resume": args.resume,
        "workers": args.workers,
        "device": args.device,
    }
    return resolve_config(ClassificationConfig, args, True, flags)


def _run_train(args: argparse.Namespace) -> int:
    import yaml

    cfg = build_train_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    trainer = Trainer(cfg, ClassificationTask(cfg))
    result = trainer.fit()
    if trainer.info is not None and trainer.info.is_main:
        print(json.dumps(result))
        if trainer.preempted:
            print(f"stopped by SIGTERM; resume with --resume auto --output {cfg.output}")
    from ..engine.distributed import cleanup_distributed

    cleanup_distributed()
    return 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="weights in any supported format")
    parser.add_argument("--model", default=None, help="model name (needed unless the checkpoint is ours)")
    parser.add_argument("--pretrained", action="store_true", help="official weights from the hub")
    parser.add_argument("--val-data", required=True, help="image folder, 'path label' list or iNaturalist json")
    parser.add_argument("--val-meta", help="iNaturalist *_locations.json (date / location of each photo)")
    parser.add_argument("--img-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="loader processes (default: 4, at most the cores)")
    parser.add_argument("--use-ema", action="store_true", help="EMA weights of a training checkpoint")
    parser.add_argument("--map22kto1k", action="store_true", help="evaluate a 22k model on ImageNet-1k labels")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _check_sizes(args: argparse.Namespace) -> None:
    """One line for sizes and counts that cannot be right (argparse only checks that they are integers)."""
    for flag in ("img_size", "batch_size", "topk"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "workers", None) is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")


def _require_weights(args: argparse.Namespace) -> None:
    """Results of an untrained model look like results: run one only when asked to."""
    if not args.checkpoint and not args.pretrained and not getattr(args, "random_weights", False):
        raise ValueError("pass --checkpoint FILE or --pretrained (--random-weights runs an untrained model)")


def _run_eval(args: argparse.Namespace) -> int:
    from ..data import SkipCollate, build_eval_transform
    from ..engine import EvalShardSampler, init_distributed

    if not args.checkpoint and not args.pretrained:
        raise ValueError("pass --checkpoint FILE or --pretrained")
    _check_sizes(args)
    info = init_distributed(args.device)
    model, meta = load_classifier(args.checkpoint, args.model, args.use_ema, args.pretrained)
    model.to(info.device)
    size = args.img_size or meta["img_size"]
    tf = build_eval_transform(size, mean=meta["mean"], std=meta["std"])
    dataset = build_val_dataset(args.val_data, tf, meta, args.map22kto1k, args.val_meta)
    classes = list(meta["classes"]) if not args.map22kto1k else [str(i) for i in range(IMAGENET_1K)]
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=EvalShardSampler(len(dataset), info.rank, info.world_size),
        num_workers=args.workers if args.workers is not None else min(4, os.cpu_count() or 1),
        collate_fn=SkipCollate(),
    )
    cfg = ClassificationConfig(map22kto1k=args.map22kto1k, num_classes=len(classes))
    metrics = ClassificationTask(cfg, classes=classes).evaluate(model, loader, info)
    if metrics["samples"] == 0:
        raise RuntimeError(f"none of the {len(dataset)} images of {args.val_data} could be read")
    if info.is_main:
        if args.json:
            print(json.dumps(metrics))
        else:
            print(
                f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
                f"({int(metrics['samples'])} images, {int(metrics['skipped'])} unreadable skipped)"
            )
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="images or folders")
    parser.add_argument("--checkpoint", default=None, help="weights in any supported format")
    parser.add_argument("--model", default=None, help="model name (needed unless the checkpoint is ours)")
    parser.add_argument("--pretrained", action="store_true", help="official weights from the hub")
    parser.add_argument("--random-weights", action="store_true", help="run an untrained model (no weights)")
    parser.add_argument("--use-ema", action="store_true")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def _run_predict(args: argparse.Namespace) -> int:
    from ..engine import init_distributed

    _require_weights(args)
    _check_sizes(args)
    info = init_distributed(args.device)
    model, meta = load_classifier(args.checkpoint, args.model, args.use_ema, args.pretrained)
    model.to(info.device)
    paths = collect_images(args.inputs, recursive=True)
    loader = image_loader(paths, meta, args.img_size, args.batch_size)
    results = predict(model, loader, paths, meta["classes"], args.topk, info.device)
    if not results:
        raise RuntimeError(f"none of the {len(paths)} images could be read")
    if args.json:
        for r in results:
            print(json.dumps(r))
        return 0
    width = max(len(r["image"]) for r in results) if results else 10
    for r in results:
        tops = "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["top"])
        print(f"{r['image']:<{width}}  {tops}")
    skipped = len(paths) - len(results)
    if skipped:
        print(f"{skipped} unreadable image(s) skipped")
    return 0


def _extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="images or folders")
    parser.add_argument("--checkpoint", default=None, help="weights in any supported format")
    parser.add_argument("--model", default=None, help="model name (needed unless the checkpoint is ours)")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--random-weights", action="store_true", help="run an untrained model (no weights)")
    parser.add_argument("--stages", default="0,1,2,3", help="comma-separated levels 0-3, and/or 'pooled'")
    add_output(parser, "folder (<relative path>_<stage>.npy files) or a .safetensors file", required=True)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_overwrite(parser)


def _run_extract(args: argparse.Namespace) -> int:
    from ..engine import init_distributed

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages or any(s != "pooled" and not s.isdigit() for s in stages):
        raise ValueError(f"--stages must list level numbers and/or 'pooled', got {args.stages!r}")
    _require_weights(args)
    _check_sizes(args)
    out = Path(args.output)
    if out.suffix != ".safetensors" and out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file, not a folder (or name a .safetensors file)")
    paths = collect_images(args.inputs, recursive=True)
    stems = dict(zip(map(str, paths), output_stems(paths)))
    keys = [s if s == "pooled" else f"stage{s}" for s in stages]
    targets = [out] if out.suffix == ".safetensors" else [
        out / stem.with_name(f"{stem.name}_{k}.npy") for stem in stems.values() for k in keys
    ]  # fmt: skip
    check_outputs(targets, paths, args.overwrite)  # before any work: nothing of the user's is replaced
    info = init_distributed(args.device)
    model, meta = load_classifier(args.checkpoint, args.model, False, args.pretrained)
    model.to(info.device)
    feats = extract_features(
        model, image_loader(paths, meta, args.img_size, args.batch_size), paths, stages, info.device
    )
    if not feats:
        raise RuntimeError(f"none of the {len(paths)} images could be read")
    n = save_features(feats, args.output, stems)
    if Path(args.output).suffix == ".safetensors":
        print(f"{len(feats)} images, {n} tensors -> {args.output}")
    else:
        print(f"{len(feats)} images, {n} .npy files -> {args.output}/")
    if len(paths) > len(feats):
        print(f"{len(paths) - len(feats)} unreadable image(s) skipped")
    return 0


COMMANDS = {
    "train": (_train_arguments, _run_train),
    "eval": (_eval_arguments, _run_eval),
    "predict": (_predict_arguments, _run_predict),
    "extract": (_extract_arguments, _run_extract),
}
