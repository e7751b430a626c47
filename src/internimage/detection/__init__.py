"""COCO instance detection and segmentation: Mask R-CNN, Cascade Mask R-CNN, DINO on InternImage.

Train (the same as ``internimage train --task detection --preset mask_rcnn_internimage_t_fpn_1x_coco``)::

    from internimage.detection import DetectionConfig, DetectionTask
    from internimage.engine import Trainer

    cfg = DetectionConfig.from_preset("mask_rcnn_internimage_t_fpn_1x_coco", data_root="coco", output="runs/t")
    Trainer(cfg, DetectionTask(cfg)).fit()

Infer::

    cfg = DetectionConfig.from_checkpoint("runs/t/model.safetensors")
    model = load_detector(cfg, "runs/t/model.safetensors")
    pred = detect(model, rgb, cfg)                 # boxes, labels, scores (and masks) above cfg.score_thresh
    render_detections(rgb, pred, cfg.class_names()).save("out.png")

Modules: :mod:`.config` (``DetectionConfig``) and :mod:`.presets` (the official recipes), :mod:`.data` (COCO
reading, validated once, and the mmdet pipelines), :mod:`.task` (builders and the engine task), :mod:`.evaluation`
(COCO AP), :mod:`.inference` (load, detect, draw), :mod:`.models` (the detectors; their weights readers are in
:mod:`internimage.models.checkpoint`).
"""

from .config import META_KEY, DetectionConfig
from .data import CocoDetection, collate_detection, detection_transforms
from .evaluation import coco_evaluate, evaluate_detector, predictions_to_coco
from .inference import detect, load_detector, render_detections
from .models import ARCHITECTURES, build_detector
from .task import DetectionTask, build_dataset, build_detector_from_config

__all__ = [
    "ARCHITECTURES",
    "META_KEY",
    "CocoDetection",
    "DetectionConfig",
    "DetectionTask",
    "build_dataset",
    "build_detector",
    "build_detector_from_config",
    "coco_evaluate",
    "collate_detection",
    "detect",
    "detection_transforms",
    "evaluate_detector",
    "load_detector",
    "predictions_to_coco",
    "render_detections",
]

_RENAMED = {"DetTrainConfig": "DetectionConfig", "DetTask": "DetectionTask"}


def __getattr__(name: str):  # noqa: ANN202
    if name in _RENAMED:  # ImportError: `from ... import OldName` shows this message, not a generic one
        raise ImportError(f"internimage.detection.{name} is now internimage.detection.{_RENAMED[name]}")
    raise AttributeError(f"module 'internimage.detection' has no attribute {name!r}")
