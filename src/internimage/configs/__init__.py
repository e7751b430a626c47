"""Training configs and the presets of every task, in one format.

A preset is a Python module ``internimage/configs/<task>/<name>.py`` that defines ``PRESET``, a dict of fields of
the task's config class (:class:`ClassificationConfig`, :class:`internimage.detection.DetTrainConfig`,
:class:`internimage.segmentation.SegTrainConfig`), named after the official config. :func:`get_preset` finds a
preset of any task, :func:`preset_task` tells its task (``internimage train --preset NAME`` needs no ``--task``),
:func:`load_preset` gives a classification preset as a :class:`ClassificationConfig`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..engine.config import TrainConfig, apply_overrides

__all__ = ["TASKS", "ClassificationConfig", "TaskConfig", "get_preset", "list_presets", "load_preset", "preset_task"]

TASKS = ("classification", "detection", "segmentation")


@dataclass
class ClassificationConfig(TrainConfig):
    """:class:`~internimage.engine.config.TrainConfig` plus the classification fields.

    Attributes:
        model: Registered model name (``internimage.list_models()``).
        model_kwargs: Architecture overrides passed to ``create_model`` (e.g. ``in_chans``, ``channels``).
        drop_path_rate: Stochastic depth (None: the model's default).
        pretrained: Start from the official weights (hub; needs network or cache).
        init_checkpoint: Start from this checkpoint (any supported format); a head of another size is dropped.
        num_classes: Classifier size (0: number of classes of the training data).
        img_size: Training / evaluation resolution.
        train_data: Image folder (``root/<class>/<img>``) or ``path label`` list file.
        val_data: Same, for evaluation.
        data_root: Root that relative paths of list files are resolved against (default: the list's folder).
        image_mode: PIL mode (``RGB`` or ``L`` for one channel).
        mean: Normalisation mean.
        std: Normalisation std.
        interpolation: Resize interpolation.
        auto_augment: timm RandAugment spec ('' = off).
        color_jitter: Colour jitter strength (used when RandAugment is off).
        reprob: Random erasing probability.
        mixup: Mixup alpha (0 = off).
        cutmix: CutMix alpha (0 = off).
        mixup_prob: Probability of applying mixup/cutmix to a batch.
        mixup_switch_prob: Probability of CutMix instead of Mixup when both are on.
        label_smoothing: Label smoothing.
        map22kto1k: Evaluate a 21841-class model on 1000 ImageNet-1k classes (logits of the 1k synsets).
    """

    model: str = "internimage_t_1k_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float | None = None
    pretrained: bool = False
    init_checkpoint: str = ""
    num_classes: int = 0
    img_size: int = 224
    train_data: str = ""
    val_data: str = ""
    data_root: str = ""
    image_mode: str = "RGB"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    map22kto1k: bool = False


def list_presets(task: str = "classification") -> list[str]:
    """Names of the shipped presets of ``task``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return importlib.import_module(f"{__name__}.{task}").list_presets()


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
    return importlib.import_module(f"{__name__}.{task}").get_preset(name)


def load_preset(name: str) -> ClassificationConfig:
    """The :class:`ClassificationConfig` of a classification preset (e.g. ``'internimage_t_1k_224'``)."""
    from .classification import get_preset as get_classification_preset

    return apply_overrides(ClassificationConfig(), get_classification_preset(name))


T = TypeVar("T", bound="TaskConfig")


class TaskConfig:
    """``from_preset`` / ``from_checkpoint`` for a task's :class:`TrainConfig` subclass (mixed in before it).

    The subclass sets ``meta_key``: the safetensors metadata key its :class:`~internimage.engine.Task` stores the
    model fields under.
    """

    meta_key: ClassVar[str] = ""

    @classmethod
    def from_preset(cls: type[T], name: str, **overrides: Any) -> T:
        """The official recipe ``name`` (see :func:`list_presets`) plus ``overrides``, validated."""
        cfg = apply_overrides(apply_overrides(cls(), get_preset(name)), overrides)
        cfg.validate()
        return cfg

    @classmethod
    def from_checkpoint(cls: type[T], path: str | Path, **overrides: Any) -> T:
        """The model fields stored with ``path`` (our ``model.safetensors`` or a run checkpoint) plus ``overrides``."""
        from ..engine.task import checkpoint_fields

        cfg = apply_overrides(apply_overrides(cls(), checkpoint_fields(str(path), cls.meta_key, cls)), overrides)
        cfg.validate()
        return cfg
