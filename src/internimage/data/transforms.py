"""Train / eval transforms of the official classification recipe, built with timm (``classification/dataset/build.py``).

Train: RandomResizedCrop (bicubic) -> flip -> RandAugment -> ToTensor -> Normalize -> RandomErasing.
Eval: resize to ``img_size`` then centre crop (crop ratio 1.0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["build_eval_transform", "build_train_transform", "hsv_to_rgb", "rgb_to_hsv"]


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


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float RGB -> HSV with H in [0, 1), S = (max - min) / max (0 where max is 0), V = max (input scale).

    The float convention of OpenCV's ``cvtColor`` (what mmcv's ``bgr2hsv`` runs), hue as a fraction of a turn; values
    need not lie in [0, 255] (the multi-view distortion does not clip).
    """
    r, g, b = img
    v = img.max(0).values
    c = v - img.min(0).values
    s = torch.where(v != 0, c / torch.where(v != 0, v, torch.ones_like(v)), torch.zeros_like(v))
    cz = c.clamp(min=1e-6)
    h = torch.where(v == r, ((g - b) / cz) % 6, torch.where(v == g, (b - r) / cz + 2, (r - g) / cz + 4))
    h = torch.where(c > 0, h / 6.0, torch.zeros_like(h))
    return torch.stack([h % 1.0, s, v])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: (3, H, W) HSV (H in turns) -> RGB."""
    h, s, v = hsv
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6])
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
