"""DINO (Zhang et al., "DINO: DETR with Improved DeNoising Anchor Boxes", 2022) with InternImage and CB-InternImage.

The official ``dino_4scale_internimage_*`` / ``dino_4scale_cbinternimage_*`` detectors of InternImage
(``detection/mmdet_custom``), written on plain PyTorch: multi-scale deformable attention from
:mod:`internimage.ops.ms_deform_attn`, the Hungarian assignment from scipy.
"""

from .denoising import CdnQueryGenerator, DenoisingMeta
from .head import DINOHead
from .matching import generalized_iou, hungarian_assign, match_cost, sigmoid_focal_loss
from .model import (
    CBInternImage,
    ChannelMapper,
    InternImageDINO,
    build_cb_dino,
    build_dino,
)
from .transformer import DinoTransformer

__all__ = [
    "CBInternImage",
    "CdnQueryGenerator",
    "ChannelMapper",
    "DINOHead",
    "DenoisingMeta",
    "DinoTransformer",
    "InternImageDINO",
    "build_cb_dino",
    "build_dino",
    "generalized_iou",
    "hungarian_assign",
    "match_cost",
    "sigmoid_focal_loss",
]
