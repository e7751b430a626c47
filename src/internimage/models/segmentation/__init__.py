"""Semantic segmentation on the InternImage backbone: UperNet (+ FCN auxiliary head) and Mask2Former heads,
whole/slide/TTA inference, dataset-wide metrics, official mmseg checkpoints."""

from ..checkpoint.mmseg import load_segmentation_checkpoint, map_mmseg_state_dict
from .heads import ConvModule, FCNHead, UPerHead
from .mask2former import Mask2FormerHead, MSDeformAttn
from .metrics import SegMetric, confusion_matrix, metrics_from_confusion
from .segmentor import Segmentor, build_mask2former, build_upernet, mmseg_layer_id, rescale_size, seg_param_groups

__all__ = [
    "ConvModule",
    "FCNHead",
    "MSDeformAttn",
    "Mask2FormerHead",
    "SegMetric",
    "Segmentor",
    "UPerHead",
    "build_mask2former",
    "build_upernet",
    "confusion_matrix",
    "load_segmentation_checkpoint",
    "map_mmseg_state_dict",
    "metrics_from_confusion",
    "mmseg_layer_id",
    "rescale_size",
    "seg_param_groups",
]
