"""Presets of the official ADE20K segmentation recipes, named like the original configs.

Each preset module defines ``PRESET``, a dict of :class:`internimage.segmentation.SegmentationConfig` fields:
UperNet, 160k iterations, AdamW (wd 0.05), poly schedule (power 1, min lr 0) after 1500 linear warm-up iterations
from 1e-6 x lr, global batch 16 (8 GPUs x 2; H: 16 x 1). ``batch_size`` is per process, so set it to 16 / world
size on other machine counts. Backbones use ``layer_scale=1.0`` for T..XL, exactly like the official configs.
"""

from __future__ import annotations

from typing import Any

from ...engine.config import get_preset_in, list_presets_in

__all__ = ["get_preset", "list_presets"]

# Shared by every UperNet ADE20K preset (mmseg's _base_ ade20k dataset, upernet model and 160k schedule).
UPERNET_ADE20K: dict[str, Any] = {
    "head": "upernet",
    "dataset": "ade20k",
    "train_split": "training",
    "val_split": "validation",
    "num_classes": 150,
    "reduce_zero_label": True,
    "ratio_range": [0.5, 2.0],
    "cat_max_ratio": 0.75,
    "decode_channels": 512,
    "aux_channels": 256,
    "aux_weight": 0.4,
    "test_mode": "whole",
    "test_ratios": [1.0],
    "test_flip": False,
    "iters": 160000,
    "batch_size": 2,
    "lr_base_batch": 0,
    "min_lr": 0.0,
    "warmup_lr": None,
    "warmup_ratio": 1e-6,
    "warmup_iters": 1500,
    "sched": "poly",
    "poly_power": 1.0,
    "optimizer": "adamw",
    "weight_decay": 0.05,
    "betas": [0.9, 0.999],
    "layer_decay_rule": "segmentation",
    "clip_grad": None,
    "eval_every": 16000,
    "ckpt_every": 1000,
    "keep_last": 1,
}

# The official multi-scale test ("MS" column of the README).
MS_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def upernet(crop: int, **fields: Any) -> dict[str, Any]:
    """A UperNet ADE20K preset: ``UPERNET_ADE20K`` + crop-dependent scales + the variant's ``fields``."""
    preset = dict(UPERNET_ADE20K)
    preset.update(crop_size=[crop, crop], img_scale=[4 * crop, crop], test_crop=[crop, crop])
    preset.update(test_stride=[crop * 2 // 3, crop * 2 // 3])
    preset.update(fields)
    return preset


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return list_presets_in(__name__)


def get_preset(name: str) -> dict[str, Any]:
    """The preset dict (a copy) of ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    return get_preset_in(__name__, name)
