"""Presets of the official occupancy configs (``autonomous_driving/occupancy_prediction/projects/configs/bevformer``).

Each preset module defines ``PRESET``, a dict of :class:`internimage.occupancy.OccupancyConfig` fields, and ``NAME``
(the config's file name, which is not a Python identifier).
"""

from __future__ import annotations

from typing import Any

from ...engine.config import get_preset_in, list_presets_in

__all__ = ["get_preset", "list_presets"]


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return list_presets_in(__name__)


def get_preset(name: str) -> dict[str, Any]:
    """The preset dict (a copy) of ``name``."""
    return get_preset_in(__name__, name)
