"""Classification config and the presets named after the official configs (``ORIGINAL.md`` §3.1).

Presets are YAML files shipped next to this module (``<name>.yaml``); :func:`load_preset` reads one into a
:class:`ClassificationConfig`, and any field can then be overridden (``apply_overrides``). The learning rates are
given for a global batch of ``lr_base_batch`` = 512 and scaled linearly, as the original does: at its global
batch of 4096 the from-scratch lr becomes 4e-3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..engine.config import TrainConfig, load_config

__all__ = ["ClassificationConfig", "list_presets", "load_preset", "preset_task"]


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


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def load_preset(name: str) -> ClassificationConfig:
    """The :class:`ClassificationConfig` of a preset (e.g. ``'internimage_t_1k_224'``)."""
    names = list_presets()
    if name not in names:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(names)}")
    with resources.as_file(resources.files(__name__) / f"{name}.yaml") as path:
        return load_config(ClassificationConfig, path)


def preset_task(name: str) -> str | None:
    """The task of a preset of any task (``classification``, ``detection``, ``segmentation``), None if unknown."""
    from . import detection, segmentation

    for task, names in (
        ("classification", list_presets()),
        ("detection", detection.list_presets()),
        ("segmentation", segmentation.list_presets()),
    ):
        if name in names:
            return task
    return None
