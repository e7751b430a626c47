"""Semantic segmentation on the InternImage backbone: UperNet + FCN auxiliary head, inference, metrics, checkpoints."""

from .checkpoint import load_segmentation_checkpoint, map_mmseg_state_dict
from .heads import ConvModule, FCNHead, UPerHead
from .metrics import SegMetric, confusion_matrix, metrics_from_confusion
from .segmentor import Segmentor, build_upernet, mmseg_layer_id, rescale_size, seg_param_groups

__all__ = [
    "ConvModule",
    "FCNHead",
    "SegMetric",
    "Segmentor",
    "UPerHead",
    "build_upernet",
    "confusion_matrix",
    "load_segmentation_checkpoint",
    "map_mmseg_state_dict",
    "metrics_from_confusion",
    "mmseg_layer_id",
    "rescale_size",
    "seg_param_groups",
]
