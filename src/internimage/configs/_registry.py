"""Finding the preset modules of a task package (``configs/<task>/<name>.py`` defining ``PRESET``)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def list_in(package: str) -> list[str]:
    """Names of the preset modules of ``package`` (e.g. ``internimage.configs.detection``)."""
    path = importlib.import_module(package).__path__
    return sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))


def get_in(package: str, name: str, label: str = "") -> dict[str, Any]:
    """The ``PRESET`` dict (a copy) of ``package.name``.

    Raises:
        ValueError: unknown name (the message, ``unknown <label> preset``, lists the known ones).
    """
    names = list_in(package)
    if name not in names:
        raise ValueError(f"unknown {label + ' ' if label else ''}preset {name!r}; known: {', '.join(names)}")
    return dict(importlib.import_module(f"{package}.{name}").PRESET)
