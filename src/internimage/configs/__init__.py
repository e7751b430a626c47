"""Training configs and the presets of every task, in one format.

A preset is a Python module ``internimage/configs/<task>/<name>.py`` that defines ``PRESET``, a dict of fields of
the task's config class (:class:`ClassificationConfig`, :class:`internimage.detection.DetTrainConfig`,
:class:`internimage.segmentation.SegTrainConfig`), named after the official config. :func:`get_preset` finds a
preset of any task, :func:`preset_task` tells its task (``internimage train --preset NAME`` needs no ``--task``),
:func:`load_preset` gives a classification preset as a :class:`ClassificationConfig`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..engine.config import TaskConfig as EngineTaskConfig

__all__ = ["TASKS", "TaskConfig", "get_preset", "list_presets", "preset_task"]

TASKS = ("classification", "detection", "segmentation")


def list_presets(task: str = "classification") -> list[str]:
    """Names of the shipped presets of ``task``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    package = "internimage.classification.presets" if task == "classification" else f"{__name__}.{task}"
    return importlib.import_module(package).list_presets()


def preset_task(name: str) -> str | None:
    """The task of a preset of any task (``classification``, ``detection``, ``segmentation``), None if unknown."""
    return next((task for task in TASKS if name in list_presets(task)), None)


def get_preset(name: str) -> dict[str, Any]:
    """The fields (a copy) of the preset ``name`` of any task.

    Raises:
        ValueError: unknown name.
    """
    task = preset_task(name)
    if task is None:
        known = ", ".join(n for t in TASKS for n in list_presets(t))
        raise ValueError(f"unknown preset {name!r}; known presets: {known}")
    package = "internimage.classification.presets" if task == "classification" else f"{__name__}.{task}"
    return importlib.import_module(package).get_preset(name)


class TaskConfig(EngineTaskConfig):
    """Detection and segmentation configs: presets found by name in this package (until they move to their task)."""

    @classmethod
    def preset_fields(cls, name: str) -> dict[str, Any]:
        return get_preset(name)
