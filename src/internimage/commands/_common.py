"""Glue shared by the commands: the ``--device`` choice, common options, output names, writing PNGs."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write


def resolve_device(name: str) -> torch.device:
    """``--device auto|cpu|cuda`` -> a device; ``cuda`` without CUDA is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    return torch.device(name)


def save_png(image: Any, path: Path) -> None:
    """Save a PIL image as PNG, atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE ...``, repeatable: every occurrence adds to the list (``--set a=1 --set b=2`` keeps both)."""
    parser.add_argument(
        "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="override any config field"
    )


def add_output(parser: argparse.ArgumentParser, text: str, **kwargs: Any) -> None:
    """``--output`` (``--out`` and ``-o`` are accepted as hidden aliases of the same option)."""
    parser.add_argument("--output", help=text, **kwargs)
    parser.add_argument("--out", "-o", dest="output", help=argparse.SUPPRESS)


def output_stems(paths: list[Path]) -> list[Path]:
    """Distinct output names for input images: their paths below the inputs' common folder, without suffix.

    ``a/x.jpg``, ``b/x.jpg`` and ``x.png`` give ``a/x``, ``b/x`` and ``x``; two images that differ only by suffix
    (``x.jpg``, ``x.png``) keep it in the name (``x_jpg``, ``x_png``), so no output of a run overwrites another.

    Raises:
        ValueError: the same image given twice.
    """
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        dup = next(p for p, r in zip(paths, resolved) if resolved.count(r) > 1)
        raise ValueError(f"image given twice: {dup}")
    root = Path(os.path.commonpath([r.parent for r in resolved])) if resolved else Path()
    stems = [r.relative_to(root).with_suffix("") for r in resolved]
    clash = {s for s in stems if stems.count(s) > 1}
    return [s.with_name(f"{s.name}_{r.suffix.lstrip('.')}") if s in clash else s for s, r in zip(stems, resolved)]


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: let a command replace output files that already exist (never a file it reads)."""
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (an input is never overwritten)"
    )


def check_outputs(targets: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, outputs that would replace an input or (without ``--overwrite``) a file.

    Args:
        targets: Every file the command is about to write.
        inputs: Every file the command reads (images, checkpoints, annotation files).
        overwrite: ``--overwrite`` was given.

    Raises:
        ValueError: an output is one of the inputs (whatever ``overwrite`` says), or two outputs are one file.
        FileExistsError: an output exists and ``overwrite`` is false.
    """
    read = {p.resolve() for p in inputs}
    seen: set[Path] = set()
    for target in targets:
        resolved = target.resolve()
        if resolved in read:
            raise ValueError(f"output {target} is one of the inputs; choose another --output")
        if resolved in seen:
            raise ValueError(f"two outputs would be written to {target}")
        seen.add(resolved)
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more output file(s))" if len(existing) > 1 else ""
        raise FileExistsError(f"output {existing[0]} already exists{more}; pass --overwrite to replace it")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) and ``--print-config``; bare ``key=value`` words are still read as ``--set``."""
    add_overrides(parser)
    parser.add_argument("items", nargs="*", metavar="key=value", help=argparse.SUPPRESS)
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of a command line, in order (bare words first, then ``--set``)."""
    return [*(getattr(args, "items", None) or []), *(getattr(args, "set", None) or [])]


def resolve_config(config_cls: Any, args: argparse.Namespace, train: bool, flags: dict[str, Any]) -> Any:
    """The one resolution order of every command: defaults <- ``--preset`` <- ``--config`` file <- the fields stored
    with ``--checkpoint`` (eval / predict) <- command-line flags (None = not given) <- ``--set key=value``.

    Args:
        config_cls: The task's config class (a :class:`~internimage.engine.config.TaskConfig`).
        args: Parsed arguments (``preset``, ``config``, ``checkpoint``, ``set`` where the command has them).
        train: Training ignores the checkpoint's stored fields (``--pretrained`` is weights only).
        flags: Config fields given by dedicated flags.

    Returns:
        The validated config.
    """
    from ..engine.config import apply_overrides, checkpoint_fields, load_config

    cfg = config_cls()
    if getattr(args, "preset", None):
        cfg = apply_overrides(cfg, config_cls.preset_fields(args.preset))
    if getattr(args, "config", None):
        cfg = load_config(config_cls, args.config)
    if not train and getattr(args, "checkpoint", None):
        cfg = apply_overrides(cfg, checkpoint_fields(args.checkpoint, config_cls.meta_key, config_cls))
    cfg = apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})
    cfg = apply_overrides(cfg, overrides(args))
    cfg.validate()
    return cfg


def print_config(cfg: Any) -> None:
    """The effective config as YAML on stdout."""
    import yaml

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")  # noqa: T201


def train_and_report(cfg: Any, task: Any) -> int:
    """Run the engine on ``task`` and print one summary per run (rank 0 only under ``torchrun``)."""
    from ..engine import Trainer

    result = Trainer(cfg, task).fit()
    if int(os.environ.get("RANK", "0")) == 0:
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        print(f"done: {shown}")  # noqa: T201
        print(f"weights: {Path(cfg.output) / 'model.safetensors'}")  # noqa: T201
    return 0
