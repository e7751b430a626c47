"""Presets of the official ImageNet classification recipes, named like the official ``classification/configs``.

Each preset module defines ``PRESET``, a dict of :class:`internimage.configs.ClassificationConfig` fields, the same
format as the detection and segmentation presets. Learning rates are given for a global batch of
``lr_base_batch`` = 512 and scaled linearly, as the original does: at its global batch of 4096 the from-scratch lr
becomes 4e-3.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__all__ = ["get_preset", "list_presets"]


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_preset(name: str) -> dict[str, Any]:
    """The preset dict (a copy) of ``name``, e.g. ``'internimage_t_1k_224'``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in list_presets():
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return dict(importlib.import_module(f"{__name__}.{name}").PRESET)
