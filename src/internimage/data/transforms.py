"""Train / eval transforms of the official classification recipe, built with timm (``classification/dataset/build.py``).

Train: RandomResizedCrop (bicubic) -> flip -> RandAugment -> ToTensor -> Normalize -> RandomErasing.
Eval: resize to ``img_size`` then centre crop (crop ratio 1.0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["build_eval_transform", "build_train_transform"]


def build_train_transform(
    img_size: int,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.4,
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Callable[[Any], torch.Tensor]:
    """timm training transform (PIL image -> normalised tensor)."""
    from timm.data import create_transform

    return create_transform(
        img_size,
        is_training=True,
        auto_augment=auto_augment or None,
        color_jitter=color_jitter,
        re_prob=re_prob,
        re_mode="pixel",
        re_count=1,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )


def build_eval_transform(
    img_size: int,
    interpolation: str = "bicubic",
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    crop_pct: float = 1.0,
) -> Callable[[Any], torch.Tensor]:
    """Resize + centre crop (``crop_pct`` 1.0 as in the original) -> normalised tensor."""
    from timm.data import create_transform

    return create_transform(
        img_size, is_training=False, interpolation=interpolation, mean=tuple(mean), std=tuple(std), crop_pct=crop_pct
    )
