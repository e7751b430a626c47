"""Drawing occupancy: a bird's-eye view of a voxel grid in the challenge's colours, and the per-sample outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write
from .classes import FREE_LABEL, OCC_CLASSES, OCC_PALETTE

__all__ = ["bev_image", "render_bev", "save_prediction"]

_EMPTY = (255, 255, 255)  # free columns
_UNSEEN = (40, 40, 40)  # columns the cameras do not see (ground truth with a camera mask)


def bev_image(occ: np.ndarray, mask: np.ndarray | None = None, free: int = FREE_LABEL) -> np.ndarray:
    """Top-down view of a voxel grid: each column shows its highest non-free voxel's class colour.

    Args:
        occ: (X, Y, Z) labels, x forward, y left, z up (the Occ3D ego frame).
        mask: (X, Y, Z) visibility (``mask_camera``): invisible voxels count as free; a column with no visible
            voxel is drawn dark grey.
        free: The free-space label.

    Returns:
        (X, Y, 3) uint8 image with forward up and left on the left (row 0 = largest x, column 0 = largest y).
    """
    occ = np.asarray(occ)
    if occ.ndim != 3:
        raise ValueError(f"occupancy grid must be (X, Y, Z), got shape {occ.shape}")
    solid = occ != free
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != occ.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the grid's {occ.shape}")
        solid &= mask
    z = occ.shape[2]
    top = z - 1 - np.argmax(solid[:, :, ::-1], axis=2)  # index of the highest solid voxel of each column
    has = solid.any(axis=2)
    label = np.take_along_axis(occ, top[..., None], axis=2)[..., 0]
    palette = np.array(OCC_PALETTE + ((0, 0, 0),) * max(0, 256 - len(OCC_PALETTE)), dtype=np.uint8)
    img = np.where(has[..., None], palette[np.clip(label, 0, 255)], np.array(_EMPTY, np.uint8))
    if mask is not None:
        img[~mask.any(axis=2)] = _UNSEEN
    return img[::-1, ::-1].copy()


def render_bev(pred: np.ndarray, gt: np.ndarray | None = None, mask: np.ndarray | None = None, scale: int = 0) -> Any:
    """PIL image: the predicted bird's-eye view, the ground truth beside it when given, and a legend.

    Args:
        pred: (X, Y, Z) predicted labels.
        gt: (X, Y, Z) ground-truth labels, or None.
        mask: (X, Y, Z) ``mask_camera`` of the ground truth (applied to both views, as the metric counts).
        scale: Pixels per cell (0: enough for about 400 pixels per view).
    """
    from PIL import Image, ImageDraw

    scale = scale or max(1, 400 // max(pred.shape[:2]))
    views = [("prediction", bev_image(pred, mask))]
    if gt is not None:
        views.append(("ground truth", bev_image(gt, mask)))
    h, w = views[0][1].shape[0] * scale, views[0][1].shape[1] * scale
    present = sorted(
        {int(v) for grid in ([pred] if gt is None else [pred, gt]) for v in np.unique(grid)} - {FREE_LABEL}
    )
    legend_h = 14 * ((len(present) + 2) // 3) + 6
    canvas = Image.new("RGB", (len(views) * (w + 8) + 8, h + 24 + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (title, img) in enumerate(views):
        x0 = 8 + i * (w + 8)
        canvas.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (x0, 20))
        draw.text((x0, 4), title, fill=(0, 0, 0))
        cx, cy = x0 + w // 2, 20 + h // 2  # the ego car at the grid centre
        draw.rectangle([cx - 2, cy - 3, cx + 2, cy + 3], outline=(0, 0, 0))
    for k, label in enumerate(present):
        x, y = 8 + (k % 3) * 150, h + 26 + 14 * (k // 3)
        colour = OCC_PALETTE[label] if label < len(OCC_PALETTE) else (0, 0, 0)
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=tuple(colour), outline=(0, 0, 0))
        name = OCC_CLASSES[label] if label < len(OCC_CLASSES) else str(label)
        draw.text((x + 14, y), name, fill=(0, 0, 0))
    return canvas


def save_prediction(
    out_dir: str | Path,
    sample_token: str,
    pred: np.ndarray,
    gt: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """Write ``<token>_bev.png`` and ``<token>_occ.npz`` (``semantics``; ``gt_semantics`` / ``mask_camera`` too).

    Returns:
        (png path, npz path).
    """
    import io

    out = Path(out_dir)
    png, npz = out / f"{sample_token}_bev.png", out / f"{sample_token}_occ.npz"
    arrays = {"semantics": np.asarray(pred, dtype=np.uint8)}
    if gt is not None:
        arrays["gt_semantics"] = np.asarray(gt, dtype=np.uint8)
    if mask is not None:
        arrays["mask_camera"] = np.asarray(mask, dtype=bool)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(npz, buf.getvalue())
    image = render_bev(pred, gt, mask)
    atomic_write(png, lambda tmp: image.save(tmp, format="PNG"))
    return png, npz
