"""Detection datasets beyond COCO, each in its own standard layout and with its own metric (see :mod:`.base`).

:mod:`.lvis` (LVIS v1, federated AP), :mod:`.openimages` (OpenImages V6, mAP@0.5 with the class hierarchy),
:mod:`.voc` (Pascal VOC 2007 / 2012), :mod:`.crowdhuman` (CrowdHuman, AP / MR^-2); :mod:`.mean_ap` is the AP
computation VOC and OpenImages share.
"""

from .base import DetectionDataset, Detections, ImageRecord
from .crowdhuman import CrowdHumanDataset
from .lvis import ClassBalancedDataset, LVISDataset
from .mean_ap import eval_map
from .openimages import OpenImagesDataset
from .voc import VOC_CLASSES, VOCDataset

__all__ = [
    "VOC_CLASSES",
    "ClassBalancedDataset",
    "CrowdHumanDataset",
    "DetectionDataset",
    "Detections",
    "ImageRecord",
    "LVISDataset",
    "OpenImagesDataset",
    "VOCDataset",
    "eval_map",
]
