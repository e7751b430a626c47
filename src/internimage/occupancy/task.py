"""3D occupancy prediction in Python: the model builder, weights, datasets, evaluation and the engine task.

Train (the same as ``internimage train --task occupancy --preset bevformer_intern-s_occ``)::

    from internimage.engine import Trainer
    from internimage.occupancy import OccupancyConfig, OccupancyTask

    cfg = OccupancyConfig.from_preset("bevformer_intern-s_occ", data_root="data/nuscenes", occ_root="data/occ3d-nus",
                                      pretrained="mask_rcnn_internimage_s_fpn_3x_coco.pth")
    Trainer(cfg, OccupancyTask(cfg)).fit()

Evaluate / predict::

    cfg = OccupancyConfig.from_checkpoint("runs/occ/model.safetensors")
    model = load_occupancy_model(cfg, "runs/occ/model.safetensors")
    result = evaluate_occupancy(model, loader)        # mIoU over the 17 semantic classes, camera-masked
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine import Task
from ..models.internimage import InternImageBlock
from .config import META_KEY, OccupancyConfig

__all__ = [
    "OccupancyTask",
    "build_dataset",
    "build_occupancy_model",
    "evaluate_occupancy",
    "load_occupancy_model",
    "load_occupancy_weights",
]

logger = logging.getLogger(__name__)


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file (mmdet3d ``state_dict``, training ``model``, or bare), DDP prefix removed."""
    from ..models.checkpoint import detect_format, read_checkpoint

    _, sd = detect_format(read_checkpoint(path))
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def _is_occupancy_state(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("pts_bbox_head.") for k in sd)


def build_occupancy_model(cfg: OccupancyConfig, load_pretrained: bool = True) -> nn.Module:
    """BEVFormer-Occ of ``cfg`` (``model_kwargs`` on the official sizes), with ``cfg.pretrained`` if asked.

    A backbone checkpoint goes to the InternImage body (its classifier or detector heads set aside); a whole
    occupancy checkpoint is loaded strictly after building.
    """
    from .models import build_bevformer_occ

    state = _read_state(cfg.pretrained) if load_pretrained and cfg.pretrained else None
    whole = state is not None and _is_occupancy_state(state)
    model = build_bevformer_occ(
        backbone=cfg.model,
        backbone_overrides=dict(cfg.backbone_overrides),
        backbone_checkpoint=cfg.pretrained if state is not None and not whole else None,
        num_classes=cfg.num_classes,
        pc_range=tuple(cfg.pc_range),
        use_mask=cfg.use_mask,
        **cfg.model_kwargs,
    )
    if whole:
        _load_state(model, state, cfg.pretrained, strict=True)
    return model


def load_occupancy_weights(model: nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Load an occupancy checkpoint: the official mmdet3d file (``state_dict``), a training checkpoint or ours.

    Returns:
        Missing keys (empty when ``strict``).

    Raises:
        ValueError: the file holds no occupancy model, or (``strict``) keys or shapes do not fit.
    """
    return _load_state(model, _read_state(path), path, strict)


def _load_state(model: nn.Module, sd: dict[str, torch.Tensor], path: str | Path, strict: bool) -> list[str]:
    if not _is_occupancy_state(sd):
        raise ValueError(f"{path} holds no occupancy model (no pts_bbox_head.* weights)")
    own = model.state_dict()
    wrong = [k for k, v in sd.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{path}: {k} has shape {tuple(sd[k].shape)}, the model {tuple(own[k].shape)} (+{len(wrong) - 1})"
        )
    result = model.load_state_dict(sd, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        missing, extra = result.missing_keys, result.unexpected_keys
        raise ValueError(f"{path} does not fit the model: {len(missing)} missing (e.g. {missing[:2]}), "
                         f"{len(extra)} unexpected (e.g. {extra[:2]})")  # fmt: skip
    return list(result.missing_keys)


def load_occupancy_model(cfg: OccupancyConfig, checkpoint: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model of ``cfg`` with ``checkpoint`` loaded strictly, in eval mode on ``device``."""
    model = build_occupancy_model(cfg, load_pretrained=False)
    load_occupancy_weights(model, checkpoint, strict=True)
    return model.to(device).eval()


def build_dataset(cfg: OccupancyConfig, train: bool, require_labels: bool = True) -> Any:
    """The training (temporal queue) or evaluation (one frame, in time order) samples of ``cfg``.

    Raises:
        ValueError / FileNotFoundError: missing roots, tables, images or labels (one line naming the sample).
    """
    from .data import OccupancyDataset

    if not cfg.data_root:
        raise ValueError("no dataset: pass --data-root (the nuScenes root) and --occ-root (the Occ3D root)")
    occ_root = cfg.occ_root or cfg.data_root
    return OccupancyDataset(
        cfg.data_root,
        occ_root if (train or require_labels) else None,
        version=cfg.version,
        scenes=cfg.scenes("train" if train else "val"),
        queue_length=cfg.queue_length if train else 1,
        train=train,
        image_scale=(cfg.train_image_scale or cfg.image_scale) if train else cfg.image_scale,
        mean=tuple(cfg.img_mean),
        std=tuple(cfg.img_std),
        to_rgb=cfg.to_rgb,
        photometric=cfg.photometric and train,
        occ_size=cfg.occ_size(),
    )


def frame_inputs(batch: dict[str, Any], i: int) -> dict[str, Any]:
    """``predict``'s keyword arguments for sample ``i`` of a collated batch (its current, last, frame).

    Frames go one at a time: consecutive frames of a scene may share a batch, and each needs the BEV of the one
    before it.
    """
    return {
        "img": batch["img"][i : i + 1, -1],
        "lidar2img": batch["lidar2img"][i : i + 1, -1],
        "can_bus": batch["can_bus"][i : i + 1, -1],
        "ego2lidar": batch["ego2lidar"][i : i + 1, -1],
        "scene_token": [batch["scene_token"][i]],
    }


@torch.no_grad()
def evaluate_occupancy(model: nn.Module, loader: Any, num_classes: int = 18, progress: bool = False) -> dict[str, Any]:
    """Occ3D mIoU (camera-masked, free excluded) of ``model`` over ``loader`` (frames in time order), all-reduced.

    The model keeps the previous frame's BEV between calls (``video_test_mode``), as the original's test loop.
    """
    from tqdm import tqdm

    from ..engine import real_sample_count, unwrap_model
    from .evaluation import OccupancyMetric

    bare = unwrap_model(model)
    device = next(bare.parameters()).device
    bare.reset_video_state()
    metric = OccupancyMetric(num_classes)
    limit, seen = real_sample_count(loader), 0  # FSDP pads the last shard: those frames run but do not count
    for batch in tqdm(loader, desc="eval", disable=not progress, unit="batch"):
        for i in range(batch["img"].shape[0]):
            seen += 1
            inputs = {
                k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in frame_inputs(batch, i).items()
            }
            occ = model(**inputs, mode="predict")["occ"]  # through forward: FSDP2 gathers in its pre-hook
            if limit is None or seen <= limit:
                metric.update(occ.cpu(), batch["voxel_semantics"][i : i + 1], batch["mask_camera"][i : i + 1])
    bare.reset_video_state()
    metric.all_reduce()
    return metric.compute()


class OccupancyTask(Task):
    """BEVFormer-Occ for the engine's :class:`~internimage.engine.Trainer`."""

    primary_metric = "mIoU"
    fsdp_unit_types = (InternImageBlock,)

    def __init__(self, cfg: OccupancyConfig) -> None:
        super().__init__(cfg)
        self.cfg: OccupancyConfig = cfg

    def build_model(self) -> nn.Module:
        return build_occupancy_model(self.cfg)

    def build_datasets(self, info: Any) -> tuple[Any, Any]:
        train = build_dataset(self.cfg, train=True)
        val = build_dataset(self.cfg, train=False) if self.cfg.val_scenes else None
        return train, val

    def collate_fn(self, train: bool) -> Any:
        from .data import collate_occupancy

        return collate_occupancy

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses = model(
            img=batch["img"],
            lidar2img=batch["lidar2img"],
            can_bus=batch["can_bus"],
            prev_exists=batch["prev_exists"],
            voxel_semantics=batch["voxel_semantics"],
            mask_camera=batch["mask_camera"],
            ego2lidar=batch["ego2lidar"],
        )
        return {"loss": sum(losses.values()), **losses}

    def evaluate(self, model: nn.Module, loader: Any, info: Any) -> dict[str, float]:
        result = evaluate_occupancy(model, loader, self.cfg.num_classes)
        if info.is_main:
            logger.info("occupancy IoU per class:\n%s", result["table"])
        return {"mIoU": result["mIoU"]}

    def export_metadata(self) -> dict[str, str]:
        return {"task": "occupancy", META_KEY: json.dumps(self.cfg.model_fields())}
