"""LVIS v1: ``lvis_v1_{train,val,minival}.json`` over the COCO 2017 images, with federated box evaluation.

Layout (mmdet's ``LVISV1Dataset``, the official ``lvis_v1_instance*.py`` configs)::

    data/lvis_v1/
        annotations/lvis_v1_train.json   lvis_v1_val.json   lvis_v1_minival.json
        train2017/000000xxxxxx.jpg        val2017/000000xxxxxx.jpg

An image's file is the tail of its ``coco_url`` (``http://images.cocodataset.org/train2017/x.jpg`` ->
``<root>/train2017/x.jpg``; LVIS val draws images from both COCO splits), else its ``file_name``. ``minival`` is just
another annotation file (a 5k-image subset of val): the configs test on it, so it reads like the others.

Training: labels 1..K follow the sorted category ids; boxes smaller than 1 pixel or of zero area are no targets
(mmdet's filter), and the official configs wrap the train set in mmdet's ``ClassBalancedDataset`` with
``oversample_thr=1e-3``: :func:`repeat_factors` / :func:`repeat_indices` / :class:`ClassBalancedDataset`.

Evaluation (:meth:`LVISDataset.evaluate`) follows the ``lvis`` package's ``LVISEval`` for boxes, checked against it
in ``tests/test_lvis.py``: at most 300 detections per image (highest scores), the federated rules (a detection of a
category neither annotated in the image nor in its ``neg_category_ids`` is dropped; an unmatched detection of a
category in ``not_exhaustive_category_ids`` is ignored), greedy matching at IoU 0.50:0.95, 101-point interpolated
precision, and AP over all categories, by area (COCO's ranges on the annotation's ``area``) and by frequency group
(rare / common / frequent). Keys are mmdet's: ``bbox_AP``, ``bbox_AP50``, ``bbox_AP75``, ``bbox_APs``, ``bbox_APm``,
``bbox_APl``, ``bbox_APr``, ``bbox_APc``, ``bbox_APf`` and ``bbox_AR@300``; a figure with nothing to average is -1,
as in the reference. Masks are not read (the official LVIS config is box-only).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DetectionDataset, Detections, ImageRecord, Sample

__all__ = [
    "LVIS_SPLITS",
    "ClassBalancedDataset",
    "LVISDataset",
    "evaluate_lvis",
    "lvis_ann_file",
    "repeat_factors",
    "repeat_indices",
]

logger = logging.getLogger(__name__)

#: Annotation file of each split under ``<root>/annotations``.
LVIS_SPLITS = {"train": "lvis_v1_train.json", "val": "lvis_v1_val.json", "minival": "lvis_v1_minival.json"}
FREQUENCIES = ("r", "c", "f")
MAX_DETS = 300
IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
#: (label, lo, hi) of COCO's area ranges (bounds inclusive, as in the reference).
AREA_RANGES = (("all", 0.0, 1e10), ("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, 1e10))
#: Tolerance (pixels) for boxes reaching past the image border (rounding in the annotation tools); clipped.
_BORDER_TOL = 1.0


def lvis_ann_file(root: str | Path, split: str) -> Path:
    """``<root>/annotations/lvis_v1_<split>.json`` for ``split`` in train / val / minival."""
    if split not in LVIS_SPLITS:
        raise ValueError(f"LVIS split must be one of {', '.join(LVIS_SPLITS)}, got {split!r}")
    return Path(root) / "annotations" / LVIS_SPLITS[split]


# ------------------------------------------------------------------------------------------------- reading
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _image_path(root: Path, im: dict[str, Any], where: str) -> Path:
    url = im.get("coco_url")
    if isinstance(url, str) and url:
        parts = url.rstrip("/").split("/")
        return root.joinpath(*parts[-2:]) if len(parts) >= 2 else root / parts[-1]
    name = im.get("file_name")
    if isinstance(name, str) and name:
        return root / name
    raise ValueError(f"{where} has neither 'coco_url' nor 'file_name'")


def _read_lvis(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"LVIS annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"{path} is not an LVIS file: no '{key}' list")
    return data


def _unique_ids(items: list[Any], kind: str, path: Path) -> None:
    seen: set[int] = set()
    for i, rec in enumerate(items):
        if not isinstance(rec, dict) or not _is_int(rec.get("id")):
            raise ValueError(f"{path}: {kind} #{i} has no integer 'id': {_short(rec)}")
        if rec["id"] in seen:
            raise ValueError(f"{path}: {kind} id {rec['id']} is repeated ({kind} #{i})")
        seen.add(rec["id"])


class LVISDataset(DetectionDataset):
    """An LVIS v1 annotation file and its COCO images.

    Args:
        ann_file: ``lvis_v1_{train,val,minival}.json`` (see :func:`lvis_ann_file`).
        img_root: Folder holding ``train2017/`` and ``val2017/`` (mmdet's ``img_prefix = data_root``).
        transforms: ``(image, target) -> (image, target) | None``.
        train: Keep only images with targets (and sides >= ``min_size``).
        min_size: mmdet's minimum image side in training.
        max_dets: Detections per image kept by :meth:`evaluate` (LVIS's 300).

    Attributes:
        cat_ids: Category id of each label 1..K (sorted ids).
        frequency: ``'r'`` / ``'c'`` / ``'f'`` of each label 1..K (index 0 = label 1).
        image_counts: (K,) images per category (the file's ``image_count``, else counted), e.g. for federated losses.

    Raises:
        FileNotFoundError: the file or an image file is missing.
        ValueError: one line naming the file and the first bad record (unknown category id, box outside the image,
            missing ``neg_category_ids`` ...).
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_root: str | Path,
        transforms: Callable[[torch.Tensor, dict[str, Any]], Sample | None] | None = None,
        train: bool = False,
        min_size: int = 32,
        max_dets: int = MAX_DETS,
    ) -> None:
        path = Path(ann_file)
        root = Path(img_root)
        data = _read_lvis(path)
        self.max_dets = max_dets
        cats = data["categories"]
        _unique_ids(cats, "category", path)
        for c in cats:
            if not isinstance(c.get("name"), str):
                raise ValueError(f"{path}: category {c['id']} has no 'name' string")
            if c.get("frequency") not in FREQUENCIES:
                raise ValueError(
                    f"{path}: category {c['id']} ({c['name']}): 'frequency' must be one of r, c, f, "
                    f"got {_short(c.get('frequency'))}"
                )
        cats = sorted(cats, key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in cats]
        label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.frequency = [c["frequency"] for c in cats]

        images = data["images"]
        _unique_ids(images, "image", path)
        by_id: dict[int, dict[str, Any]] = {}
        for im in images:
            where = f"{path}: image {im['id']}"
            for key in ("height", "width"):
                if not _is_int(im.get(key)) or im[key] < 1:
                    raise ValueError(f"{where}: '{key}' must be a positive integer, got {_short(im.get(key))}")
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                ids = im.get(key)
                if not isinstance(ids, list):
                    raise ValueError(f"{where} has no '{key}' list (LVIS v1 images carry both federated lists)")
                bad = next((c for c in ids if c not in label_of), None)
                if bad is not None:
                    raise ValueError(f"{where}: {key} names category id {_short(bad)}, not in 'categories'")
            im["_path"] = _image_path(root, im, where)
            by_id[im["id"]] = im

        anns = data["annotations"]
        _unique_ids(anns, "annotation", path)
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in by_id}
        for ann in anns:
            where = f"{path}: annotation {ann['id']}"
            im = by_id.get(ann.get("image_id"))
            if im is None:
                raise ValueError(f"{where}: image_id {_short(ann.get('image_id'))} is not an image of the file")
            if ann.get("category_id") not in label_of:
                raise ValueError(f"{where}: category_id {_short(ann.get('category_id'))} is not in 'categories'")
            box = ann.get("bbox")
            if not isinstance(box, list) or len(box) != 4 or not all(_is_num(v) for v in box):
                raise ValueError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {_short(box)}")
            x, y, w, h = box
            if w < 0 or h < 0:
                raise ValueError(f"{where}: bbox {box} has a negative width or height")
            W, H = im["width"], im["height"]
            if x < -_BORDER_TOL or y < -_BORDER_TOL or x + w > W + _BORDER_TOL or y + h > H + _BORDER_TOL:
                raise ValueError(f"{where}: bbox [x, y, w, h] = {box} lies outside image {im['id']} of size {W}x{H}")
            if "area" in ann and not _is_num(ann["area"]):
                raise ValueError(f"{where}: area must be a number, got {_short(ann['area'])}")
            per_image[im["id"]].append(ann)

        counts = np.zeros(len(self.cat_ids), np.int64)
        records, self._gt = [], {}
        for im in images:
            objs = per_image[im["id"]]
            xywh = np.array([a["bbox"] for a in objs], np.float64).reshape(-1, 4)
            area = np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in objs], np.float64)
            labels = np.array([label_of[a["category_id"]] for a in objs], np.int64)
            ignore = np.array([bool(a.get("ignore", 0)) for a in objs], bool)
            # The reference drops annotations of zero area (its 0 < area < inf filter) before anything else.
            self._gt[im["id"]] = {"xywh": xywh, "area": area, "labels": labels, "ignore": ignore, "keep": area > 0}
            for lab in set(labels.tolist()):
                counts[lab - 1] += 1
            usable = (xywh[:, 2] >= 1) & (xywh[:, 3] >= 1) & (area > 0) & ~ignore
            W, H = im["width"], im["height"]
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            xyxy = np.clip(xyxy, 0, [W, H, W, H])[usable].astype(np.float32)
            extra = {
                "neg_category_ids": list(im["neg_category_ids"]),
                "not_exhaustive_category_ids": list(im["not_exhaustive_category_ids"]),
                "neg_labels": [label_of[c] for c in im["neg_category_ids"]],
                "not_exhaustive_labels": [label_of[c] for c in im["not_exhaustive_category_ids"]],
            }
            records.append(ImageRecord(im["id"], im["_path"], H, W, xyxy, labels[usable], extra=extra))
        self._images = {im["id"]: im for im in images}
        self.image_counts = np.array(
            [c["image_count"] if _is_int(c.get("image_count")) else n for c, n in zip(cats, counts)], np.int64
        )
        super().__init__(records, [c["name"] for c in cats], path, transforms, train, min_size)
        logger.info("%s: %d images, %d categories", path, len(self.records), len(self.cat_ids))

    def evaluate(self, detections: Detections) -> dict[str, float]:
        """LVIS federated box AP over every image of the annotation file (see the module doc for the rules).

        Args:
            detections: image id -> ``boxes`` (n, 4) xyxy original pixels, ``scores`` (n,), ``labels`` (n,) 1..K.
                Images without an entry have no detections; entries for images outside the file are ignored
                (logged).

        Returns:
            ``bbox_AP``, ``bbox_AP50``, ``bbox_AP75``, ``bbox_APs``, ``bbox_APm``, ``bbox_APl``, ``bbox_APr``,
            ``bbox_APc``, ``bbox_APf``, ``bbox_AR@300`` (``@max_dets``) in [0, 1], or -1 where undefined.
        """
        extra = sorted(set(detections) - set(self._gt))
        if extra:
            logger.warning("%d detected image id(s) are not images of %s (e.g. %s): ignored", len(extra), self.source,
                           extra[0])  # fmt: skip
        dets = {}
        for img_id in self._gt:
            d = detections.get(img_id)
            if d is None:
                continue
            boxes = np.asarray(_numpy(d["boxes"]), np.float64).reshape(-1, 4)
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            dets[img_id] = (xywh, np.asarray(_numpy(d["scores"]), np.float64).reshape(-1),
                            np.asarray(_numpy(d["labels"]), np.int64).reshape(-1))  # fmt: skip
        images = {
            i: (set(im["neg_category_ids"]), set(im["not_exhaustive_category_ids"])) for i, im in self._images.items()
        }
        gt = {i: {**g, "cat_ids": np.array(self.cat_ids, np.int64)[g["labels"] - 1]} for i, g in self._gt.items()}
        return evaluate_lvis(gt, dets, images, self.cat_ids, self.frequency, self.max_dets)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ----------------------------------------------------------------------------------------------- evaluation
def _iou_xywh(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xywh boxes (the COCO mask API's box IoU, non-crowd)."""
    dx2, dy2 = dt[:, 0] + dt[:, 2], dt[:, 1] + dt[:, 3]
    gx2, gy2 = gt[:, 0] + gt[:, 2], gt[:, 1] + gt[:, 3]
    iw = np.minimum(dx2[:, None], gx2[None]) - np.maximum(dt[:, None, 0], gt[None, :, 0])
    ih = np.minimum(dy2[:, None], gy2[None]) - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (dt[:, 2] * dt[:, 3])[:, None] + (gt[:, 2] * gt[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(ious: np.ndarray, gt_ignore: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of score-sorted detections to gts sorted regular-first, at one IoU threshold.

    Returns:
        (n,) bool matched, (n,) bool matched to an ignored gt.
    """
    n, m = ious.shape
    taken = np.zeros(m, bool)
    matched, on_ignored = np.zeros(n, bool), np.zeros(n, bool)
    for i in range(n):
        best, j_best = min(thr, 1 - 1e-10), -1
        for j in range(m):
            if taken[j]:
                continue
            if j_best > -1 and not gt_ignore[j_best] and gt_ignore[j]:
                break
            if ious[i, j] < best:
                continue
            best, j_best = ious[i, j], j
        if j_best > -1:
            taken[j_best] = True
            matched[i], on_ignored[i] = True, gt_ignore[j_best]
    return matched, on_ignored


def evaluate_lvis(
    gt: dict[int, dict[str, np.ndarray]],
    dets: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    images: dict[int, tuple[set[int], set[int]]],
    cat_ids: Sequence[int],
    frequency: Sequence[str],
    max_dets: int = MAX_DETS,
) -> dict[str, float]:
    """LVIS box evaluation (the ``lvis`` package's ``LVISEval`` semantics) in float64 numpy.

    Args:
        gt: image id -> ``xywh`` (m, 4), ``area`` (m,), ``cat_ids`` (m,), ``ignore`` (m,) bool, ``keep`` (m,) bool.
        dets: image id -> (xywh (n, 4), scores (n,), labels (n,) 1..K indexing ``cat_ids``).
        images: image id -> (neg category ids, not-exhaustive category ids).
        cat_ids: Sorted category ids (label k is ``cat_ids[k - 1]``).
        frequency: ``'r'`` / ``'c'`` / ``'f'`` per category.
        max_dets: Detections kept per image (highest scores).

    Returns:
        The mmdet-named figures (see :meth:`LVISDataset.evaluate`).
    """
    img_ids = sorted(images)
    cat_ids = list(cat_ids)
    cat_index = {c: k for k, c in enumerate(cat_ids)}
    T, R, K, A = len(IOU_THRS), len(REC_THRS), len(cat_ids), len(AREA_RANGES)
    # Per (category, area range): lists over images, in image-id order, of per-image results.
    acc: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for img_id in img_ids:
        g = gt[img_id]
        keep = g["keep"]
        g_xywh, g_area, g_cat, g_ign = g["xywh"][keep], g["area"][keep], g["cat_ids"][keep], g["ignore"][keep]
        neg, not_exhaustive = images[img_id]
        present = set(g_cat.tolist())
        if img_id in dets:
            d_xywh, d_score, d_label = dets[img_id]
            if len(d_score) > max_dets:
                top = np.argsort(-d_score, kind="stable")[:max_dets]
                d_xywh, d_score, d_label = d_xywh[top], d_score[top], d_label[top]
            d_cat = np.array(cat_ids, np.int64)[d_label - 1] if len(d_label) else np.zeros(0, np.int64)
            d_area = d_xywh[:, 2] * d_xywh[:, 3]
            ok = (d_area > 0) & np.array([c in neg or c in present for c in d_cat.tolist()], bool).reshape(-1)
            d_xywh, d_score, d_cat, d_area = d_xywh[ok], d_score[ok], d_cat[ok], d_area[ok]
        else:
            d_xywh, d_score, d_cat, d_area = np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0)
        for c in sorted(present | set(d_cat.tolist())):
            gi, di = np.flatnonzero(g_cat == c), np.flatnonzero(d_cat == c)
            di = di[np.argsort(-d_score[di], kind="stable")]
            ious = _iou_xywh(d_xywh[di], g_xywh[gi])
            for a, (_, lo, hi) in enumerate(AREA_RANGES):
                ga = g_area[gi]
                g_ignore = g_ign[gi] | (ga < lo) | (ga > hi)
                order = np.argsort(g_ignore, kind="stable")
                iou_a, g_ignore = ious[:, order], g_ignore[order]
                matched = np.zeros((T, len(di)), bool)
                d_ignore = np.zeros((T, len(di)), bool)
                if len(gi):
                    for t, thr in enumerate(IOU_THRS):
                        matched[t], d_ignore[t] = _match(iou_a, g_ignore, thr)
                da = d_area[di]
                unmatched_ok = (da < lo) | (da > hi) | (c in not_exhaustive)
                d_ignore |= ~matched & unmatched_ok[None]
                acc.setdefault((cat_index[c], a), []).append((d_score[di], matched, d_ignore, g_ignore))

    precision = -np.ones((T, R, K, A))
    recall = -np.ones((T, K, A))
    for (k, a), items in acc.items():
        scores = np.concatenate([it[0] for it in items])
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate([it[1] for it in items], axis=1)[:, order]
        d_ignore = np.concatenate([it[2] for it in items], axis=1)[:, order]
        num_gt = int(sum(np.count_nonzero(~it[3]) for it in items))
        if num_gt == 0:
            continue
        tps = np.cumsum(matched & ~d_ignore, axis=1).astype(np.float64)
        fps = np.cumsum(~matched & ~d_ignore, axis=1).astype(np.float64)
        for t in range(T):
            tp, fp = tps[t], fps[t]
            rc = tp / num_gt
            recall[t, k, a] = rc[-1] if len(tp) else 0.0
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # precision envelope
            idx = np.searchsorted(rc, REC_THRS, side="left")
            at = np.zeros(R)
            inside = idx < len(pr)
            at[inside] = pr[idx[inside]]
            precision[t, :, k, a] = at

    def mean(s: np.ndarray) -> float:
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    groups = [[k for k, f in enumerate(frequency) if f == g] for g in FREQUENCIES]
    out = {
        "bbox_AP": mean(precision[..., 0]),
        "bbox_AP50": mean(precision[0, :, :, 0]),
        "bbox_AP75": mean(precision[5, :, :, 0]),
        "bbox_APs": mean(precision[..., 1]),
        "bbox_APm": mean(precision[..., 2]),
        "bbox_APl": mean(precision[..., 3]),
    }
    for name, group in zip(("bbox_APr", "bbox_APc", "bbox_APf"), groups):
        out[name] = mean(precision[:, :, group, 0])
    out[f"bbox_AR@{max_dets}"] = mean(recall[:, :, 0])
    return out


# ------------------------------------------------------------------------------------ repeat-factor sampling
def repeat_factors(labels: Sequence[np.ndarray], oversample_thr: float = 1e-3) -> np.ndarray:
    """mmdet's ``ClassBalancedDataset`` repeat factors (LVIS's class-aware sampling).

    ``f(c)`` = fraction of images containing category ``c``; ``r(c) = max(1, sqrt(t / f(c)))``; an image's factor is
    the largest ``r(c)`` over its categories (1 for an image without objects).

    Args:
        labels: Per image, its object labels (any shape, any ints).
        oversample_thr: ``t``.

    Returns:
        (N,) float64 factors.
    """
    n = len(labels)
    cats = [set(np.asarray(lab).reshape(-1).tolist()) for lab in labels]
    freq: dict[int, int] = {}
    for cs in cats:
        for c in cs:
            freq[c] = freq.get(c, 0) + 1
    rep = {c: max(1.0, math.sqrt(oversample_thr / (k / n))) for c, k in freq.items()}
    return np.array([max((rep[c] for c in cs), default=1.0) for cs in cats], np.float64)


def repeat_indices(factors: Sequence[float]) -> list[int]:
    """Each index ``i`` repeated ``ceil(factors[i])`` times (mmdet's deterministic expansion)."""
    return [i for i, r in enumerate(factors) for _ in range(math.ceil(r))]


class ClassBalancedDataset(torch.utils.data.Dataset):
    """A dataset with its images repeated by :func:`repeat_factors` (the official LVIS train wrapper).

    Args:
        dataset: A :class:`~internimage.detection.datasets.base.DetectionDataset` (its records' labels are used).
        oversample_thr: mmdet's ``oversample_thr`` (1e-3 in the LVIS configs).
    """

    def __init__(self, dataset: DetectionDataset, oversample_thr: float = 1e-3) -> None:
        self.dataset = dataset
        self.factors = repeat_factors([r.labels for r in dataset.records], oversample_thr)
        self.indices = repeat_indices(self.factors)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[self.indices[index]]
