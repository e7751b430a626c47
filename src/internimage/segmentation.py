"""Semantic segmentation in Python: config, engine task, the segmentor builder, evaluation, inference, drawing.

Train (the same as ``internimage train --task segmentation --preset upernet_internimage_t_512_160k_ade20k``)::

    from internimage.engine import Trainer
    from internimage.segmentation import SegTask, SegTrainConfig

    cfg = SegTrainConfig.from_preset("upernet_internimage_t_512_160k_ade20k", data_root="ADEChallengeData2016")
    Trainer(cfg, SegTask(cfg)).fit()

Infer::

    cfg = SegTrainConfig.from_checkpoint("runs/t/model.safetensors")
    model = load_segmentor(cfg, "runs/t/model.safetensors")
    label = segment(model, rgb, cfg)                # (H, W) class ids
    render_overlay(rgb, label, default_palette(cfg.num_classes), cfg.class_names()).save("out.png")

Importing this module registers the ``segmentation`` layer-decay and no-decay rules with
:mod:`internimage.engine.optim`.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .configs import TaskConfig
from .engine import Task, TrainConfig
from .models.internimage import InternImageBlock

__all__ = [
    "META_KEY",
    "SegTask",
    "SegTrainConfig",
    "build_dataset",
    "build_segmentor",
    "evaluate_segmentor",
    "list_collate",
    "load_segmentor",
    "render_overlay",
    "segment",
]

logger = logging.getLogger(__name__)

META_KEY = "segmentation_config"


@dataclass
class SegTrainConfig(TaskConfig, TrainConfig):
    """Segmentation fields on top of the engine's (defaults: the official UperNet-T ADE20K recipe).

    Attributes:
        model: Backbone name from :func:`internimage.list_models` (architecture only; weights via ``pretrained``).
        pretrained: Checkpoint to start from: classification (backbone only) or segmentation (mmseg / ours).
        head: Decode head (``upernet`` or ``mask2former``).
        num_classes: Output classes.
        classes: Class names (default: the dataset's).
        dataset: ``ade20k`` (ADE20K-style folder) or ``cityscapes``.
        data_root: Dataset root.
        train_split, val_split: Split folders (``val_split`` empty = no evaluation during training).
        reduce_zero_label: ADE20K convention (0 ignored, k -> k - 1).
        crop_size, img_scale, ratio_range, cat_max_ratio: The official train pipeline (see
            :class:`internimage.data.segmentation.SegTrainTransform`).
        drop_path_rate, layer_scale: Backbone overrides (the official seg configs use ``layer_scale=1.0`` for T..XL).
        decode_channels, aux_channels, aux_weight: UperNet width (Mask2Former: pixel decoder / query width), FCN
            auxiliary width (0 = no auxiliary head) and auxiliary loss weight.
        num_queries, attn_heads, ffn_channels, enc_layers, dec_layers, num_points: Mask2Former only (queries,
            attention heads, FFN width, pixel-decoder and transformer-decoder layers, points per mask in the losses).
        avg_non_ignore: Cross entropy averaged over labelled pixels only (official: over all pixels).
        test_mode, test_crop, test_stride: ``whole`` or ``slide`` inference.
        test_ratios, test_flip: Multi-scale ratios of ``img_scale`` and flip for evaluation.
    """

    meta_key: ClassVar[str] = META_KEY
    model: str = "internimage_t_1k_224"
    pretrained: str = ""
    head: str = "upernet"
    num_classes: int = 150
    classes: list[str] = field(default_factory=list)
    dataset: str = "ade20k"
    data_root: str = ""
    train_split: str = "training"
    val_split: str = "validation"
    reduce_zero_label: bool = True
    crop_size: tuple[int, int] = (512, 512)
    img_scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    drop_path_rate: float = 0.2
    layer_scale: float | None = 1.0
    decode_channels: int = 512
    num_queries: int = 100
    attn_heads: int = 8
    ffn_channels: int = 1024
    enc_layers: int = 6
    dec_layers: int = 9
    num_points: int = 12544
    aux_channels: int = 256
    aux_weight: float = 0.4
    avg_non_ignore: bool = False
    test_mode: str = "whole"
    test_crop: tuple[int, int] = (512, 512)
    test_stride: tuple[int, int] = (341, 341)
    test_ratios: list[float] = field(default_factory=lambda: [1.0])
    test_flip: bool = False
    # Engine defaults replaced by the official segmentation schedule.
    iters: int = 160000
    batch_size: int = 2
    lr: float = 6e-5
    lr_base_batch: int = 0
    min_lr: float = 0.0
    warmup_lr: float | None = None
    warmup_ratio: float = 1e-6
    warmup_iters: int = 1500
    sched: str = "poly"
    layer_decay_rule: str = "segmentation"
    clip_grad: float | None = None
    eval_every: int = 16000
    ckpt_every: int = 1000
    keep_last: int = 1

    def validate(self) -> None:
        super().validate()
        if self.head not in ("upernet", "mask2former"):
            raise ValueError(f"head must be 'upernet' or 'mask2former', got {self.head!r}")
        if self.dataset not in ("ade20k", "cityscapes"):
            raise ValueError(f"dataset must be 'ade20k' or 'cityscapes', got {self.dataset!r}")
        if self.test_mode not in ("whole", "slide"):
            raise ValueError(f"test_mode must be 'whole' or 'slide', got {self.test_mode!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for num_classes={self.num_classes}")
        self._validate_pipeline()

    def _validate_pipeline(self) -> None:
        """Sizes, ratios and weights of the train and test pipelines, checked when the config is built.

        Bad values here used to fail deep inside a run (a zero stride divides by zero in slide inference) or,
        worse, not at all (no test ratio means no forward pass, and every pixel is scored as class 0).
        """
        for name in ("img_scale", "crop_size", "test_crop", "test_stride"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} must be >= 1, got {list(getattr(self, name))}")
        lo, hi = self.ratio_range
        if not 0 < lo <= hi:
            raise ValueError(f"ratio_range must be [lo, hi] with 0 < lo <= hi, got {list(self.ratio_range)}")
        if not self.test_ratios or any(r <= 0 for r in self.test_ratios):
            raise ValueError(f"test_ratios must be one or more ratios > 0, got {list(self.test_ratios)}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")
        if self.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points}")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight}")

    def model_fields(self) -> dict[str, Any]:
        """What is needed to rebuild the model and its test-time behaviour (stored with exported weights)."""
        keys = ("model", "head", "num_classes", "classes", "dataset", "reduce_zero_label", "img_scale", "layer_scale")
        keys += ("decode_channels", "aux_channels", "test_mode", "test_crop", "test_stride", "test_ratios")
        keys += ("test_flip", "crop_size", "num_queries", "attn_heads", "ffn_channels", "enc_layers", "dec_layers")
        data = self.to_dict()
        return {k: data[k] for k in keys}

    def class_names(self) -> list[str]:
        """Name of each class id (``classes``, else ``class 0`` ... ``class K-1``)."""
        return list(self.classes) or [f"class {i}" for i in range(self.num_classes)]


# ------------------------------------------------------------------------------------------------- library glue
def build_segmentor(
    cfg: SegTrainConfig, load_pretrained: bool = True, backbone_overrides: dict[str, Any] | None = None
) -> Any:
    """The one segmentor builder: UperNet or Mask2Former (``cfg.head``) on the backbone of ``cfg``.

    Args:
        cfg: Model fields (backbone, head, widths, classes).
        load_pretrained: Load ``cfg.pretrained`` (if set) through :func:`internimage.models.load_weights`.
        backbone_overrides: Extra :func:`internimage.create_model` arguments (they win over ``cfg``'s).
    """
    from .models import create_model, load_weights
    from .models.segmentation import build_mask2former, build_upernet

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
            enc_layers=cfg.enc_layers,
            dec_layers=cfg.dec_layers,
            num_points=cfg.num_points,
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


def build_dataset(cfg: SegTrainConfig, split: str, train: bool, check_zero_label: bool = True) -> Any:
    """The dataset of ``split`` with the official train or test transform, labelled in the model's class order.

    Args:
        cfg: Dataset fields; ``cfg.classes`` are the model's class names (the checkpoint's when evaluating):
            a ``classes.txt`` naming the same classes in another order is mapped to them by name.
        split: Split folder.
        train: Official train transform, else the test one.
        check_zero_label: Warn when the label maps suggest that ``reduce_zero_label`` throws away a real class.

    Raises:
        FileNotFoundError: no images, or no label maps for the split.
        ValueError: the dataset's classes are not the model's.
    """
    from .data.segmentation import ADE20KDataset, CityscapesDataset, SegTestTransform, SegTrainTransform

    if not cfg.data_root:
        raise ValueError("no dataset: pass --data-root (or data_root=... in the config)")
    if train:
        transform = SegTrainTransform(cfg.crop_size, cfg.img_scale, cfg.ratio_range, cfg.cat_max_ratio)
    else:
        transform = SegTestTransform()
    if cfg.dataset == "cityscapes":
        ds = CityscapesDataset(cfg.data_root, split, transform, require_labels=True)
    else:
        ds = ADE20KDataset(
            cfg.data_root,
            split,
            transform,
            cfg.reduce_zero_label,
            num_classes=cfg.num_classes,
            model_classes=cfg.classes or None,
            require_labels=True,
        )
        if check_zero_label:
            _warn_zero_label(ds, Path(cfg.data_root) / split)
    if ds.num_classes != cfg.num_classes:
        raise ValueError(f"dataset {cfg.data_root} has {ds.num_classes} classes but num_classes={cfg.num_classes}")
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


def evaluate_segmentor(
    model: Any, loader: Any, cfg: SegTrainConfig, class_names: list[str] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Dataset-wide aAcc / mIoU / mAcc / per-class IoU of ``model`` over ``loader`` (all-reduced over ranks).

    The loader yields lists of samples (see :meth:`SegTask.collate_fn`). Samples beyond the rank's real count
    (padding of :class:`~internimage.engine.sampler.EvalShardSampler`) still run, so every rank runs as many
    forwards (FSDP's forward is a collective), but are not counted. ``slide`` mode runs a size-dependent number
    of windows per image, so under FSDP evaluate with ``whole`` (DDP and single process have no such limit).
    """
    from tqdm import tqdm

    from .engine import real_sample_count, unwrap_model
    from .models.segmentation import SegMetric

    bare = unwrap_model(model)
    device = next(bare.parameters()).device
    _sync_buffers(bare)
    metric = SegMetric(cfg.num_classes, ignore_index=bare.ignore_index, class_names=class_names)
    limit = real_sample_count(loader)
    seen = 0
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, unit="batch"):
            for sample in batch:
                counted = limit is None or seen < limit
                seen += 1
                probs = bare.predict(
                    sample["image"][None].to(device),
                    scale=cfg.img_scale,
                    ratios=cfg.test_ratios,
                    flip=cfg.test_flip,
                    mode=cfg.test_mode,
                    crop_size=cfg.test_crop,
                    stride=cfg.test_stride,
                )
                if counted:
                    metric.update(probs.argmax(1), sample["label"][None].to(device))
    except Exception as err:
        # A worker's error comes back in a reference cycle that holds the loader's iterator: only a later garbage
        # collection would stop its worker processes, after a 5 s timeout each. Freeing the frames stops them now.
        traceback.clear_frames(err.__traceback__)
        raise
    metric.all_reduce()
    return metric.compute()


def _sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics (the exported ones) before evaluating.

    Each DDP rank updates its running statistics from its own batches; inference here bypasses the DDP wrapper
    (which would broadcast them), so without this every rank would evaluate a slightly different model.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    for buf in model.buffers():
        if not isinstance(buf, DTensor) and buf.is_floating_point():
            dist.broadcast(buf.data, src=0)


def list_collate(batch: list[Any]) -> list[Any]:
    return batch


class SegTask(Task):
    """Semantic segmentation for the engine's :class:`~internimage.engine.Trainer`."""

    primary_metric = "mIoU"
    fsdp_unit_types = (InternImageBlock,)

    def __init__(self, cfg: SegTrainConfig) -> None:
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
        train = build_dataset(self.cfg, self.cfg.train_split, train=True)
        self.class_names = self.class_names or list(train.classes)
        val = None
        if self.cfg.val_split:  # same folder and convention: the train split's warning covers it
            val = build_dataset(self.cfg, self.cfg.val_split, train=False, check_zero_label=False)
        return train, val

    def collate_fn(self, train: bool) -> Any:
        from .data.segmentation import seg_collate

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


def format_per_class(result: dict[str, Any]) -> str:
    return ", ".join(f"{n} {v['IoU']:.3f}" for n, v in result["per_class"].items())


def load_segmentor(cfg: SegTrainConfig, checkpoint: str | Path, device: torch.device | str = "cpu") -> Any:
    """The segmentor of ``cfg`` with ``checkpoint`` (ours, a training or an mmseg file) loaded strictly, eval mode."""
    from .models import load_weights

    model = build_segmentor(cfg, load_pretrained=False)
    result = load_weights(model, checkpoint, strict=True)
    logger.info("loaded %s (%s)", checkpoint, result.format)
    return model.to(device).eval()


@torch.no_grad()
def segment(
    model: Any,
    rgb: Any,
    cfg: SegTrainConfig,
    ratios: list[float] | None = None,
    flip: bool | None = None,
    mode: str | None = None,
) -> Any:
    """Class id of every pixel of one image, with the test-time behaviour of ``cfg`` (or the overrides given).

    Args:
        model: A segmentor in eval mode.
        rgb: (H, W, 3) uint8 RGB array.
        cfg: Config of the model (test scale, crop, stride).
        ratios: Multi-scale ratios of ``cfg.img_scale`` (default ``cfg.test_ratios``).
        flip: Add flipped views (default ``cfg.test_flip``).
        mode: ``whole`` or ``slide`` (default ``cfg.test_mode``).

    Returns:
        (H, W) numpy array of class ids (uint8 up to 256 classes, else int32).
    """
    import numpy as np

    from .data.segmentation import SegTestTransform

    image, _ = SegTestTransform()(torch.from_numpy(rgb).permute(2, 0, 1), torch.empty(0))
    device = next(model.parameters()).device
    probs = model.predict(
        image[None].to(device),
        scale=cfg.img_scale,
        ratios=cfg.test_ratios if ratios is None else ratios,
        flip=cfg.test_flip if flip is None else flip,
        mode=mode or cfg.test_mode,
        crop_size=cfg.test_crop,
        stride=cfg.test_stride,
    )
    return probs.argmax(1)[0].cpu().numpy().astype(np.uint8 if cfg.num_classes <= 256 else np.int32)


def render_overlay(
    rgb: Any, label: Any, palette: list[tuple[int, int, int]], names: list[str], alpha: float = 0.5
) -> Any:
    """The image blended with class colours, and a legend of the classes present (largest share first).

    Args:
        rgb: (H, W, 3) uint8 image.
        label: (H, W) class ids.
        palette: RGB colour per class.
        names: Name per class.
        alpha: Opacity of the colours.

    Returns:
        A PIL image: the overlay with a legend panel on its right.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import draw_segmentation_masks

    counts = np.bincount(label.ravel(), minlength=len(names))
    present = [int(i) for i in counts.argsort()[::-1] if counts[i] > 0]
    ids = torch.as_tensor(present, dtype=torch.int64)
    masks = torch.from_numpy(label.astype(np.int64))[None] == ids[:, None, None]  # (P, H, W), one per class present
    image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    colours = [tuple(palette[i]) for i in present]
    blended = draw_segmentation_masks(image, masks, alpha=alpha, colors=colours).permute(1, 2, 0).numpy()
    font = ImageFont.load_default()
    row, swatch, pad = 16, 12, 6
    lines = [f"{names[i]} ({100 * counts[i] / label.size:.1f}%)" for i in present]
    width = pad * 3 + swatch + max(int(font.getlength(t)) for t in lines)
    h, w = label.shape
    canvas = Image.new("RGB", (w + width, max(h, pad * 2 + row * len(lines))), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (i, text) in enumerate(zip(present, lines)):
        y = pad + k * row
        draw.rectangle([w + pad, y, w + pad + swatch, y + swatch], fill=tuple(palette[i]), outline=(0, 0, 0))
        draw.text((w + 2 * pad + swatch, y), text, fill=(0, 0, 0), font=font)
    return canvas


def _register_layer_decay() -> None:
    """Register the official segmentation layer-decay and no-decay rules with the engine."""
    from .engine import optim

    def rule(model: torch.nn.Module, decay: float, offset_lr_mul: float) -> Any:
        del offset_lr_mul  # the segmentation recipe's offset_lr_scale is 1.0 for every released config
        layer_id, num_ids = model.layer_id_fn()
        return lambda name: decay ** (num_ids - 1 - layer_id(name))

    # The official constructor also exempts every name containing "norm" from weight decay.
    optim.register_layer_decay_rule("segmentation", rule, optim.no_decay_bias_1d_and_norm)


_register_layer_decay()
