"""The Occ3D-nuScenes occupancy metric: a confusion matrix over 18 classes inside the camera mask, per-class IoU, mIoU.

It follows the original's ``occ_metrics.py`` (``Metric_mIoU`` with ``use_image_mask=True``, as ``evaluate_miou``
builds it): every frame adds the confusion counts of the voxels where ``mask_camera`` is set (ground truth labels
outside ``[0, 18)`` such as 255 are skipped); the per-class IoU is ``TP / (TP + FP + FN)`` from the summed matrix
(NaN for a class that appears in neither prediction nor ground truth); the mIoU is the NaN-skipping mean of the first
17 IoUs (``free`` left out), reported in percent.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .classes import NUM_OCC_CLASSES, OCC_CLASSES

__all__ = ["OccupancyMetric", "confusion_matrix", "format_iou_table", "per_class_iou"]

logger = logging.getLogger(__name__)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred: Any, gt: Any, num_classes: int = NUM_OCC_CLASSES) -> np.ndarray:
    """Counts of (ground truth, prediction) pairs, as the original's ``hist_info``.

    Args:
        pred: Predicted labels, any shape, integers in ``[0, num_classes)``.
        gt: Ground truth labels, same shape; entries outside ``[0, num_classes)`` (e.g. 255) are not counted.
        num_classes: Number of classes.

    Returns:
        int64 array (num_classes, num_classes): rows are ground truth, columns predictions.

    Raises:
        ValueError: The shapes differ, or a counted prediction is outside ``[0, num_classes)``.
    """
    pred, gt = _as_numpy(pred).reshape(-1), _as_numpy(gt).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} voxels but ground truth has {gt.size}")
    keep = (gt >= 0) & (gt < num_classes)
    gt = gt[keep].astype(np.int64)
    pred = pred[keep].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted labels must be in [0, {num_classes}), got {pred.min()}..{pred.max()}")
    return np.bincount(num_classes * gt + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_iou(hist: np.ndarray) -> np.ndarray:
    """IoU of every class from a confusion matrix: diag / (row sum + column sum - diag); NaN where 0 / 0.

    Args:
        hist: (C, C) counts, rows ground truth.

    Returns:
        float64 (C,) in [0, 1] or NaN.
    """
    hist = np.asarray(hist, dtype=np.float64)
    tp = np.diag(hist)
    union = hist.sum(1) + hist.sum(0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / union


def format_iou_table(ious: np.ndarray, count: int, class_names: tuple[str, ...] = OCC_CLASSES) -> str:
    """The per-class lines the challenge's evaluation prints, with percentages rounded to two decimals.

    Args:
        ious: (C,) IoUs in [0, 1] (NaN allowed); the last class (``free``) is not listed.
        count: Number of frames evaluated.
        class_names: Names in label order.

    Returns:
        Multi-line string: a header, one ``===> <class> - IoU = <x>`` line per semantic class, and the mIoU line.
    """
    n = len(ious) - 1
    lines = [f"===> per class IoU of {count} samples:"]
    lines += [f"===> {class_names[c]} - IoU = {round(float(ious[c]) * 100, 2)}" for c in range(n)]
    miou = _nanmean(ious[:n])
    lines.append(f"===> mIoU of {count} samples: {round(miou * 100, 2)}")
    return "\n".join(lines)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


class OccupancyMetric:
    """Accumulating Occ3D mIoU (camera-masked), summable across processes.

    Args:
        num_classes: Number of classes; the last one is free space and is left out of the mIoU.
        use_mask: Count only voxels where ``mask_camera`` is set (the challenge's setting). When False every voxel
            counts and ``mask_camera`` may be None.
        class_names: Names in label order (for the table and the per-class dict).

    Example:
        >>> metric = OccupancyMetric()
        >>> metric.update(pred, gt, mask_camera)   # (X, Y, Z) or (N, X, Y, Z) each
        >>> metric.compute()["mIoU"]
    """

    def __init__(
        self, num_classes: int = NUM_OCC_CLASSES, use_mask: bool = True, class_names: tuple[str, ...] = OCC_CLASSES
    ) -> None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.use_mask = use_mask
        self.class_names = tuple(class_names)
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.count = 0

    def update(self, pred: Any, gt: Any, mask_camera: Any = None) -> None:
        """Add one frame, or a batch of frames.

        Args:
            pred: Predicted labels (X, Y, Z) or (N, X, Y, Z), numpy or torch.
            gt: Ground truth ``semantics``, same shape.
            mask_camera: Boolean visibility mask, same shape; required when ``use_mask``.

        Raises:
            ValueError: Shapes differ, the mask is missing, or a prediction is out of range.
        """
        pred, gt = _as_numpy(pred), _as_numpy(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        frames = 1 if pred.ndim <= 3 else int(np.prod(pred.shape[:-3]))
        if self.use_mask:
            if mask_camera is None:
                raise ValueError("mask_camera is required when the metric uses the camera mask")
            mask = _as_numpy(mask_camera).astype(bool)
            if mask.shape != gt.shape:
                raise ValueError(f"mask_camera shape {mask.shape} differs from ground truth shape {gt.shape}")
            pred, gt = pred[mask], gt[mask]
        self.hist += confusion_matrix(pred, gt, self.num_classes)
        self.count += frames

    def all_reduce(self) -> None:
        """Sum the counts of every process (no-op unless ``torch.distributed`` is initialised)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        backend = torch.distributed.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        flat = np.concatenate([self.hist.reshape(-1), [self.count]]).astype(np.float64)
        # float64 holds integer counts exactly up to 2**53, far beyond any voxel count.
        buf = torch.from_numpy(flat).to(device)
        torch.distributed.all_reduce(buf)
        out = buf.cpu().numpy().round().astype(np.int64)
        self.hist = out[:-1].reshape(self.num_classes, self.num_classes)
        self.count = int(out[-1])

    def compute(self) -> dict[str, Any]:
        """The metric over everything added.

        Returns:
            dict with ``mIoU`` (percent, NaN-skipping mean over the classes before ``free``), ``per_class_iou``
            (class name -> percent, NaN when the class is absent from both), ``iou`` (float64 (C,) in [0, 1]),
            ``hist`` (int64 (C, C), rows ground truth), ``count`` (frames) and ``table`` (the challenge's printout).
        """
        ious = per_class_iou(self.hist)
        # The last class is free space, as in the original (which averages mIoU[:num_classes - 1]).
        miou = _nanmean(ious[: self.num_classes - 1]) * 100
        table = format_iou_table(ious, self.count, self.class_names)
        return {
            "mIoU": miou,
            "per_class_iou": {self.class_names[c]: float(ious[c] * 100) for c in range(self.num_classes)},
            "iou": ious,
            "hist": self.hist.copy(),
            "count": self.count,
            "table": table,
        }
