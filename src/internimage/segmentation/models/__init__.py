"""Semantic segmentation on the InternImage backbone: UperNet (+ FCN auxiliary head), SegFormer and Mask2Former heads,
whole/slide/TTA inference (metrics: :mod:`..evaluation`; weights: :mod:`internimage.models.checkpoint.mmseg`)."""

from ...models.checkpoint.mmseg import load_segmentation_checkpoint, map_mmseg_state_dict
from .heads import ConvModule, FCNHead, SegformerHead, UPerHead
from .mask2former import Mask2FormerHead, MSDeformAttn
from .segmentor import Segmentor, build_mask2former, build_segformer, build_upernet, mmseg_layer_id, rescale_size

__all__ = [
    "ConvModule",
    "FCNHead",
    "MSDeformAttn",
    "Mask2FormerHead",
    "SegformerHead",
    "Segmentor",
    "UPerHead",
    "build_mask2former",
    "build_segformer",
    "build_upernet",
    "load_segmentation_checkpoint",
    "map_mmseg_state_dict",
    "mmseg_layer_id",
    "rescale_size",
]
