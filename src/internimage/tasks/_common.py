"""Glue shared by the commands: the ``--device`` choice and writing PNGs."""

from __future__ import annotations

import io
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
