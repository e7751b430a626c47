"""Semantic segmentation in Python: config, engine task, the segmentor builder, evaluation, inference, drawing.

Train (the same as ``internimage train --task segmentation --preset upernet_internimage_t_512_160k_ade20k``)::

    from internimage.engine import Trainer
    from internimage.segmentation import SegmentationTask, SegmentationConfig

    cfg = SegmentationConfig.from_preset("upernet_internimage_t_512_160k_ade20k", data_root="ADEChallengeData2016")
    Trainer(cfg, SegmentationTask(cfg)).fit()

Infer::

    cfg = SegmentationConfig.from_checkpoint("runs/t/model.safetensors")
    model = load_segmentor(cfg, "runs/t/model.safetensors")
    label = segment(model, rgb, cfg)                # (H, W) class ids
    render_overlay(rgb, label, default_palette(cfg.num_classes), cfg.class_names()).save("out.png")

The official layer-decay rule (``layer_decay_rule: segmentation``) asks the segmentor for its layer ids
(``Segmentor.layer_id_fn``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..engine import Task
from ..models.internimage import InternImageBlock
from .config import META_KEY, SegmentationConfig
from .evaluation import evaluate_segmentor, format_per_class

__all__ = [
    "SegmentationTask",
    "build_dataset",
    "build_segmentor",
    "list_collate",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- library glue
def build_segmentor(
    cfg: SegmentationConfig, load_pretrained: bool = True, backbone_overrides: dict[str, Any] | None = None
) -> Any:
    """The one segmentor builder: UperNet, Mask2Former or SegFormer (``cfg.head``) on the backbone of ``cfg``.

    Args:
        cfg: Model fields (backbone, head, widths, classes).
        load_pretrained: Load ``cfg.pretrained`` (if set) through :func:`internimage.models.load_weights`.
        backbone_overrides: Extra :func:`internimage.create_model` arguments (they win over ``cfg``'s).
    """
    from ..models import create_model, load_weights
    from .models import build_mask2former, build_segformer, build_upernet

    overrides: dict[str, Any] = {"num_classes": 0, "drop_path_rate": cfg.drop_path_rate, "layer_scale": cfg.layer_scale}
    backbone = create_model(cfg.model, **{**overrides, **(backbone_overrides or {})})
    if cfg.head == "mask2former":
        model = build_mask2former(
            backbone,
            cfg.num_classes,
            dim=cfg.decode_channels,
            num_queries=cfg.num_queries,
            heads=cfg.attn_heads,
            hidden=cfg.ffn_channels,
            dec_hidden=cfg.dec_ffn_channels or None,
            enc_layers=cfg.enc_layers,
            dec_layers=cfg.dec_layers,
            num_points=cfg.num_points,
        )
    elif cfg.head == "segformer":
        model = build_segformer(
            backbone, cfg.num_classes, channels=cfg.decode_channels, avg_non_ignore=cfg.avg_non_ignore
        )
    else:
        model = build_upernet(
            backbone,
            cfg.num_classes,
            channels=cfg.decode_channels,
            aux_channels=cfg.aux_channels,
            aux=cfg.aux_channels > 0,
            aux_loss_weight=cfg.aux_weight,
            avg_non_ignore=cfg.avg_non_ignore,
        )
    if load_pretrained and cfg.pretrained:
        load_weights(model, cfg.pretrained, strict=True)
    return model


def build_dataset(
    cfg: SegmentationConfig, split: str, train: bool, check_zero_label: bool = True, evaluation: bool = False
) -> Any:
    """The dataset of ``split`` with the official train or test transform, labelled in the model's class order.

    Args:
        cfg: Dataset fields (``cfg.dataset`` picks the layout, see :mod:`internimage.segmentation.datasets`);
            ``cfg.classes`` are the model's class names (the checkpoint's when evaluating): a dataset naming the
            same classes in another order (``classes.txt``, or a layout's fixed list) is mapped to them by name.
        split: Split folder (``a+b`` joins splits).
        train: Official train transform, else the test one.
        check_zero_label: Warn when the label maps suggest that ``reduce_zero_label`` throws away a real class.
        evaluation: The evaluation data: ``cfg.val_dataset`` / ``cfg.val_data_root`` where set.

    Raises:
        FileNotFoundError: no images, or no label maps for the split.
        ValueError: the dataset's classes are not the model's.
    """
    from .data import SegTestTransform, SegTrainTransform

    layout, root = cfg.dataset, cfg.data_root
    if evaluation and cfg.val_dataset:
        layout, root = cfg.val_dataset, cfg.val_data_root or cfg.data_root
    if not root:
        raise ValueError("no dataset: pass --data-root (or data_root=... in the config)")
    if train:
        transform = SegTrainTransform(cfg.crop_size, cfg.img_scale, cfg.ratio_range, cfg.cat_max_ratio)
    else:
        transform = SegTestTransform()
    ds = _read_split(cfg, layout, root, split, transform, check_zero_label)
    expected = cfg.eval_classes()
    if ds.num_classes != expected:
        hint = "" if layout == "ade20k" else f" (--dataset {layout} sets num_classes and classes)"
        raise ValueError(
            f"dataset {root} ({layout}) has {ds.num_classes} classes but the model names {expected}" + hint
        )
    return ds


def _read_split(cfg: SegmentationConfig, layout: str, root: str, split: str, transform: Any, check_zero: bool) -> Any:
    """The layout reader over ``split`` (its ``+``-joined parts concatenated)."""
    from .data import ADE20KDataset

    parts = [s for s in split.split("+") if s]
    if len(parts) > 1:
        from torch.utils.data import ConcatDataset

        sets = [_read_split(cfg, layout, root, part, transform, check_zero) for part in parts]
        joined = ConcatDataset(sets)
        # What the engine and the eval command read of a dataset: its classes, palette and (image, label) pairs.
        joined.classes, joined.num_classes = sets[0].classes, sets[0].num_classes
        joined.samples = [pair for ds in sets for pair in ds.samples]
        return joined
    if layout != "ade20k":
        from .data import CITYSCAPES_CLASSES
        from .datasets import build_layout_dataset

        # Mapillary on the Cityscapes classes: the original's MapillaryHack (Vistas merged into the 19 classes).
        merged = cfg.num_classes == 19 or list(cfg.classes) == list(CITYSCAPES_CLASSES)
        kwargs = {"cityscapes_classes": merged} if layout == "mapillary" else {}
        names = cfg.classes or None
        return build_layout_dataset(layout, root, split, transform, names, require_labels=True, **kwargs)
    ds = ADE20KDataset(
        root,
        split,
        transform,
        cfg.reduce_zero_label,
        num_classes=cfg.num_classes,
        model_classes=cfg.classes or None,
        require_labels=True,
    )
    if check_zero:
        _warn_zero_label(ds, Path(root) / split)
    return ds


def _warn_zero_label(ds: Any, where: Path) -> None:
    """One warning when label 0 looks like a named class that ``reduce_zero_label=true`` ignores.

    A warning, not a refusal: the evidence (0 present, and as many names as max label + 1) also fits an
    ADE20K-style split that merely lacks its top class, a common case for small validation splits, where
    ``reduce_zero_label=true`` is right and a refusal would block a correct run with no way to confirm it.
    """
    if ds.zero_label_looks_real():
        logger.warning(
            "%s: label 0 looks like a real class (it occurs, and the %d class names cover labels 0..%d), but "
            "reduce_zero_label=true ignores it and shifts every label down by one; pass --set "
            "reduce_zero_label=false if 0 is a class",
            where,
            ds.num_classes,
            ds.num_classes - 1,
        )


def list_collate(batch: list[Any]) -> list[Any]:
    return batch


class SegmentationTask(Task):
    """Semantic segmentation for the engine's :class:`~internimage.engine.Trainer`."""

    primary_metric = "mIoU"
    fsdp_unit_types = (InternImageBlock,)

    def __init__(self, cfg: SegmentationConfig) -> None:
        super().__init__(cfg)
        self.class_names: list[str] = list(cfg.classes)

    def build_model(self) -> torch.nn.Module:
        import torch.distributed as dist

        model = build_segmentor(self.cfg)
        multi_gpu = dist.is_initialized() and dist.get_world_size() > 1 and self.cfg.device != "cpu"
        if multi_gpu and torch.cuda.is_available():
            # The official configs use SyncBN in the heads; it also makes 1 image per GPU (H) trainable.
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        if has_bn and self.cfg.batch_size < 2:
            raise ValueError(
                "batch_size 1 without multi-GPU SyncBatchNorm cannot train: the BatchNorm of UperNet's 1x1 "
                "pyramid-pooling branch needs more than one value per channel; use batch_size >= 2"
            )
        return model

    def build_datasets(self, info: Any) -> tuple[Any, Any]:
        cfg = self.cfg
        if cfg.val_split and cfg.val_dataset and cfg.val_dataset != cfg.dataset and not cfg.val_data_root:
            raise ValueError(
                f"this config trains on {cfg.dataset} and evaluates on {cfg.val_dataset} {cfg.val_split}: pass "
                f"--val-data-root <{cfg.val_dataset} root> (or --set val_split= to train without evaluation)"
            )
        train = build_dataset(cfg, cfg.train_split, train=True)
        self.class_names = self.class_names or list(train.classes)
        val = None
        if cfg.val_split:  # same convention: the train split's warning covers it
            val = build_dataset(cfg, cfg.val_split, train=False, check_zero_label=False, evaluation=True)
        return train, val

    def collate_fn(self, train: bool) -> Any:
        from .data import seg_collate

        # Validation images keep their own sizes, so they travel as a list and are run one by one.
        return seg_collate if train else list_collate

    def training_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["image"], batch["label"])

    def evaluate(self, model: torch.nn.Module, loader: Any, info: Any) -> dict[str, float]:
        result = evaluate_segmentor(model, loader, self.cfg, self.class_names or None)
        if info.is_main:
            logger.info("per-class IoU: %s", format_per_class(result))
        return {k: result[k] for k in ("mIoU", "mAcc", "aAcc")}

    def export_metadata(self) -> dict[str, str]:
        fields = self.cfg.model_fields()
        fields["classes"] = self.class_names
        return {"task": "segmentation", META_KEY: json.dumps(fields)}
