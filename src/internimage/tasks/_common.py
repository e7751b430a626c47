"""Glue shared by the detection and segmentation commands: device choice, atomic writes, checkpoint metadata."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..engine.config import load_config


def resolve_device(name: str) -> torch.device:
    """``--device auto|cpu|cuda`` -> a device; ``cuda`` without CUDA is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    return torch.device(name)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_png(image: Any, path: Path) -> None:
    """Save a PIL image as PNG, atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def checkpoint_fields(path: str, meta_key: str, config_cls: Any) -> dict[str, Any]:
    """Model fields stored with a checkpoint: safetensors metadata (our exports) or a training run's config.

    Args:
        path: Checkpoint file.
        meta_key: safetensors metadata key holding the JSON model fields.
        config_cls: Training config class whose ``model_fields()`` a run's ``config.yaml`` yields.

    Returns:
        The fields found (empty if the checkpoint carries none).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta[meta_key]) if meta_key in meta else {}
    run_config = p.parent.parent / "config.yaml"  # engine layout: <run>/checkpoints/step_N.pth
    if run_config.is_file():
        return load_config(config_cls, run_config).model_fields()
    return {}
