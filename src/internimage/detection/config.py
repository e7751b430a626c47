"""The detection training config (defaults: the official Mask R-CNN T 1x recipe) and its presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engine.config import TaskConfig, TrainConfig

__all__ = ["META_KEY", "DetectionConfig"]

META_KEY = "detection_config"
#: Annotation layouts (and their metrics) ``DetectionConfig.dataset`` names.
DATASETS = ("coco", "lvis", "openimages", "voc", "crowdhuman")


@dataclass
class DetectionConfig(TaskConfig, TrainConfig):
    """Detection fields on top of the engine's (defaults: the official Mask R-CNN T 1x recipe).

    Attributes:
        arch: ``mask_rcnn`` or ``cascade_mask_rcnn``.
        model: Backbone name from :func:`internimage.list_models` (architecture only; weights via ``pretrained``).
        pretrained: Checkpoint to start from: classification (backbone), official mmdet detector, or ours.
        num_classes: Foreground classes (80 for COCO).
        classes: Class names of labels 1..K (default: the training file's categories, by sorted id). Datasets are
            matched to them by category name, so a file numbering the same categories differently is read right.
        dataset: Annotation layout and metric: ``coco``, ``lvis`` (v1 json, federated AP), ``openimages`` (V6 CSVs,
            mAP@0.5 with the class hierarchy), ``voc`` (VOCdevkit; VOC07 11-point / VOC12 area mAP) or
            ``crowdhuman`` (``.odgt`` or the converter's json; AP, MR^-2).
        data_root: Folder the annotation and image paths below are relative to.
        train_ann, train_images, val_ann, val_images: Annotation files and image folders (``val_ann`` empty = no
            evaluation during training): COCO / LVIS json, OpenImages box CSV, VOC ``ImageSets/Main/*.txt`` with
            the ``VOC20xx`` folder, CrowdHuman ``.odgt`` / json.
        label_file, hierarchy_file: OpenImages ``class-descriptions-boxable.csv`` and the class hierarchy json.
        train_image_labels, val_image_labels: OpenImages image-level label CSVs (empty = none).
        class_aware_sampler: mmdet's ``ClassAwareSampler(num_sample_class=N)`` for training (0 = the usual shuffle).
        recipe: Train pipeline: ``1x`` (1333x800 + flip), ``3x`` (multi-scale + crop AutoAugment), ``dino`` (DINO
            T/L's AutoAugment), ``dino_ss`` (DINO H/G/CB-H's short side 600-1800) or ``dino_ss_1200`` (CB-H on
            LVIS / OpenImages / VOC: 600-1200); see ``detection_transforms``.
        img_scale: ``(long, short)`` of the single-scale resize (train 1x and test), positive integers.
        scale_factor: Multiplies every pipeline size (small-image experiments), > 0.
        drop_path_rate, layer_scale: Backbone overrides (official detection configs use ``layer_scale=1.0``).
        model_kwargs: Extra detector builder arguments (e.g. ``fpn_channels``, ``roi_align``, RPN sizes).
        score_thresh: Minimum score drawn by ``predict``, in [0, 1].
    """

    meta_key: ClassVar[str] = META_KEY
    presets_package: ClassVar[str] = "internimage.detection.presets"
    arch: str = "mask_rcnn"
    model: str = "internimage_t_1k_224"
    pretrained: str = ""
    num_classes: int = 80
    classes: list[str] = field(default_factory=list)
    dataset: str = "coco"
    data_root: str = ""
    train_ann: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    label_file: str = ""
    hierarchy_file: str = ""
    train_image_labels: str = ""
    class_aware_sampler: int = 0
    val_image_labels: str = ""
    recipe: str = "1x"
    img_scale: tuple[int, int] = (1333, 800)
    scale_factor: float = 1.0
    drop_path_rate: float = 0.2
    layer_scale: float | None = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    score_thresh: float = 0.3
    # Engine defaults replaced by the official detection schedule.
    epochs: int = 12
    batch_size: int = 2
    lr: float = 1e-4
    lr_base_batch: int = 0
    min_lr: float = 0.0
    warmup_lr: float | None = None
    warmup_ratio: float = 0.001
    warmup_iters: int = 500
    sched: str = "step"
    decay_milestones: list[int] = field(default_factory=lambda: [8, 11])
    decay_rate: float = 0.1
    layer_decay_rule: str = "detection"
    clip_grad: float | None = None
    eval_every: int = 1
    keep_last: int = 1

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        from .models import ARCHITECTURES

        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        from .data import RECIPES

        if self.class_aware_sampler < 0:
            raise ValueError(f"class_aware_sampler must be >= 0, got {self.class_aware_sampler}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for num_classes={self.num_classes}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique names, got {self.classes}")
        self._validate_sizes()

    def _validate_sizes(self) -> None:
        """Pipeline sizes and the score threshold: a zero scale or an impossible threshold fails only much later."""
        scale = list(self.img_scale)
        if len(scale) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in scale):
            raise ValueError(f"img_scale must be two positive integers (long, short), got {scale}")
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0):
            raise ValueError(f"scale_factor must be > 0, got {self.scale_factor}")
        if not 0 <= self.score_thresh <= 1:
            raise ValueError(f"score_thresh must be in [0, 1], got {self.score_thresh}")

    def model_fields(self) -> dict[str, Any]:
        """What is needed to rebuild the model and its test pipeline (stored with exported weights)."""
        keys = ("arch", "model", "num_classes", "classes", "img_scale", "scale_factor", "layer_scale")
        keys += ("model_kwargs", "score_thresh")
        data = self.to_dict()
        return {k: data[k] for k in keys}

    def class_names(self) -> list[str]:
        """Names of labels 1..K (``classes``, else ``class 1`` ... ``class K``)."""
        return list(self.classes) or [f"class {i}" for i in range(1, self.num_classes + 1)]
