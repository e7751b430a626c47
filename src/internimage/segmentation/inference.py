"""Segmentor inference: load a segmentor, segment one image, draw the class overlay with its legend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .config import SegmentationConfig
from .task import build_segmentor

logger = logging.getLogger(__name__)


def load_segmentor(cfg: SegmentationConfig, checkpoint: str | Path, device: torch.device | str = "cpu") -> Any:
    """The segmentor of ``cfg`` with ``checkpoint`` (ours, a training or an mmseg file) loaded strictly, eval mode."""
    from ..models import load_weights

    model = build_segmentor(cfg, load_pretrained=False)
    result = load_weights(model, checkpoint, strict=True)
    logger.info("loaded %s (%s)", checkpoint, result.format)
    return model.to(device).eval()


@torch.no_grad()
def segment(
    model: Any,
    rgb: Any,
    cfg: SegmentationConfig,
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

    from .data import SegTestTransform

    image, _ = SegTestTransform()(torch.from_numpy(rgb).permute(2, 0, 1), torch.empty(0))
    device = next(model.parameters()).device
    probs = model.predict(
        image[None].to(device),
        scale=cfg.test_scale or cfg.img_scale,
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
