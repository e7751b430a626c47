"""Presets of the official ImageNet classification recipes, named like the official ``classification/configs``.

Each preset module defines ``PRESET``, a dict of :class:`~internimage.classification.ClassificationConfig` fields,
the same format as the detection and segmentation presets. Learning rates are given for a global batch of
``lr_base_batch`` = 512 and scaled linearly, as the original does: at its global batch of 4096 the from-scratch lr
becomes 4e-3.
"""

from __future__ import annotations

from typing import Any

from ...engine.config import get_preset_in, list_presets_in

__all__ = ["IMAGENET", "finetune_22k", "from_scratch", "get_preset", "list_presets"]

# Shared by every official classification config (AdamW, cosine schedule, EMA, RandAugment, gradient clip 5).
IMAGENET: dict[str, Any] = {
    "train_data": "",
    "val_data": "",
    "accum_steps": 1,
    "lr_base_batch": 512,
    "warmup_lr": 5e-07,
    "min_lr": 5e-06,
    "sched": "cosine",
    "optimizer": "adamw",
    "betas": [0.9, 0.999],
    "eps": 1e-08,
    "weight_decay": 0.05,
    "clip_grad": 5.0,
    "interpolation": "bicubic",
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "color_jitter": 0.4,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "ema": True,
    "ema_decay": 0.9999,
    "amp": "none",
}


def from_scratch(model: str, drop_path_rate: float) -> dict[str, Any]:
    """ImageNet-1k from scratch at 224: 300 epochs (20 warm-up), lr 5e-4 per 512, Mixup/CutMix, label smoothing 0.1."""
    return dict(
        IMAGENET, model=model, img_size=224, drop_path_rate=drop_path_rate, epochs=300, warmup_epochs=20,
        batch_size=128, lr=5e-4, layer_decay=1.0, offset_lr_mul=1.0, label_smoothing=0.1, reprob=0.25, mixup=0.8,
        cutmix=1.0, grad_checkpointing=False, output=f"runs/{model}",
    )  # fmt: skip


def finetune_22k(model: str, img_size: int, drop_path_rate: float) -> dict[str, Any]:
    """ImageNet-22k -> 1k fine-tuning: 20 epochs (2 warm-up), lr 2e-5 per 512, layer decay 0.9, DCN lr x0.1."""
    return dict(
        IMAGENET, model=model, img_size=img_size, drop_path_rate=drop_path_rate, epochs=20, warmup_epochs=2,
        batch_size=64, lr=2e-5, layer_decay=0.9, offset_lr_mul=0.1, label_smoothing=0.3, reprob=0.0, mixup=0.0,
        cutmix=0.0, grad_checkpointing=True, output=f"runs/{model}",
    )  # fmt: skip


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return list_presets_in(__name__)


def get_preset(name: str) -> dict[str, Any]:
    """The preset dict (a copy) of ``name``, e.g. ``'internimage_t_1k_224'``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return get_preset_in(__name__, name)
