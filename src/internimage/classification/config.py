"""The classification training config and its presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engine.config import TaskConfig, TrainConfig

__all__ = ["META_KEY", "ClassificationConfig", "list_presets", "load_preset"]

#: safetensors metadata key of the model fields a classification run stores (see ``ClassificationTask``).
META_KEY = "classification_config"


@dataclass
class ClassificationConfig(TaskConfig, TrainConfig):
    """:class:`~internimage.engine.config.TrainConfig` plus the classification fields (presets: :mod:`.presets`).

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
        train_meta, val_meta: iNaturalist ``*_locations.json`` files: the date / location inputs of a model with meta
            branches (``model_kwargs.meta_dim``, the iNat18 preset); empty = none (the branches then see zeros).
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

    meta_key: ClassVar[str] = META_KEY
    presets_package: ClassVar[str] = "internimage.classification.presets"
    model: str = "internimage_t_1k_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float | None = None
    pretrained: bool = False
    init_checkpoint: str = ""
    num_classes: int = 0
    img_size: int = 224
    train_data: str = ""
    val_data: str = ""
    train_meta: str = ""
    val_meta: str = ""
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

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field (the engine's fields first)."""
        super().validate()
        if self.img_size <= 0:
            raise ValueError(f"img_size must be > 0, got {self.img_size}")
        if self.drop_path_rate is not None and not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {list(self.std)}")
        chans = self.input_channels()
        if chans is not None and len(self.mean) != chans:
            raise ValueError(f"mean and std have {len(self.mean)} values but the input has {chans} channel(s)")

    def input_channels(self) -> int | None:
        """Input channels where the config states them: ``model_kwargs['in_chans']``, else the PIL image mode."""
        if isinstance(self.model_kwargs.get("in_chans"), int):
            return self.model_kwargs["in_chans"]
        return {"L": 1, "RGB": 3}.get(self.image_mode)


def list_presets() -> list[str]:
    """Names of the shipped classification presets (the official ``classification/configs``)."""
    return ClassificationConfig.list_presets()


def load_preset(name: str) -> ClassificationConfig:
    """The :class:`ClassificationConfig` of a classification preset (e.g. ``'internimage_t_1k_224'``)."""
    return ClassificationConfig.from_preset(name)
