"""Shared fields of the official DINO-4scale presets (``detection/configs/coco/dino_4scale_*``).

T/L (``*_1x_coco_layer_wise_lr``): AdamW lr 1e-4, weight decay 1e-4, layer-wise lr decay 0.9 over the backbone
blocks, gradient clipping at norm 0.1, 12 epochs with lr x0.1 after epoch 11, 500 warm-up iterations, the DETR
multi-scale + crop AutoAugment pipeline (recipe ``dino``: its crop branch resizes to a long side of 4200 and
rejects crops without objects), global batch 16.
H/G/CB-H (``*_objects365_coco_ss``): fine-tuning from Objects365 detectors (their ``load_from`` weights, given as
``pretrained``), layer decay 0.94 (none on CB-H's composite backbone, whose names the original's rule does not
match), sampling-offset lr x1e-3, ``num_dn_queries=1000``, ``max_per_img=300``, batch 1 per GPU, 20000 iterations
at constant lr after warm-up (evaluated every 200), trained at a random short side of 600-1800 (long side 2000,
recipe ``dino_ss``) and tested at (2000, 1000).
"""

from __future__ import annotations

from typing import Any

from . import COCO

__all__ = ["dino"]


def dino(model: str, **fields: Any) -> dict[str, Any]:
    """A DINO-4scale COCO preset on ``model`` (T/L recipe unless ``fields`` say otherwise)."""
    preset = dict(
        COCO,
        arch="dino",
        model=model,
        recipe="dino",
        epochs=12,
        decay_milestones=[11],
        lr=1e-4,
        weight_decay=1e-4,
        clip_grad=0.1,
        layer_decay=0.9,
    )
    preset.update(fields)
    return preset


def objects365_to_coco(model: str, arch: str = "dino", **fields: Any) -> dict[str, Any]:
    """The ``*_objects365_coco_ss`` fine-tuning presets (H, G, CB-H)."""
    kwargs = dict(num_dn_queries=1000, max_per_img=300)
    return dino(
        model,
        arch=arch,
        recipe="dino_ss",
        img_scale=[2000, 1000],
        batch_size=1,
        iters=20000,  # IterBasedRunner(max_iters=20000), evaluated every 200 iterations
        eval_every=200,
        decay_milestones=[],
        layer_decay=0.94,
        offset_lr_mul=1e-3,  # the configs' offset_lr_scale: DINO's sampling_offsets train at 1e-3 of the lr
        drop_path_rate=0.5,
        layer_scale=None,
        model_kwargs=kwargs,
        **fields,
    )
