"""Box mAP as mmdet 2.x's ``eval_map`` computes it, for Pascal VOC and OpenImages.

One function, :func:`eval_map`, serves both datasets:

* VOC: IoU with the legacy ``+1`` pixel convention (``use_legacy_coordinate=True`` in mmdet's ``VOCDataset``),
  ``difficult`` objects as per-class ignore regions (a detection matching one is neither TP nor FP), AP as the
  VOC07 11-point mean or the area under the interpolated precision/recall curve.
* OpenImages: ``group-of`` boxes (``tpfp_openimages``): detections are first matched to ordinary boxes by IoU; the
  detections left unmatched and whose intersection-over-detection-area (IoA) with a group-of box reaches ``ioa_thr``
  are collapsed into one TP per group-of box (scored by the best of them); a group-of box nobody matched counts
  one FP of score 0 (mmdet's behaviour: it lowers the tail of the precision curve, never the AP).

Boxes, IoU and IoA are computed in float32 as mmdet does (so threshold ties fall the same way); precision, recall
and AP in float64 (mmdet keeps the AP in float32: results agree to ~1e-7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ClassAP", "GroundTruth", "average_precision", "box_overlaps", "eval_map", "per_class_detections"]

_EPS = np.float32(1e-6)


@dataclass
class GroundTruth:
    """Ground truth of one image, in the pixel units of the detections.

    Attributes:
        boxes: (n, 4) xyxy.
        labels: (n,) int, 0-based class index.
        ignore_boxes: (m, 4) xyxy regions ignored for their class (VOC ``difficult``).
        ignore_labels: (m,) int, 0-based class index of each ignore region.
        group_of: (n,) bool, OpenImages group-of flags, or None.
    """

    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    group_of: np.ndarray | None = None


@dataclass
class ClassAP:
    """Result of one class: ``ap``, ``num_gts`` (objects, not ignored), ``num_dets`` (ranked entries)."""

    ap: float
    num_gts: int
    num_dets: int


def _numpy(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype)


def per_class_detections(entry: dict[str, Any] | None, num_classes: int) -> list[np.ndarray]:
    """One image's detections (``boxes`` (n, 4), ``scores`` (n,), ``labels`` (n,) in 1..K; tensors or arrays)
    as mmdet's per-class list: K arrays (n_c, 5) float32 xyxy + score, in the order given (arrays may be shared:
    treat them as read-only).

    Raises:
        ValueError: A label outside 1..num_classes or mismatched lengths.
    """
    if entry is None:
        return [np.zeros((0, 5), np.float32)] * num_classes
    boxes = _numpy(entry["boxes"], np.float32).reshape(-1, 4)
    scores = _numpy(entry["scores"], np.float32).reshape(-1)
    labels = _numpy(entry["labels"], np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"detections: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"detection labels must be in 1..{num_classes}, got {labels.min()}..{labels.max()}")
    empty = np.zeros((0, 5), np.float32)
    out = [empty] * num_classes
    if len(labels):
        order = np.argsort(labels, kind="stable")  # keeps the given order within a class
        rows = np.concatenate([boxes, scores[:, None]], axis=1)[order]
        present, starts = np.unique(labels[order], return_index=True)
        for label, chunk in zip(present, np.split(rows, starts[1:])):
            out[int(label) - 1] = chunk
    return out


def box_overlaps(boxes: np.ndarray, others: np.ndarray, mode: str = "iou", extra: float = 0.0) -> np.ndarray:
    """IoU (``mode='iou'``) or intersection over the area of ``boxes`` (``'iof'``), in float32.

    Args:
        boxes: (n, >=4) xyxy (extra columns ignored).
        others: (k, 4) xyxy.
        mode: ``'iou'`` or ``'iof'``.
        extra: 1.0 for the legacy convention where a box spans ``x2 - x1 + 1`` pixels, else 0.0.

    Returns:
        (n, k) float32.
    """
    a = np.asarray(boxes, np.float32)[:, :4].reshape(-1, 4)
    b = np.asarray(others, np.float32)[:, :4].reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    e = np.float32(extra)
    area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
    area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + e, 0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + e, 0)
    overlap = iw * ih
    if mode == "iou":
        denom = area_a[:, None] + area_b[None, :] - overlap
    elif mode == "iof":
        denom = np.broadcast_to(area_a[:, None], overlap.shape)
    else:
        raise ValueError(f"mode must be 'iou' or 'iof', got {mode!r}")
    return overlap / np.maximum(denom, _EPS)


def average_precision(recall: np.ndarray, precision: np.ndarray, mode: str = "area") -> float:
    """AP of one precision/recall curve.

    Args:
        recall: (n,) cumulative recall over detections ranked by score.
        precision: (n,) cumulative precision.
        mode: ``'area'`` (area under the monotone precision envelope, VOC2010+) or ``'11points'`` (mean of the best
            precision at recall >= 0, 0.1, ..., 1; VOC2007).

    Returns:
        The AP (0 for an empty curve).
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if mode == "area":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    if mode == "11points":
        total = 0.0
        for thr in np.arange(0, 1 + 1e-3, 0.1):
            reached = precision[recall >= thr]
            total += float(reached.max()) if reached.size else 0.0
        return total / 11
    raise ValueError(f"AP mode must be 'area' or '11points', got {mode!r}")


def _tpfp(
    dets: np.ndarray,
    gts: np.ndarray,
    ignore: np.ndarray,
    iou_thr: float,
    extra: float,
    group_of: np.ndarray | None,
    ioa_thr: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP/FP flags of one image and class (mmdet's ``tpfp_default`` / ``tpfp_openimages``).

    Args:
        dets: (n, 5) float32 xyxy + score.
        gts: (g, 4) objects; ignore: (m, 4) ignore regions.
        group_of: (g,) bool flags (enables the group-of stage) or None.

    Returns:
        ``(tp, fp, dets)``, each with one row per ranked entry: the detections, less those absorbed by a group-of
        box, then one entry per group-of box (its best detection, or zeros when unmatched).
    """
    n = len(dets)
    tp = np.zeros(n, np.float32)
    fp = np.zeros(n, np.float32)
    if len(gts) + len(ignore) == 0:
        fp[:] = 1
        return tp, fp, dets
    if group_of is not None:
        plain, groups = gts[~group_of], gts[group_of]
        # mmdet measures group-of IoU/IoA without the legacy +1 (only OpenImages uses group-of).
        plain_all = np.concatenate([plain, ignore])
        ious = box_overlaps(dets, plain_all, "iou")
        ioas = box_overlaps(dets, groups, "iof")
        is_ignore = np.arange(len(plain_all)) >= len(plain)
    else:
        plain_all = np.concatenate([gts, ignore])
        ious = box_overlaps(dets, plain_all, "iou", extra)
        ioas = None
        is_ignore = np.arange(len(plain_all)) >= len(gts)
    order = np.argsort(-dets[:, 4])
    if ious.shape[1]:
        best, best_gt = ious.max(axis=1), ious.argmax(axis=1)
        covered = np.zeros(ious.shape[1], bool)
        for i in order:
            if best[i] < iou_thr:
                fp[i] = 1
                continue
            j = best_gt[i]
            if is_ignore[j]:
                continue  # matches an ignore region: neither TP nor FP
            if covered[j]:
                fp[i] = 1  # duplicate
            else:
                covered[j] = True
                tp[i] = 1
    else:
        fp[:] = 1
    if ioas is None or ioas.shape[1] == 0:
        return tp, fp, dets
    best_ioa, best_group = ioas.max(axis=1), ioas.argmax(axis=1)
    group_dets = np.zeros((ioas.shape[1], dets.shape[1]), np.float32)
    group_tp = np.zeros(ioas.shape[1], np.float32)
    absorbed = np.zeros(n, bool)
    for i in order:
        if tp[i] or best_ioa[i] < ioa_thr:
            continue
        j = best_group[i]
        group_tp[j] = 1
        absorbed[i] = True
        if group_dets[j, 4] < dets[i, 4]:
            group_dets[j] = dets[i]
    group_fp = (group_tp <= 0).astype(np.float32)
    keep = ~absorbed
    return (
        np.concatenate([tp[keep], group_tp]),
        np.concatenate([fp[keep], group_fp]),
        np.concatenate([dets[keep], group_dets]),
    )


def eval_map(
    detections: Sequence[Sequence[np.ndarray]],
    ground_truths: Sequence[GroundTruth],
    num_classes: int,
    iou_thr: float = 0.5,
    mode: str = "area",
    legacy_coordinates: bool = False,
    use_group_of: bool = False,
    ioa_thr: float = 0.5,
) -> tuple[float, list[ClassAP]]:
    """Mean AP over the classes that have ground truth (mmdet 2.x's ``eval_map``).

    Args:
        detections: Per image, per class (0..num_classes-1) an (n, 5) array xyxy + score; a missing class (shorter
            list) or an empty array means no detections.
        ground_truths: Per image (same order).
        num_classes: Number of classes.
        iou_thr: IoU for a match.
        mode: ``'area'`` or ``'11points'`` (see :func:`average_precision`).
        legacy_coordinates: Boxes span ``x2 - x1 + 1`` pixels (VOC).
        use_group_of: Use ``GroundTruth.group_of`` (OpenImages).
        ioa_thr: IoA for a group-of match.

    Returns:
        ``(mean_ap, per_class)``: the mean over classes with ``num_gts > 0`` (0.0 when none), and one
        :class:`ClassAP` per class.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truths)} images")
    extra = 1.0 if legacy_coordinates else 0.0
    empty_dets = np.zeros((0, 5), np.float32)
    # Index the work per class: only images with detections or ground truth of a class take part in it.
    per_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, (dets, gt) in enumerate(zip(detections, ground_truths)):
        present = {int(c) for c in np.unique(gt.labels)} | {int(c) for c in np.unique(gt.ignore_labels)}
        present |= {c for c, d in enumerate(dets[:num_classes]) if len(d)}
        for c in sorted(present):
            if not 0 <= c < num_classes:
                raise ValueError(f"image {index}: class index {c} outside 0..{num_classes - 1}")
            per_class[c].append(index)

    results = []
    for c in range(num_classes):
        tps, fps, scores = [], [], []
        num_gts = 0
        for index in per_class[c]:
            dets_c = detections[index][c] if c < len(detections[index]) else empty_dets
            dets_c = np.asarray(dets_c, np.float32).reshape(-1, 5)
            gt = ground_truths[index]
            mask = gt.labels == c
            gts = np.asarray(gt.boxes, np.float32).reshape(-1, 4)[mask]
            ignore = np.asarray(gt.ignore_boxes, np.float32).reshape(-1, 4)[gt.ignore_labels == c]
            group_of = None
            if use_group_of:
                flags = gt.group_of if gt.group_of is not None else np.zeros(len(gt.labels), bool)
                group_of = np.asarray(flags, bool)[mask]
            tp, fp, ranked = _tpfp(dets_c, gts, ignore, iou_thr, extra, group_of, ioa_thr)
            tps.append(tp)
            fps.append(fp)
            scores.append(ranked[:, 4])
            num_gts += len(gts)
        if tps:
            order = np.argsort(-np.concatenate(scores))
            tp = np.cumsum(np.concatenate(tps)[order], dtype=np.float64)
            fp = np.cumsum(np.concatenate(fps)[order], dtype=np.float64)
        else:
            tp = fp = np.zeros(0)
        recall = tp / max(num_gts, float(np.finfo(np.float32).eps))
        precision = tp / np.maximum(tp + fp, np.finfo(np.float32).eps)
        results.append(ClassAP(average_precision(recall, precision, mode), num_gts, len(tp)))
    aps = [r.ap for r in results if r.num_gts > 0]
    return (float(np.mean(aps)) if aps else 0.0), results
