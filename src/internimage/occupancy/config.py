"""The occupancy training config (defaults: the official ``bevformer_intern-s_occ`` recipe) and its presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engine.config import TaskConfig, TrainConfig

__all__ = ["META_KEY", "OccupancyConfig"]

META_KEY = "occupancy_config"
#: Scene selections the dataset knows by name (anything else is a comma-separated list of scene names).
_SPLITS = ("all", "train", "val", "mini_train", "mini_val")


def _official_backbone() -> dict[str, Any]:
    # InternImage-S as ``bevformer_intern-s_occ.py`` configures it beyond the registered ``internimage_s_1k_224``.
    return {"layer_scale": 1.0, "offset_scale": 1.0, "post_norm": True, "drop_path_rate": 0.3, "with_cp": True}


@dataclass
class OccupancyConfig(TaskConfig, TrainConfig):
    """Occupancy fields on top of the engine's (defaults: the official ``bevformer_intern-s_occ`` recipe).

    Attributes:
        model: Backbone name from :func:`internimage.list_models` (InternImage-S officially).
        backbone_overrides: InternImage arguments of the config (layer scale, post norm, drop path, checkpointing).
        pretrained: Weights to start from: a backbone checkpoint (classification, or an mmdet detector such as the
            config's ``mask_rcnn_internimage_s_fpn_3x_coco.pth``: its ``backbone.*`` part), or a whole occupancy
            checkpoint (official mmdet3d ``img_backbone.* / img_neck.* / pts_bbox_head.*`` or ours).
        model_kwargs: :func:`~internimage.occupancy.models.build_bevformer_occ` arguments (BEV size, widths,
            layers, points, ...; the official values by default).
        num_classes: Occupancy classes (18: 17 semantic + free).
        pc_range: Volume in metres, (x_min, y_min, z_min, x_max, y_max, z_max).
        use_mask: Loss over camera-visible voxels only (the official config: off).
        data_root: nuScenes root (``v1.0-<version>/`` tables, ``samples/``; ``can_bus/`` if present).
        occ_root: Occ3D root holding ``gts/<scene>/<token>/labels.npz`` (default: ``data_root``).
        version: nuScenes table version (``v1.0-trainval``, ``v1.0-mini``, ...).
        train_scenes, val_scenes: ``train`` / ``val`` (the official split), ``mini_train`` / ``mini_val``,
            ``all``, or comma-separated scene names; ``val_scenes`` empty = no evaluation during training.
        queue_length: Frames per training sample (the current one and its history).
        image_scale: Resize factor of the camera images (1.0 officially: 1600 x 900).
        train_image_scale: Resize factor of the training images when it is not ``image_scale`` (0: the same;
            ``bevformer_small_occ`` trains at 0.2 and tests at 0.8).
        img_mean, img_std, to_rgb: The config's ``img_norm_cfg``: the images are normalised as
            ``(img - img_mean) / img_std``, in RGB channel order when ``to_rgb`` else in BGR order (the mean and std
            are then BGR too). Default: ImageNet RGB (InternImage); the ResNet configs use caffe's BGR means
            ``(103.53, 116.28, 123.675)``, std 1, ``to_rgb=False``.
        photometric: The config's ``PhotoMetricDistortionMultiViewImage`` in training.
    """

    meta_key: ClassVar[str] = META_KEY
    presets_package: ClassVar[str] = "internimage.occupancy.presets"
    model: str = "internimage_s_1k_224"
    backbone_overrides: dict[str, Any] = field(default_factory=_official_backbone)
    pretrained: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 18
    pc_range: tuple[float, float, float, float, float, float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
    use_mask: bool = False
    data_root: str = ""
    occ_root: str = ""
    version: str = "v1.0-trainval"
    train_scenes: str = "train"
    val_scenes: str = "val"
    queue_length: int = 4
    image_scale: float = 1.0
    train_image_scale: float = 0.0
    img_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    img_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    photometric: bool = True
    # Engine defaults replaced by the official schedule (AdamW 2e-4, cosine to 1e-3 x lr, 500 linear warm-up
    # iterations from lr / 3, clip 35, 24 epochs of 1 sample per GPU).
    epochs: int = 24
    batch_size: int = 1
    lr: float = 2e-4
    lr_base_batch: int = 0
    min_lr: float = 2e-7
    warmup_lr: float | None = None
    warmup_ratio: float = 1.0 / 3
    warmup_epochs: float = 0.0
    warmup_iters: int = 500
    sched: str = "cosine"
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    layer_decay_rule: str = "occupancy"
    clip_grad: float | None = 35.0
    eval_every: int = 1
    ckpt_every: int = 0
    keep_last: int = 1

    def validate(self) -> None:
        super().validate()
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (the last is free space), got {self.num_classes}")
        if len(self.pc_range) != 6 or any(hi <= lo for lo, hi in zip(self.pc_range[:3], self.pc_range[3:])):
            raise ValueError(f"pc_range must be (x0, y0, z0, x1, y1, z1) with x1 > x0 etc., got {list(self.pc_range)}")
        if self.queue_length < 1:
            raise ValueError(f"queue_length must be >= 1, got {self.queue_length}")
        if self.image_scale <= 0:
            raise ValueError(f"image_scale must be > 0, got {self.image_scale}")
        if self.train_image_scale < 0:
            raise ValueError(f"train_image_scale must be > 0 (or 0: image_scale), got {self.train_image_scale}")
        if len(self.img_mean) != 3 or len(self.img_std) != 3 or min(self.img_std) <= 0:
            raise ValueError(f"img_mean / img_std must be 3 numbers, std > 0, got {self.img_mean} / {self.img_std}")

    def occ_size(self) -> tuple[int, int, int]:
        """(X, Y, Z) of the predicted and labelled volume: (bev_w, bev_h, pillar_h)."""
        k = self.model_kwargs
        return int(k.get("bev_w", 200)), int(k.get("bev_h", 200)), int(k.get("pillar_h", 16))

    def scenes(self, which: str) -> str | list[str]:
        """``train_scenes`` / ``val_scenes`` as the dataset takes them (a split name or a list of scene names)."""
        value = self.train_scenes if which == "train" else self.val_scenes
        if value in _SPLITS:
            return value
        return [s.strip() for s in value.split(",") if s.strip()]

    def model_fields(self) -> dict[str, Any]:
        """What rebuilds the model (stored with exported weights)."""
        # The normalisation rides along: a ResNet checkpoint needs caffe-normalised BGR images at inference too.
        keys = (
            "model",
            "backbone_overrides",
            "model_kwargs",
            "num_classes",
            "pc_range",
            "use_mask",
            "image_scale",
            "img_mean",
            "img_std",
            "to_rgb",
        )
        data = self.to_dict()
        return {k: data[k] for k in keys}
