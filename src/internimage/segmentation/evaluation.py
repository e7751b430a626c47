"""Semantic segmentation evaluation: metrics from one confusion matrix accumulated over a whole dataset, the loop.

Definitions are mmseg's (and ADE20K's benchmark): per-class IoU = TP / (TP + FP + FN) and Acc = TP / (TP + FN)
over every pixel of the dataset (not averaged per image); classes that never occur in labels or predictions
(union 0) get NaN and are left out of mIoU/mAcc; aAcc = sum(TP) / labelled pixels. Pixels labelled
``ignore_index`` are excluded everywhere. A model may have more outputs than the dataset has classes (the official
Cityscapes / Mapillary UperNet and SegFormer heads keep 150 outputs for 19 classes): a prediction outside the
dataset's K classes is wrong for its pixel's class and counts for no class, as in mmseg (its ``histc`` over K bins
drops it). Under DDP, :meth:`SegMetric.all_reduce` sums the counts of all ranks, so every rank reports the
dataset-wide figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from ..data.datasets import workers_stop_on_error
from .config import SegmentationConfig

__all__ = [
    "SegMetric",
    "confusion_matrix",
    "evaluate_segmentor",
    "format_per_class",
    "metrics_from_confusion",
]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Confusion matrix of one batch.

    Args:
        pred: (...) predicted class ids.
        target: (...) ground-truth ids, same shape; ``ignore_index`` pixels are skipped.
        num_classes: K.
        ignore_index: Label value to skip.

    Returns:
        (K, K + 1) int64 counts, rows = ground truth, columns = prediction; the last column counts predictions
        outside ``[0, K)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = int(t.max()) if int(t.max()) >= num_classes else int(t.min())
        raise ValueError(f"label value {bad} outside [0, {num_classes}) and not ignore_index={ignore_index}")
    p = torch.where((p < 0) | (p >= num_classes), num_classes, p)
    k1 = num_classes + 1
    return torch.bincount(t * k1 + p, minlength=num_classes * k1).reshape(num_classes, k1)


def metrics_from_confusion(cm: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """aAcc, mIoU, mAcc and per-class IoU/Acc (fractions in [0, 1]; NaN for classes absent everywhere).

    Args:
        cm: (K, K) counts, rows = ground truth, columns = prediction, or (K, K + 1) with a last column of
            predictions outside the K classes (misses of their row's class, no class's prediction).
        class_names: Optional K names for the ``per_class`` table.

    Returns:
        ``{'aAcc', 'mIoU', 'mAcc': float, 'IoU', 'Acc': list[float], 'per_class': {name: {'IoU', 'Acc'}}}``.
    """
    cm = cm.double().cpu()
    k = cm.shape[0]
    if cm.shape[1] not in (k, k + 1):
        raise ValueError(f"confusion matrix of shape {tuple(cm.shape)}: expected ({k}, {k}) or ({k}, {k + 1})")
    tp = cm.diag()
    label_area = cm.sum(1)
    union = label_area + cm[:, :k].sum(0) - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(label_area > 0, tp / label_area.clamp(min=1), nan)
    names = list(class_names) if class_names is not None else [str(i) for i in range(cm.shape[0])]
    if len(names) != cm.shape[0]:
        raise ValueError(f"{len(names)} class names for {cm.shape[0]} classes")
    total = float(label_area.sum())
    return {
        "aAcc": float(tp.sum()) / total if total else float("nan"),
        "mIoU": float(iou.nanmean()),
        "mAcc": float(acc.nanmean()),
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
        "per_class": {n: {"IoU": float(i), "Acc": float(a)} for n, i, a in zip(names, iou, acc)},
    }


class SegMetric:
    """Accumulates the dataset confusion matrix batch by batch.

    Args:
        num_classes: K.
        ignore_index: Label value to skip.
        class_names: Optional names for the per-class table.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.cm = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)  # last column: other predictions

    def reset(self) -> None:
        self.cm.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Args: pred: (N, H, W) class ids, or (N, C, H, W) scores (argmax taken; C may exceed K); target: (N, H, W)
        labels in [0, K) or ``ignore_index``."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        cm = confusion_matrix(pred, target.to(pred.device), self.num_classes, self.ignore_index)
        self.cm = self.cm.to(cm.device) + cm

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (no-op outside ``torch.distributed``)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl" and not self.cm.is_cuda:  # NCCL reduces CUDA tensors only
                self.cm = self.cm.cuda()
            dist.all_reduce(self.cm, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """Metrics of everything seen so far (call :meth:`all_reduce` first under DDP)."""
        return metrics_from_confusion(self.cm, self.class_names)


def evaluate_segmentor(
    model: Any, loader: Any, cfg: SegmentationConfig, class_names: list[str] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Dataset-wide aAcc / mIoU / mAcc / per-class IoU of ``model`` over ``loader`` (all-reduced over ranks).

    The loader yields lists of samples (see :meth:`SegmentationTask.collate_fn`). Samples beyond the rank's real count
    (padding of :class:`~internimage.engine.sampler.EvalShardSampler`) still run, so every rank runs as many
    forwards (FSDP's forward is a collective), but are not counted. ``slide`` mode runs a size-dependent number
    of windows per image, so under FSDP evaluate with ``whole`` (DDP and single process have no such limit).
    """
    from tqdm import tqdm

    from ..engine import real_sample_count, unwrap_model

    bare = unwrap_model(model)
    device = next(bare.parameters()).device
    _sync_buffers(bare)
    k = len(class_names) if class_names else cfg.eval_classes()  # a head may have more outputs (never targets)
    metric = SegMetric(k, ignore_index=bare.ignore_index, class_names=class_names)
    limit = real_sample_count(loader)
    seen = 0
    with workers_stop_on_error():
        for batch in tqdm(loader, desc="eval", disable=not progress, unit="batch"):
            for sample in batch:
                counted = limit is None or seen < limit
                seen += 1
                probs = bare.predict(
                    sample["image"][None].to(device),
                    scale=cfg.test_scale or cfg.img_scale,
                    ratios=cfg.test_ratios,
                    flip=cfg.test_flip,
                    mode=cfg.test_mode,
                    crop_size=cfg.test_crop,
                    stride=cfg.test_stride,
                )
                if counted:
                    metric.update(probs.argmax(1), sample["label"][None].to(device))
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


def format_per_class(result: dict[str, Any]) -> str:
    return ", ".join(f"{n} {v['IoU']:.3f}" for n, v in result["per_class"].items())
