"""Detection datasets beyond COCO, each in its own standard layout and with its own metric (see :mod:`.base`)."""

from .base import DetectionDataset, Detections, ImageRecord

__all__ = ["DetectionDataset", "Detections", "ImageRecord"]
