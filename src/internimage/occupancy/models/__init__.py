"""BEVFormer-Occ: image backbone + FPN, the BEVFormer encoder and the occupancy head."""

from .bevformer_occ import (
    OFFICIAL_BACKBONE_OVERRIDES,
    TINY_CONFIG,
    BEVFormerOcc,
    GridMask,
    build_bevformer_occ,
    build_bevformer_occ_tiny,
    union2one,
)
from .encoder import (
    BEVFormerEncoder,
    BEVFormerLayer,
    MSDeformableAttention3D,
    SpatialCrossAttention,
    TemporalSelfAttention,
    bev_reference_points_2d,
    bev_reference_points_3d,
    point_sampling,
)
from .fpn import FPN
from .head import BEVFormerOccHead, LearnedPositionalEncoding
from .transformer import TransformerOcc, bev_shift, rotate_bev

__all__ = [
    "FPN",
    "OFFICIAL_BACKBONE_OVERRIDES",
    "TINY_CONFIG",
    "BEVFormerEncoder",
    "BEVFormerLayer",
    "BEVFormerOcc",
    "BEVFormerOccHead",
    "GridMask",
    "LearnedPositionalEncoding",
    "MSDeformableAttention3D",
    "SpatialCrossAttention",
    "TemporalSelfAttention",
    "TransformerOcc",
    "bev_reference_points_2d",
    "bev_reference_points_3d",
    "bev_shift",
    "build_bevformer_occ",
    "build_bevformer_occ_tiny",
    "point_sampling",
    "rotate_bev",
    "union2one",
]
