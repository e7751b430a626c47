"""Presets of the official occupancy configs (``autonomous_driving/occupancy_prediction/projects/configs/bevformer``).

Each preset module defines ``PRESET``, a dict of :class:`internimage.occupancy.OccupancyConfig` fields, and ``NAME``
(the config's file name, which is not a Python identifier).
"""

from __future__ import annotations

from typing import Any

from ...engine.config import get_preset_in, list_presets_in

__all__ = ["OCC3D", "RESNET_CAFFE", "get_preset", "list_presets"]

#: What every official occupancy config shares: Occ3D-nuScenes (18 classes, the +-40 m x [-1, 5.4] m volume, CE
#: over all voxels), the trainval split, a temporal queue of 4, photometric distortion, and the schedule (AdamW lr
#: 2e-4, cosine to 1e-3 x lr after 500 linear warm-up iterations from lr / 3, grad clip 35, 24 epochs at 1 sample
#: per GPU, evaluation every epoch).
OCC3D: dict[str, Any] = {
    "num_classes": 18,
    "pc_range": [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4],
    "use_mask": False,
    "version": "v1.0-trainval",
    "train_scenes": "train",
    "val_scenes": "val",
    "queue_length": 4,
    "photometric": True,
    "epochs": 24,
    "batch_size": 1,
    "lr": 2e-4,
    "lr_base_batch": 0,
    "min_lr": 2e-7,
    "warmup_iters": 500,
    "warmup_ratio": 1.0 / 3,
    "sched": "cosine",
    "optimizer": "adamw",
    "clip_grad": 35.0,
    "eval_every": 1,
}

#: The ResNet configs (base, small): mmdet's caffe-style ResNet with DCNv2 in stages 3-4, stem and stage 1 frozen,
#: BatchNorm frozen in eval mode; caffe normalisation (BGR, mean (103.53, 116.28, 123.675), std 1); mmcv's default
#: optimizer constructor (weight decay 0.01 on every parameter) with the backbone's lr x 0.1.
RESNET_CAFFE: dict[str, Any] = {
    "backbone_overrides": {
        "style": "caffe",
        "frozen_stages": 1,
        "norm_eval": True,
        "norm_requires_grad": False,
        "stage_with_dcn": [False, False, True, True],
        "deform_groups": 1,
    },
    "img_mean": [103.530, 116.280, 123.675],
    "img_std": [1.0, 1.0, 1.0],
    "to_rgb": False,
    "weight_decay": 0.01,
    "layer_decay": 1.0,
    "layer_decay_rule": "mmcv_default",
    "backbone_lr_mult": 0.1,
}


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return list_presets_in(__name__)


def get_preset(name: str) -> dict[str, Any]:
    """The preset dict (a copy) of ``name``."""
    return get_preset_in(__name__, name)
