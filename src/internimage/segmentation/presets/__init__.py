"""Presets of the official segmentation recipes (ADE20K, Cityscapes, Mapillary, COCO-Stuff, NYU, Pascal Context),
named like the original configs.

Each preset module defines ``PRESET``, a dict of :class:`internimage.segmentation.SegmentationConfig` fields:
UperNet, 160k iterations, AdamW (wd 0.05), poly schedule (power 1, min lr 0) after 1500 linear warm-up iterations
from 1e-6 x lr, global batch 16 (8 GPUs x 2; H: 16 x 1). ``batch_size`` is per process, so set it to 16 / world
size on other machine counts. Backbones use ``layer_scale=1.0`` for T..XL, exactly like the official configs.

The street-scene UperNet / SegFormer configs (Cityscapes, Mapillary) keep mmseg's ADE20K ``num_classes=150`` in
their heads: only the 19 Cityscapes train ids are ever targets, but the released checkpoints carry 150-row
classifiers, so these presets keep 150 outputs (the official layout loads strictly) and name the 19 classes
(``classes``); evaluation scores a prediction among the other 131 outputs as a miss, as mmseg does. Their
Mask2Former configs use 19.
"""

from __future__ import annotations

from typing import Any

from ...engine.config import get_preset_in, list_presets_in

__all__ = ["MS_RATIOS", "UPERNET_ADE20K", "get_preset", "list_presets", "mask2former_h", "street", "upernet"]

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


# Cityscapes-layout data (mmseg ``CityscapesDataset``: train ids 0..18, 255 ignored, no zero-label reduction).
CITYSCAPES: dict[str, Any] = {"dataset": "cityscapes", "train_split": "train", "val_split": "val"}
# ``_base_/datasets/cityscapes_extra*.py``: fine ``train`` + ``train_extra`` with the refined coarse labels
# (``refinement_final/train_extra``), for the fine-tuning from Mapillary.
CITYSCAPES_EXTRA: dict[str, Any] = {**CITYSCAPES, "train_split": "train+train_extra"}
# Mapillary Vistas v1.2 (``training`` + ``validation`` images, classes merged into the 19 Cityscapes ones by the
# original ``MapillaryHack``), evaluated on Cityscapes ``val`` as the official configs do (``val_data_root``).
MAPILLARY: dict[str, Any] = {
    "dataset": "mapillary",
    "train_split": "training+validation",
    "val_dataset": "cityscapes",
    "val_split": "val",
}


def street(data: dict[str, Any], head: str, crop: tuple[int, int] = (512, 1024), **fields: Any) -> dict[str, Any]:
    """A Cityscapes / Mapillary preset: the ADE20K schedule + ``data`` + 2048x1024 scales + the head's widths.

    Args:
        data: ``CITYSCAPES``, ``CITYSCAPES_EXTRA`` or ``MAPILLARY``.
        head: ``upernet`` (512 wide + FCN auxiliary head 256), ``segformer`` (256 wide, no auxiliary head) or
            ``mask2former`` (pass its fields, see :func:`mask2former_h`).
        crop: (h, w) training crop; also the sliding-window size.
        **fields: The variant's fields (they win).
    """
    from ..data import CITYSCAPES_CLASSES

    h, w = crop
    preset = dict(UPERNET_ADE20K)
    preset.update(data, head=head, num_classes=150, reduce_zero_label=False, img_scale=[2048, 1024])
    preset.update(classes=list(CITYSCAPES_CLASSES))  # the 19 targets; the 150-output heads name no others
    preset.update(crop_size=[h, w], test_crop=[h, w], test_stride=[h * 2 // 3, w * 2 // 3])
    if head == "segformer":
        preset.update(decode_channels=256, aux_channels=0)
    preset.update(fields)
    return preset


def mask2former_h(wide: bool, **fields: Any) -> dict[str, Any]:
    """Mask2Former on InternImage-H: ``wide`` = the COCO-Stuff / ADE20K head (1024 wide, 200 queries, 32 heads, FFN
    4096), else the 256-wide head of the Mapillary / Cityscapes / NYU / Pascal Context configs (100 queries, 8 heads,
    FFN 1024 in the pixel decoder and 2048 in the transformer decoder). 80k iterations, lr decay 0.95, evaluation
    every 2000; ``fields`` (data, crop, lr, ...) win."""
    preset = {
        "head": "mask2former",
        "model": "internimage_h_jointto22k_384",
        "drop_path_rate": 0.5,
        "layer_scale": None,
        "aux_channels": 0,
        "enc_layers": 6,
        "dec_layers": 9,
        "layer_decay": 0.95,
        "iters": 80000,
        "eval_every": 2000,
    }
    if wide:
        preset.update(decode_channels=1024, num_queries=200, attn_heads=32, ffn_channels=4096, dec_ffn_channels=4096)
    else:
        preset.update(decode_channels=256, num_queries=100, attn_heads=8, ffn_channels=1024, dec_ffn_channels=2048)
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
