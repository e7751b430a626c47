"""Instance detection and segmentation with InternImage-FPN: Mask R-CNN and Cascade Mask R-CNN; DINO (:mod:`.dino`).

Built on torchvision's detection components (mmdet/mmcv do not install with current torch): the one
:class:`~internimage.models.internimage.InternImage` class is the backbone (read through ``forward_intermediates``),
torchvision's FPN (with ``LastLevelMaxPool``), RPN and ``MaskRCNN`` heads, and a Cascade head written on torchvision
ops. Where official weights depend on it the numerics are mmdet 2.x's (anchors, box coder, RoI levels and sampling,
matching, Cascade's per-class refinement, mask pasting), so official mmdet checkpoints, loaded through
:func:`load_detector_weights` / :func:`load_mmdet_detector`, give the official predictions.

Modules are laid out as torchvision's ``models/detection``: :mod:`.generalized_rcnn` (the detector both two-stage
models are, and its forward), :mod:`.backbone`, :mod:`.transform`, :mod:`.anchor_utils`, :mod:`.box_coding` (box
coder and matcher), :mod:`.rpn`, :mod:`.poolers`, :mod:`.roi_heads` (Mask R-CNN's) and :mod:`.cascade_roi_heads`;
:mod:`.mask_rcnn` and :mod:`.cascade` build the two detectors.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...models.checkpoint.mmdet import MappedState, load_detector_weights, load_mmdet_detector, map_mmdet_state_dict
from .backbone import InternImageFPN, build_internimage_body
from .cascade import InternImageCascadeMaskRCNN, build_cascade_mask_rcnn
from .cascade_roi_heads import CascadeRoIHeads
from .dino import InternImageDINO, build_cb_dino, build_dino
from .generalized_rcnn import InternImageRCNN
from .mask_rcnn import InternImageMaskRCNN, build_mask_rcnn
from .poolers import LevelRoIAlign
from .transform import PassThroughTransform

__all__ = [
    "ARCHITECTURES",
    "CascadeRoIHeads",
    "InternImageCascadeMaskRCNN",
    "InternImageDINO",
    "InternImageFPN",
    "InternImageMaskRCNN",
    "InternImageRCNN",
    "LevelRoIAlign",
    "MappedState",
    "PassThroughTransform",
    "build_cascade_mask_rcnn",
    "build_cb_dino",
    "build_detector",
    "build_dino",
    "build_internimage_body",
    "build_mask_rcnn",
    "load_detector_weights",
    "load_mmdet_detector",
    "map_mmdet_state_dict",
]

ARCHITECTURES = {
    "mask_rcnn": build_mask_rcnn,
    "cascade_mask_rcnn": build_cascade_mask_rcnn,
    "dino": build_dino,
    "cb_dino": build_cb_dino,
}


def build_detector(arch: str, backbone: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build ``'mask_rcnn'``, ``'cascade_mask_rcnn'``, ``'dino'`` or ``'cb_dino'`` (arguments of the builder)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown detector {arch!r}; known: {', '.join(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[arch](backbone, num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad argument for {arch}: {err}") from err
