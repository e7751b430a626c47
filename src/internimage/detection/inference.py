"""Detector inference: load a detector from its config and checkpoint, detect on one image, draw the detections."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .config import DetectionConfig
from .task import build_detector_from_config

logger = logging.getLogger(__name__)


def load_detector(cfg: DetectionConfig, checkpoint: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The detector of ``cfg`` with ``checkpoint`` loaded strictly (ours, a training or an mmdet file), in eval mode."""
    from ..models import load_weights

    model = build_detector_from_config(cfg, load_pretrained=False)
    result = load_weights(model, checkpoint, strict=True)
    logger.info("loaded %s (%s)", checkpoint, result.format)
    return model.to(device).eval()


@torch.no_grad()
def detect(
    model: torch.nn.Module, rgb: Any, cfg: DetectionConfig, score_thresh: float | None = None
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
    from .data import detection_transforms

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

    from ..data.palette import default_palette

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
