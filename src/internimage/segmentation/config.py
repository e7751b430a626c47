"""The segmentation training config (defaults: the official UperNet-T ADE20K recipe) and its presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engine.config import TaskConfig, TrainConfig

__all__ = ["DATASET_NAMES", "META_KEY", "SegmentationConfig"]

META_KEY = "segmentation_config"
DATASET_NAMES = ("ade20k", "cityscapes", "mapillary", "cocostuff164k", "cocostuff10k", "nyu", "pascal_context")


@dataclass
class SegmentationConfig(TaskConfig, TrainConfig):
    """Segmentation fields on top of the engine's (defaults: the official UperNet-T ADE20K recipe).

    Attributes:
        model: Backbone name from :func:`internimage.list_models` (architecture only; weights via ``pretrained``).
        pretrained: Checkpoint to start from: classification (backbone only) or segmentation (mmseg / ours).
        head: Decode head (``upernet``, ``mask2former`` or ``segformer``: mmseg's all-MLP ``SegformerHead``).
        num_classes: Output classes of the head.
        classes: Class names (default: the dataset's). Fewer names than ``num_classes`` name the first outputs; the
            rest are never targets (the official Cityscapes / Mapillary UperNet and SegFormer heads keep 150 outputs
            for the 19 classes) and a prediction there is scored as a miss, as mmseg does.
        dataset: Layout of ``data_root``: ``ade20k`` (ADE20K-style folder), ``cityscapes``, ``mapillary``,
            ``cocostuff164k``, ``cocostuff10k``, ``nyu`` or ``pascal_context`` (see
            :mod:`internimage.segmentation.datasets`; :meth:`from_dataset` fills the layout's classes and splits).
            ``mapillary`` with ``num_classes=19`` is the original's ``MapillaryHack``: the Vistas classes merged into
            the 19 Cityscapes ones (as every official Mapillary config trains).
        data_root: Dataset root.
        train_split, val_split: Split folders (``val_split`` empty = no evaluation during training); ``a+b`` joins
            splits (Cityscapes ``train+train_extra``: fine and refined coarse labels).
        val_dataset, val_data_root: Layout and root of the evaluation data when they are not the training data's
            (the Mapillary presets evaluate on Cityscapes ``val``, as the official configs do).
        reduce_zero_label: ADE20K convention (0 ignored, k -> k - 1).
        crop_size, img_scale, ratio_range, cat_max_ratio: The official train pipeline (see
            :class:`internimage.segmentation.data.SegTrainTransform`).
        drop_path_rate, layer_scale: Backbone overrides (the official seg configs use ``layer_scale=1.0`` for T..XL).
        decode_channels, aux_channels, aux_weight: UperNet width (Mask2Former: pixel decoder / query width), FCN
            auxiliary width (0 = no auxiliary head) and auxiliary loss weight.
        num_queries, attn_heads, ffn_channels, enc_layers, dec_layers, num_points: Mask2Former only (queries,
            attention heads, FFN width, pixel-decoder and transformer-decoder layers, points per mask in the losses).
        avg_non_ignore: Cross entropy averaged over labelled pixels only (official: over all pixels).
        test_mode, test_crop, test_stride: ``whole`` or ``slide`` inference.
        test_ratios, test_flip: Multi-scale ratios of the test scale and flip for evaluation.
        test_scale: ``(long, short)`` of the test resize when it is not ``img_scale`` (NYU, Pascal Context).
        dec_ffn_channels: FFN width of Mask2Former's transformer decoder when it is not ``ffn_channels`` (0: same).
    """

    meta_key: ClassVar[str] = META_KEY
    presets_package: ClassVar[str] = "internimage.segmentation.presets"
    model: str = "internimage_t_1k_224"
    pretrained: str = ""
    head: str = "upernet"
    num_classes: int = 150
    classes: list[str] = field(default_factory=list)
    dataset: str = "ade20k"
    data_root: str = ""
    train_split: str = "training"
    val_split: str = "validation"
    val_dataset: str = ""
    val_data_root: str = ""
    reduce_zero_label: bool = True
    crop_size: tuple[int, int] = (512, 512)
    img_scale: tuple[int, int] = (2048, 512)
    test_scale: tuple[int, int] | None = None
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    drop_path_rate: float = 0.2
    layer_scale: float | None = 1.0
    decode_channels: int = 512
    num_queries: int = 100
    attn_heads: int = 8
    ffn_channels: int = 1024
    dec_ffn_channels: int = 0
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
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.head not in ("upernet", "mask2former", "segformer"):
            raise ValueError(f"head must be 'upernet', 'mask2former' or 'segformer', got {self.head!r}")
        for name in ("dataset", "val_dataset"):
            value = getattr(self, name)
            if value not in DATASET_NAMES and not (name == "val_dataset" and value == ""):
                raise ValueError(f"{name} must be one of {', '.join(DATASET_NAMES)}, got {value!r}")
        if self.test_mode not in ("whole", "slide"):
            raise ValueError(f"test_mode must be 'whole' or 'slide', got {self.test_mode!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.classes) > self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for num_classes={self.num_classes}")
        self._validate_pipeline()

    def _validate_pipeline(self) -> None:
        """Sizes, ratios and weights of the train and test pipelines, checked when the config is built.

        Bad values here used to fail deep inside a run (a zero stride divides by zero in slide inference) or,
        worse, not at all (no test ratio means no forward pass, and every pixel is scored as class 0).
        """
        for name in ("img_scale", "crop_size", "test_crop", "test_stride", "test_scale"):
            if getattr(self, name) is not None and any(v < 1 for v in getattr(self, name)):
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

    @classmethod
    def from_dataset(cls, name: str, **fields: Any) -> SegmentationConfig:
        """Defaults with layout ``name``'s classes, ``reduce_zero_label`` and split names, then ``fields``.

        Example: ``SegmentationConfig.from_dataset("nyu", data_root="data/nyu_depth_v2", crop_size=(480, 480))``.
        """
        from .datasets import dataset_fields

        merged = name == "mapillary" and fields.get("num_classes") == 19
        cfg = cls(**{**dataset_fields(name, cityscapes_classes=merged), **fields})
        cfg.validate()
        return cfg

    def model_fields(self) -> dict[str, Any]:
        """What is needed to rebuild the model and its test-time behaviour (stored with exported weights)."""
        keys = ("model", "head", "num_classes", "classes", "dataset", "reduce_zero_label", "img_scale", "layer_scale")
        keys += ("decode_channels", "aux_channels", "test_mode", "test_crop", "test_stride", "test_ratios")
        keys += ("test_flip", "crop_size", "num_queries", "attn_heads", "ffn_channels", "enc_layers", "dec_layers")
        keys += ("dec_ffn_channels", "test_scale", "val_dataset", "val_split")
        data = self.to_dict()
        return {k: data[k] for k in keys}

    def class_names(self) -> list[str]:
        """Name of each output (``classes``, then ``class i`` for outputs they do not name)."""
        return list(self.classes) + [f"class {i}" for i in range(len(self.classes), self.num_classes)]

    def eval_classes(self) -> int:
        """Classes the data can hold (``len(classes)`` when named, else ``num_classes``): the metric's K."""
        return len(self.classes) or self.num_classes
