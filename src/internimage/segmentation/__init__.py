"""Semantic segmentation: UperNet and Mask2Former on InternImage, ADE20K- and Cityscapes-style data.

Train (the same as ``internimage train --task segmentation --preset upernet_internimage_t_512_160k_ade20k``)::

    from internimage.engine import Trainer
    from internimage.segmentation import SegmentationConfig, SegmentationTask

    cfg = SegmentationConfig.from_preset("upernet_internimage_t_512_160k_ade20k", data_root="ADEChallengeData2016")
    Trainer(cfg, SegmentationTask(cfg)).fit()

Infer::

    cfg = SegmentationConfig.from_checkpoint("runs/t/model.safetensors")
    model = load_segmentor(cfg, "runs/t/model.safetensors")
    label = segment(model, rgb, cfg)                # (H, W) class ids
    render_overlay(rgb, label, default_palette(cfg.num_classes), cfg.class_names()).save("out.png")

Modules: :mod:`.config` (``SegmentationConfig``) and :mod:`.presets`, :mod:`.data` (datasets and the mmseg
pipelines), :mod:`.task` (builders and the engine task), :mod:`.evaluation` (dataset-wide mIoU), :mod:`.inference`
(load, segment, draw), :mod:`.models` (UperNet, Mask2Former; weights: :mod:`internimage.models.checkpoint`).
"""

from .config import META_KEY, SegmentationConfig
from .data import ADE20KDataset, CityscapesDataset, SegTestTransform, SegTrainTransform
from .evaluation import SegMetric, evaluate_segmentor
from .inference import load_segmentor, render_overlay, segment
from .task import SegmentationTask, build_dataset, build_segmentor, list_collate

__all__ = [
    "META_KEY",
    "ADE20KDataset",
    "CityscapesDataset",
    "SegMetric",
    "SegTestTransform",
    "SegTrainTransform",
    "SegmentationConfig",
    "SegmentationTask",
    "build_dataset",
    "build_segmentor",
    "evaluate_segmentor",
    "list_collate",
    "load_segmentor",
    "render_overlay",
    "segment",
]

_RENAMED = {"SegTrainConfig": "SegmentationConfig", "SegTask": "SegmentationTask"}


def __getattr__(name: str):  # noqa: ANN202
    if name in _RENAMED:  # ImportError: `from ... import OldName` shows this message, not a generic one
        raise ImportError(f"internimage.segmentation.{name} is now internimage.segmentation.{_RENAMED[name]}")
    raise AttributeError(f"module 'internimage.segmentation' has no attribute {name!r}")
