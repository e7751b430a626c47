"""COCO instance detection / segmentation in Python: config, engine task, builders, evaluation, inference, drawing.

Train (the same as ``internimage train --task detection --preset mask_rcnn_internimage_t_fpn_1x_coco``)::

    from internimage.detection import DetTask, DetTrainConfig
    from internimage.engine import Trainer

    cfg = DetTrainConfig.from_preset("mask_rcnn_internimage_t_fpn_1x_coco", data_root="coco", output="runs/t")
    Trainer(cfg, DetTask(cfg)).fit()

Infer::

    cfg = DetTrainConfig.from_checkpoint("runs/t/model.safetensors")
    model = load_detector(cfg, "runs/t/model.safetensors")
    pred = detect(model, rgb, cfg)                 # boxes, labels, scores (and masks) above cfg.score_thresh
    render_detections(rgb, pred, cfg.class_names()).save("out.png")
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .configs import TaskConfig
from .engine import Task, TrainConfig
from .models.internimage import InternImageBlock

__all__ = [
    "META_KEY",
    "DetTask",
    "DetTrainConfig",
    "build_dataset",
    "build_detector_from_config",
    "detect",
    "evaluate_detector",
    "load_detector",
    "render_detections",
]

logger = logging.getLogger(__name__)

META_KEY = "detection_config"


@dataclass
class DetTrainConfig(TaskConfig, TrainConfig):
    """Detection fields on top of the engine's (defaults: the official Mask R-CNN T 1x recipe).

    Attributes:
        arch: ``mask_rcnn`` or ``cascade_mask_rcnn``.
        model: Backbone name from :func:`internimage.list_models` (architecture only; weights via ``pretrained``).
        pretrained: Checkpoint to start from: classification (backbone), official mmdet detector, or ours.
        num_classes: Foreground classes (80 for COCO).
        classes: Class names of labels 1..K (default: the training file's categories, by sorted id). Datasets are
            matched to them by category name, so a file numbering the same categories differently is read right.
        data_root: Folder the annotation and image paths below are relative to.
        train_ann, train_images, val_ann, val_images: COCO annotation files and image folders (``val_ann``
            empty = no evaluation during training).
        recipe: Train pipeline: ``1x`` (1333x800 + flip), ``3x`` (multi-scale + crop AutoAugment), ``dino`` (DINO
            T/L's AutoAugment) or ``dino_ss`` (DINO H/G/CB-H's multi-scale range); see ``detection_transforms``.
        img_scale: ``(long, short)`` of the single-scale resize (train 1x and test), positive integers.
        scale_factor: Multiplies every pipeline size (small-image experiments), > 0.
        drop_path_rate, layer_scale: Backbone overrides (official detection configs use ``layer_scale=1.0``).
        model_kwargs: Extra detector builder arguments (e.g. ``fpn_channels``, ``roi_align``, RPN sizes).
        score_thresh: Minimum score drawn by ``predict``, in [0, 1].
    """

    meta_key: ClassVar[str] = META_KEY
    arch: str = "mask_rcnn"
    model: str = "internimage_t_1k_224"
    pretrained: str = ""
    num_classes: int = 80
    classes: list[str] = field(default_factory=list)
    data_root: str = ""
    train_ann: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
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
        from .models.detection import ARCHITECTURES

        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        from .data.coco import RECIPES

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


# ------------------------------------------------------------------------------------------------- library glue
def build_detector_from_config(cfg: DetTrainConfig, load_pretrained: bool = True) -> torch.nn.Module:
    """The detector of ``cfg`` (with ``cfg.pretrained`` loaded non-strictly when asked)."""
    from .models import load_weights
    from .models.detection import build_detector

    overrides = {"drop_path_rate": cfg.drop_path_rate, "layer_scale": cfg.layer_scale}
    model = build_detector(cfg.arch, cfg.model, cfg.num_classes, backbone_overrides=overrides, **cfg.model_kwargs)
    if load_pretrained and cfg.pretrained:
        result = load_weights(model, cfg.pretrained, strict=False)
        logger.info(
            "initialised from %s (%s): %d tensors kept their initial values",
            cfg.pretrained, result.format, len(result.missing),
        )  # fmt: skip
    return model


def _path(cfg: DetTrainConfig, rel: str) -> Path:
    return Path(cfg.data_root) / rel if cfg.data_root else Path(rel)


def build_dataset(cfg: DetTrainConfig, train: bool) -> Any:
    """The COCO train or val set of ``cfg`` with the official pipeline.

    With ``cfg.classes`` (a checkpoint's or a run's class names) the categories are matched by name, so labels mean
    the same classes whatever ids the file gives them; without (official weights) labels follow the sorted ids.
    """
    from .data.coco import CocoDetection, detection_transforms

    ann, images = (cfg.train_ann, cfg.train_images) if train else (cfg.val_ann, cfg.val_images)
    transforms = detection_transforms(cfg.recipe, train, tuple(cfg.img_scale), cfg.scale_factor)
    ds = CocoDetection(_path(cfg, ann), _path(cfg, images), transforms, train=train, classes=cfg.classes or None)
    if ds.num_classes != cfg.num_classes:
        raise ValueError(f"{_path(cfg, ann)} has {ds.num_classes} categories but num_classes={cfg.num_classes}")
    return ds


def _base_dataset(ds: Any) -> Any:
    while hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


@torch.no_grad()
def evaluate_detector(
    model: torch.nn.Module, loader: Any, info: Any = None, limit: int | None = None
) -> dict[str, float]:
    """COCO box (and mask) AP of ``model`` over ``loader`` (a COCO dataset loader; sharded loaders are gathered).

    Args:
        model: A detector (possibly DDP-wrapped), evaluated in eval mode.
        loader: Loader over a :class:`~internimage.data.coco.CocoDetection` (or a ``Subset`` of one) with
            :func:`~internimage.data.coco.collate_detection`.
        info: The engine's ``DistInfo`` under distribution (results are gathered to every rank).
        limit: Real samples of this rank to use (default: the loader's real count, else all).

    Returns:
        ``bbox_mAP``, ``bbox_mAP_50``, ... and ``segm_*`` for mask models.
    """
    from tqdm import tqdm

    from .data.coco import coco_evaluate, predictions_to_coco
    from .engine.sampler import real_sample_count

    dataset = _base_dataset(loader.dataset)
    real = limit if limit is not None else real_sample_count(loader)
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    seen = 0
    main = info is None or info.is_main
    with _batches(loader) as batches:
        for batch in tqdm(batches, total=len(loader), desc="eval", disable=not main, leave=False):
            images = [img.to(device) for img in batch["images"]]
            targets = batch["targets"]
            preds = model(images, orig_sizes=[tuple(t["orig_size"]) for t in targets])
            keep = len(targets) if real is None else max(0, min(len(targets), real - seen))
            seen += len(targets)
            ids = [int(t["image_id"]) for t in targets[:keep]]
            results += predictions_to_coco(preds[:keep], ids, dataset.cat_ids)
            image_ids += ids
    if info is not None and info.distributed:
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, (results, image_ids))
        results = [r for part in gathered for r in part[0]]
        image_ids = [i for part in gathered for i in part[1]]
    iou_types = ("bbox", "segm") if any("segmentation" in r for r in results) or _has_masks(model) else ("bbox",)
    # The validated annotations (degenerate polygons dropped), not the raw file: the ground truth the model saw.
    gt = getattr(dataset, "coco", None) or dataset.ann_file
    return coco_evaluate(gt, results, iou_types, image_ids=sorted(set(image_ids)))


@contextlib.contextmanager
def _batches(loader: Any) -> Iterator[Any]:
    """An iterator over ``loader`` whose worker processes stop as soon as the loop raises (an unreadable image).

    Left to a later garbage collection, torch's worker shutdown waits 5 s per worker before giving up on them.
    """
    batches = iter(loader)
    try:
        yield batches
    except BaseException:
        shutdown = getattr(batches, "_shutdown_workers", None)  # private, hence looked up defensively
        if callable(shutdown):
            shutdown()
        raise


def _has_masks(model: torch.nn.Module) -> bool:
    model = getattr(model, "module", model)
    heads = getattr(model, "roi_heads", None)
    return getattr(heads, "mask_predictor", None) is not None or hasattr(heads, "mask_heads")


class DetTask(Task):
    """COCO instance detection / segmentation for the engine's :class:`~internimage.engine.Trainer`."""

    primary_metric = "bbox_mAP"
    fsdp_unit_types = (InternImageBlock,)

    def __init__(self, cfg: DetTrainConfig) -> None:
        super().__init__(cfg)
        self.cfg: DetTrainConfig = cfg

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
            self.cfg.classes = list(train.class_names)
        # Built after the names are fixed: a val file numbering the same categories differently is matched by name.
        val = build_dataset(self.cfg, train=False) if self.cfg.val_ann else None
        return train, val

    def collate_fn(self, train: bool) -> Any:
        from .data.coco import collate_detection

        return collate_detection

    def training_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses = model(batch["images"], batch["targets"])
        return {"loss": sum(losses.values()), **losses}

    def evaluate(self, model: torch.nn.Module, loader: Any, info: Any) -> dict[str, float]:
        return evaluate_detector(model, loader, info)

    def export_metadata(self) -> dict[str, str]:
        return {"task": "detection", META_KEY: json.dumps(self.cfg.model_fields())}


def load_detector(cfg: DetTrainConfig, checkpoint: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The detector of ``cfg`` with ``checkpoint`` loaded strictly (ours, a training or an mmdet file), in eval mode."""
    from .models import load_weights

    model = build_detector_from_config(cfg, load_pretrained=False)
    result = load_weights(model, checkpoint, strict=True)
    logger.info("loaded %s (%s)", checkpoint, result.format)
    return model.to(device).eval()


@torch.no_grad()
def detect(
    model: torch.nn.Module, rgb: Any, cfg: DetTrainConfig, score_thresh: float | None = None
) -> dict[str, torch.Tensor]:
    """Detections of one image through the test pipeline of ``cfg``, on CPU.

    Args:
        model: A detector in eval mode.
        rgb: (H, W, 3) uint8 RGB array.
        cfg: Config of the model (test resize).
        score_thresh: Minimum score kept (default: ``cfg.score_thresh``).

    Returns:
        ``boxes`` (D, 4) xyxy in image pixels, ``labels`` (D,) in 1..K, ``scores`` (D,), ``masks`` (D, 1, H, W) for
        mask models.
    """
    from .data.coco import detection_transforms

    thresh = cfg.score_thresh if score_thresh is None else score_thresh
    pipeline = detection_transforms(cfg.recipe, False, tuple(cfg.img_scale), cfg.scale_factor)
    image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    resized, _ = pipeline(image, empty)
    device = next(model.parameters()).device
    pred = model([resized.to(device)], orig_sizes=[tuple(image.shape[-2:])])[0]
    keep = pred["scores"] >= thresh
    return {k: v[keep].cpu() for k, v in pred.items()}


def render_detections(
    image: Any, pred: dict[str, torch.Tensor], names: list[str], alpha: float = 0.45, mask_thresh: float = 0.5
) -> Any:
    """Draw masks (translucent), boxes and ``label score`` tags onto an image.

    Args:
        image: (H, W, 3) uint8 RGB array.
        pred: ``boxes`` (D, 4) xyxy, ``labels`` (D,) in 1..K, ``scores`` (D,), optional ``masks`` (D, 1, H, W).
        names: Class names of labels 1..K.
        alpha: Mask opacity.
        mask_thresh: Mask probability threshold.

    Returns:
        A PIL image.
    """
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from .data.segmentation import default_palette

    canvas = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    palette = default_palette(max(len(names), 1))
    labels = [int(label) - 1 for label in pred["labels"].tolist()]
    colors = [palette[label] for label in labels]
    if labels and "masks" in pred:
        masks = pred["masks"][:, 0] > mask_thresh
        canvas = draw_segmentation_masks(canvas, masks, alpha=alpha, colors=colors)
    if labels:
        tags = [f"{names[label]} {score:.2f}" for label, score in zip(labels, pred["scores"].tolist())]
        canvas = draw_bounding_boxes(canvas, pred["boxes"].float(), labels=tags, colors=colors, width=2)
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())
