"""Presets of the official COCO detection recipes, named like the original mmdet configs.

Each preset module defines ``PRESET``, a dict of :class:`internimage.detection.DetectionConfig` fields.
Shared by all: AdamW (wd 0.05, no decay on 1-D / bias / ``norm`` parameters), step schedule after 500 linear
warm-up iterations (ratio 0.001), global batch 16 (8 GPUs x 2; ``batch_size`` is per process, so set it to
16 / world size elsewhere), no gradient clipping, COCO 2017 layout, ``layer_scale=1.0`` backbones as in every
official detection config. 1x = 12 epochs (lr x0.1 at 8 and 11) at 1333x800 + flip; 3x = 36 epochs (27, 33) with
the multi-scale 480-800 + crop AutoAugment pipeline.
"""

from __future__ import annotations

from typing import Any

from ...engine.config import get_preset_in, list_presets_in

__all__ = ["get_preset", "list_presets", "mask_rcnn", "cascade"]

COCO: dict[str, Any] = {
    "num_classes": 80,
    "train_ann": "annotations/instances_train2017.json",
    "train_images": "train2017",
    "val_ann": "annotations/instances_val2017.json",
    "val_images": "val2017",
    "img_scale": [1333, 800],
    "batch_size": 2,
    "lr_base_batch": 0,
    "optimizer": "adamw",
    "weight_decay": 0.05,
    "betas": [0.9, 0.999],
    "sched": "step",
    "decay_rate": 0.1,
    "warmup_iters": 500,
    "warmup_ratio": 0.001,
    "warmup_lr": None,
    "min_lr": 0.0,
    "clip_grad": None,
    "layer_decay_rule": "detection",
    "layer_scale": 1.0,
    "eval_every": 1,
}

_SCHEDULES = {"1x": dict(epochs=12, decay_milestones=[8, 11]), "3x": dict(epochs=36, decay_milestones=[27, 33])}


def mask_rcnn(schedule: str, **fields: Any) -> dict[str, Any]:
    """A Mask R-CNN COCO preset (lr 1e-4, no layer decay)."""
    preset = dict(COCO, arch="mask_rcnn", recipe=schedule, lr=1e-4, layer_decay=1.0, **_SCHEDULES[schedule])
    preset.update(fields)
    return preset


def cascade(schedule: str, **fields: Any) -> dict[str, Any]:
    """A Cascade Mask R-CNN COCO preset (4conv1fc BN heads with GIoU, as the official L/XL configs)."""
    preset = dict(COCO, arch="cascade_mask_rcnn", recipe=schedule, **_SCHEDULES[schedule])
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
