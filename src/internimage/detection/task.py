"""COCO instance detection / segmentation in Python: config, engine task, builders, evaluation, inference, drawing.

Train (the same as ``internimage train --task detection --preset mask_rcnn_internimage_t_fpn_1x_coco``)::

    from internimage.detection import DetectionTask, DetectionConfig
    from internimage.engine import Trainer

    cfg = DetectionConfig.from_preset("mask_rcnn_internimage_t_fpn_1x_coco", data_root="coco", output="runs/t")
    Trainer(cfg, DetectionTask(cfg)).fit()

Infer::

    cfg = DetectionConfig.from_checkpoint("runs/t/model.safetensors")
    model = load_detector(cfg, "runs/t/model.safetensors")
    pred = detect(model, rgb, cfg)                 # boxes, labels, scores (and masks) above cfg.score_thresh
    render_detections(rgb, pred, cfg.class_names()).save("out.png")
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..engine import Task
from ..models.internimage import InternImageBlock
from .config import META_KEY, DetectionConfig
from .evaluation import evaluate_detector

__all__ = [
    "DetectionTask",
    "build_dataset",
    "build_detector_from_config",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- library glue
def build_detector_from_config(cfg: DetectionConfig, load_pretrained: bool = True) -> torch.nn.Module:
    """The detector of ``cfg`` (with ``cfg.pretrained`` loaded non-strictly when asked)."""
    from ..models import load_weights
    from .models import build_detector

    kwargs = dict(cfg.model_kwargs)
    # Backbone switches of a config (e.g. use_dcn_v4_op) ride in model_kwargs["backbone_overrides"].
    overrides = {"drop_path_rate": cfg.drop_path_rate, "layer_scale": cfg.layer_scale}
    overrides.update(kwargs.pop("backbone_overrides", {}))
    model = build_detector(cfg.arch, cfg.model, cfg.num_classes, backbone_overrides=overrides, **kwargs)
    if load_pretrained and cfg.pretrained:
        result = load_weights(model, cfg.pretrained, strict=False)
        logger.info(
            "initialised from %s (%s): %d tensors kept their initial values",
            cfg.pretrained, result.format, len(result.missing),
        )  # fmt: skip
    return model


def _path(cfg: DetectionConfig, rel: str) -> Path:
    return Path(cfg.data_root) / rel if cfg.data_root else Path(rel)


def build_dataset(cfg: DetectionConfig, train: bool) -> Any:
    """The train or val set of ``cfg`` (in its ``dataset`` layout) with the official pipeline.

    COCO: with ``cfg.classes`` (a checkpoint's or a run's class names) the categories are matched by name, so labels
    mean the same classes whatever ids the file gives them; without (official weights) labels follow the sorted
    ids. The other layouts define their label order themselves; ``cfg.classes`` must then equal it.
    """
    from .data import detection_transforms

    ann, images = (cfg.train_ann, cfg.train_images) if train else (cfg.val_ann, cfg.val_images)
    transforms = detection_transforms(cfg.recipe, train, tuple(cfg.img_scale), cfg.scale_factor)
    ds = _DATASET_BUILDERS[cfg.dataset](cfg, ann, images, transforms, train)
    names = list(_base(ds).class_names)
    if len(names) != cfg.num_classes:
        raise ValueError(f"{_path(cfg, ann)} has {len(names)} categories but num_classes={cfg.num_classes}")
    if cfg.dataset != "coco" and cfg.classes and list(cfg.classes) != names:
        raise ValueError(f"{_path(cfg, ann)}: its classes are not the model's ({cfg.dataset} fixes the label order)")
    return ds


def _base(ds: Any) -> Any:
    while hasattr(ds, "dataset"):  # ClassBalancedDataset, ConcatDataset-like wrappers
        ds = ds.dataset
    return ds.datasets[0] if hasattr(ds, "datasets") else ds


def _coco(cfg: DetectionConfig, ann: str, images: str, transforms: Any, train: bool) -> Any:
    from .data import CocoDetection

    classes = cfg.classes or None
    return CocoDetection(_path(cfg, ann), _path(cfg, images), transforms, train=train, classes=classes)


def _lvis(cfg: DetectionConfig, ann: str, images: str, transforms: Any, train: bool) -> Any:
    from .datasets.lvis import ClassBalancedDataset, LVISDataset

    ds = LVISDataset(_path(cfg, ann), _path(cfg, images), transforms, train=train)
    # The official LVIS train set is mmdet's ClassBalancedDataset(oversample_thr=1e-3): repeat-factor sampling.
    return ClassBalancedDataset(ds, oversample_thr=1e-3) if train else ds


def _crowdhuman(cfg: DetectionConfig, ann: str, images: str, transforms: Any, train: bool) -> Any:
    from .datasets.crowdhuman import CrowdHumanDataset

    return CrowdHumanDataset(_path(cfg, ann), _path(cfg, images), transforms, train=train)


def _voc(cfg: DetectionConfig, ann: str, images: str, transforms: Any, train: bool) -> Any:
    from .datasets.voc import VOCDataset

    # ``a.txt,b.txt`` with ``VOC2007,VOC2012``: mmdet's voc0712 concatenation of the years' trainval sets.
    anns, folders = ann.split(","), images.split(",")
    if len(anns) != len(folders):
        raise ValueError(f"VOC: {len(anns)} ImageSets files ({ann!r}) for {len(folders)} folders ({images!r})")
    parts = [
        VOCDataset(_path(cfg, f), str(_path(cfg, a)), transforms, train=train, classes=cfg.classes or None)
        for a, f in zip(anns, folders)
    ]
    return parts[0] if len(parts) == 1 else _Concat(parts)


def _openimages(cfg: DetectionConfig, ann: str, images: str, transforms: Any, train: bool) -> Any:
    from .datasets.openimages import OpenImagesDataset

    labels = cfg.train_image_labels if train else cfg.val_image_labels
    return OpenImagesDataset(
        _path(cfg, ann),
        _path(cfg, cfg.label_file),
        _path(cfg, cfg.hierarchy_file) if cfg.hierarchy_file else None,
        _path(cfg, labels) if labels else None,
        _path(cfg, images),
        transforms,
        train=train,
    )


class _Concat(torch.utils.data.ConcatDataset):
    """Concatenated training sets of one layout (VOC07+12 trainval)."""

    @property
    def class_names(self) -> list[str]:
        return self.datasets[0].class_names


#: The metric that picks the best checkpoint, per dataset (higher is better).
PRIMARY_METRICS = {"coco": "bbox_mAP", "lvis": "bbox_AP", "crowdhuman": "AP", "voc": "mAP", "openimages": "mAP"}
_DATASET_BUILDERS = {
    "coco": _coco,
    "lvis": _lvis,
    "crowdhuman": _crowdhuman,
    "voc": _voc,
    "openimages": _openimages,
}


class DetectionTask(Task):
    """COCO instance detection / segmentation for the engine's :class:`~internimage.engine.Trainer`."""

    fsdp_unit_types = (InternImageBlock,)

    def __init__(self, cfg: DetectionConfig) -> None:
        super().__init__(cfg)
        self.cfg: DetectionConfig = cfg
        self.primary_metric = PRIMARY_METRICS[cfg.dataset]

    def build_model(self) -> torch.nn.Module:
        model = build_detector_from_config(self.cfg)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and torch.cuda.is_available():
            # The official Cascade heads use SyncBN; PyTorch's SyncBatchNorm runs on GPUs only.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def build_datasets(self, info: Any) -> tuple[Any, Any]:
        train = build_dataset(self.cfg, train=True)
        if not self.cfg.classes:
            self.cfg.classes = list(_base(train).class_names)
        # Built after the names are fixed: a val file numbering the same categories differently is matched by name.
        val = build_dataset(self.cfg, train=False) if self.cfg.val_ann else None
        return train, val

    def train_sampler(self, train_set: Any, info: Any) -> Any:
        if self.cfg.class_aware_sampler <= 0:
            return None
        from .samplers import ClassAwareSampler, image_label_sets

        return ClassAwareSampler(
            image_label_sets(train_set),
            samples_per_gpu=self.cfg.batch_size,
            num_replicas=info.world_size,
            rank=info.rank,
            seed=self.cfg.seed,
            num_sample_class=self.cfg.class_aware_sampler,
        )

    def collate_fn(self, train: bool) -> Any:
        from .data import collate_detection

        return collate_detection

    def training_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses = model(batch["images"], batch["targets"])
        return {"loss": sum(losses.values()), **losses}

    def evaluate(self, model: torch.nn.Module, loader: Any, info: Any) -> dict[str, float]:
        return evaluate_detector(model, loader, info)

    def export_metadata(self) -> dict[str, str]:
        return {"task": "detection", META_KEY: json.dumps(self.cfg.model_fields())}
