"""OpenImages V6 detection in its own layout, with mmdet 2.x's OpenImages mAP.

Files (as the official config's ``OpenImagesDataset`` reads them)::

    oidv6-train-annotations-bbox.csv / validation-annotations-bbox.csv
        ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside
        (coordinates are fractions of the image size)
    class-descriptions-boxable.csv        LabelName (MID),DisplayName   (no header; its order is the label order)
    bbox_labels_600_hierarchy.json        {"LabelName": root, "Subcategory": [{"LabelName": ..., "Subcategory": ...}]}
    validation-annotations-human-imagelabels-boxable.csv   ImageID,Source,LabelName,Confidence (optional)
    <img_prefix>/<ImageID>.jpg

The metric follows mmdet 2.28's ``OpenImagesDataset.evaluate`` (``iou_thr`` 0.5, ``ioa_thr`` 0.5,
``use_group_of``, ``get_supercategory``, ``filter_labels``, ``denorm_gt_bbox``):

1. ground-truth boxes are scaled to pixels by the image size (``orig_size`` of the detections, else the image
   header), and every box is repeated for each ancestor of its class in the hierarchy;
2. per image, the classes evaluated are the (expanded) box classes plus the image-level labels (all of them,
   whatever their confidence, as mmdet); detections of other classes are dropped, and a detection of class ``c``
   also counts as a detection of each evaluated ancestor of ``c``;
3. :func:`~.mean_ap.eval_map` with group-of matching, AP as the area under the curve, mean over classes with
   objects.

Training targets are the classes as annotated (no expansion), in pixels once the image is read.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import DetectionDataset, Detections, ImageRecord, Sample
from .mean_ap import ClassAP, GroundTruth, eval_map, per_class_detections

__all__ = ["OpenImagesDataset", "read_class_descriptions", "read_hierarchy"]

logger = logging.getLogger(__name__)

_BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf")
_IMAGE_LABEL_COLUMNS = ("ImageID", "LabelName", "Confidence")


def read_class_descriptions(label_file: str | Path) -> tuple[list[str], list[str]]:
    """``(mids, display_names)`` of ``class-descriptions-boxable.csv`` (``MID,Name`` rows, no header), in order."""
    label_file = Path(label_file)
    mids, names = [], []
    with open(label_file, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip():
                raise ValueError(f"{label_file}: line {line_no}: expected 'LabelName,DisplayName', got {row}")
            mid = row[0].strip()
            if mid in mids:
                raise ValueError(f"{label_file}: line {line_no}: class {mid} listed twice")
            mids.append(mid)
            names.append(row[1].strip())
    if not mids:
        raise ValueError(f"{label_file}: no classes")
    return mids, names


def read_hierarchy(hierarchy_file: str | Path, mids: Sequence[str], label_file: str | Path = "") -> np.ndarray:
    """Ancestor matrix of the class hierarchy json: ``tree[c, a]`` is True when ``a`` is ``c`` or an ancestor of it.

    As mmdet: the root node is not a class, nodes without ``LabelName`` are skipped with their subtree, a class
    listed under several parents gets all their ancestors.

    Args:
        hierarchy_file: ``bbox_labels_600_hierarchy.json``.
        mids: Class MIDs (the label order).
        label_file: Named in errors.

    Returns:
        (K, K) bool.

    Raises:
        ValueError: Unreadable json, a malformed node, or a class the label file does not list.
    """
    hierarchy_file = Path(hierarchy_file)
    try:
        tree_json = json.loads(hierarchy_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{hierarchy_file}: not valid json: {err}") from None
    index = {mid: i for i, mid in enumerate(mids)}
    tree = np.eye(len(mids), dtype=bool)
    seen: set[int] = set()

    def walk(node: Any, ancestors: list[int], path: str) -> None:
        if not isinstance(node, dict):
            raise ValueError(f"{hierarchy_file}: {path}: expected an object, got {type(node).__name__}")
        children = node.get("Subcategory", [])
        if not isinstance(children, list):
            raise ValueError(f"{hierarchy_file}: {path}: 'Subcategory' must be a list")
        for k, child in enumerate(children):
            where = f"{path}.Subcategory[{k}]"
            if not isinstance(child, dict):
                raise ValueError(f"{hierarchy_file}: {where}: expected an object, got {type(child).__name__}")
            if "LabelName" not in child:
                continue
            mid = child["LabelName"]
            if mid not in index:
                raise ValueError(
                    f"{hierarchy_file}: {where}: class {mid} is not listed in {label_file or 'the labels'}"
                )
            c = index[mid]
            seen.add(c)
            tree[c, ancestors] = True
            walk(child, [c, *ancestors], f"{where}({mid})")

    walk(tree_json, [], "root")
    missing = [mids[c] for c in range(len(mids)) if c not in seen]
    if missing:
        logger.warning(
            "%s: %d classes of %s are not in the hierarchy (evaluated without parents): %s",
            hierarchy_file, len(missing), label_file, ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
        )  # fmt: skip
    return tree


def _columns(header: list[str], needed: Sequence[str], path: Path) -> dict[str, int]:
    names = [h.strip().lstrip("\ufeff") for h in header]
    missing = [n for n in needed if n not in names]
    if missing:
        raise ValueError(f"{path}: line 1: header lacks column(s) {', '.join(missing)} (got {','.join(names)})")
    return {n: names.index(n) for n in needed}


class OpenImagesDataset(DetectionDataset):
    """OpenImages V6 detection (mmdet 2.x ``OpenImagesDataset`` semantics).

    Args:
        ann_file: Box CSV (``*-annotations-bbox.csv``).
        label_file: ``class-descriptions-boxable.csv``.
        hierarchy_file: Hierarchy json (None: no expansion, ``get_supercategory`` must be False).
        image_level_ann_file: Image-level labels CSV, or None (then only box classes are evaluated per image).
        img_prefix: Folder of ``<ImageID>.jpg``.
        transforms: See :class:`~.base.DetectionDataset`.
        train: Training filter.
        classes: Subset of classes (display names or MIDs) as labels 1..K in this order; boxes and image-level
            labels of the others are dropped and the hierarchy is restricted to the subset. Default: all.
        get_supercategory: Expand ground truth and detections up the hierarchy at evaluation.
        use_group_of: Group-of matching at evaluation.
        filter_labels: Drop detections of classes not annotated on the image.
        iou_thr, ioa_thr: Match thresholds.
        min_size: See :class:`~.base.DetectionDataset`.

    Records are ``normalized`` with unknown size (0, 0); ``extra`` holds ``name`` (the ImageID), ``group_of``
    (K,) bool and ``image_level_labels`` (L,) int64 in 1..K.
    """

    def __init__(
        self,
        ann_file: str | Path,
        label_file: str | Path,
        hierarchy_file: str | Path | None = None,
        image_level_ann_file: str | Path | None = None,
        img_prefix: str | Path = ".",
        transforms: Callable[[Any, dict[str, Any]], Sample | None] | None = None,
        train: bool = False,
        classes: Sequence[str] | None = None,
        get_supercategory: bool = True,
        use_group_of: bool = True,
        filter_labels: bool = True,
        iou_thr: float = 0.5,
        ioa_thr: float = 0.5,
        min_size: int = 32,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.label_file = Path(label_file)
        mids, names = read_class_descriptions(label_file)
        if hierarchy_file is None and get_supercategory:
            raise ValueError("get_supercategory needs a hierarchy_file")
        full_tree = read_hierarchy(hierarchy_file, mids, label_file) if hierarchy_file is not None else None
        if classes is None:
            selected = list(range(len(mids)))
        else:
            lookup = {mid: i for i, mid in enumerate(mids)} | {n: i for i, n in reversed(list(enumerate(names)))}
            unknown = [c for c in classes if c not in lookup]
            if unknown:
                raise ValueError(f"{label_file}: classes not listed: {', '.join(unknown)}")
            selected = [lookup[c] for c in classes]
            if len(set(selected)) != len(selected):
                raise ValueError(f"classes name a class twice: {list(classes)}")
        # full index -> label 1..K (0: not selected)
        label_of = np.zeros(len(mids), np.int64)
        label_of[selected] = np.arange(1, len(selected) + 1)
        self.mids = [mids[i] for i in selected]
        k = len(selected)
        self.tree = full_tree[np.ix_(selected, selected)] if full_tree is not None else np.eye(k, dtype=bool)
        self.get_supercategory = get_supercategory
        self.use_group_of = use_group_of
        self.filter_labels = filter_labels
        self.iou_thr = iou_thr
        self.ioa_thr = ioa_thr
        mid_index = {mid: i for i, mid in enumerate(mids)}
        records = self._read_boxes(self.ann_file, mid_index, label_of, Path(img_prefix))
        if image_level_ann_file is not None:
            self._read_image_labels(Path(image_level_ann_file), mid_index, label_of, records)
        self.has_image_labels = image_level_ann_file is not None
        super().__init__(records, [names[i] for i in selected], self.ann_file, transforms, train, min_size)

    @staticmethod
    def _read_boxes(
        ann_file: Path, mid_index: dict[str, int], label_of: np.ndarray, img_prefix: Path
    ) -> list[ImageRecord]:
        rows: dict[str, tuple[list[list[float]], list[int], list[bool]]] = {}
        with open(ann_file, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{ann_file}: empty file")
            col = _columns(header, _BOX_COLUMNS, ann_file)
            width = max(col.values()) + 1
            for line_no, row in enumerate(reader, 2):
                if not row:
                    continue
                if len(row) < width:
                    raise ValueError(f"{ann_file}: line {line_no}: {len(row)} fields, expected {len(header)}")
                image, mid = row[col["ImageID"]].strip(), row[col["LabelName"]].strip()
                if mid not in mid_index:
                    raise ValueError(f"{ann_file}: line {line_no} (image {image}): unknown class {mid}")
                try:
                    x1, x2, y1, y2 = (float(row[col[n]]) for n in ("XMin", "XMax", "YMin", "YMax"))
                    group = int(row[col["IsGroupOf"]]) == 1
                except ValueError:
                    raise ValueError(f"{ann_file}: line {line_no} (image {image}): malformed row {row}") from None
                if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
                    raise ValueError(
                        f"{ann_file}: line {line_no} (image {image}): box (XMin, XMax, YMin, YMax) = "
                        f"{(x1, x2, y1, y2)} is empty or outside the image (fractions in [0, 1])"
                    )
                boxes, labels, groups = rows.setdefault(image, ([], [], []))
                label = int(label_of[mid_index[mid]])
                if label:
                    boxes.append([x1, y1, x2, y2])
                    labels.append(label)
                    groups.append(group)
        if not rows:
            raise ValueError(f"{ann_file}: no boxes")
        return [
            ImageRecord(
                image_id=i,
                path=img_prefix / f"{image}.jpg",
                height=0,
                width=0,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int64),
                normalized=True,
                extra={
                    "name": image,
                    "group_of": np.asarray(groups, bool),
                    "image_level_labels": np.zeros(0, np.int64),
                },
            )
            for i, (image, (boxes, labels, groups)) in enumerate(rows.items())
        ]

    @staticmethod
    def _read_image_labels(
        path: Path, mid_index: dict[str, int], label_of: np.ndarray, records: list[ImageRecord]
    ) -> None:
        by_name = {r.extra["name"]: [] for r in records}
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file")
            col = _columns(header, _IMAGE_LABEL_COLUMNS, path)
            width = max(col.values()) + 1
            for line_no, row in enumerate(reader, 2):
                if not row:
                    continue
                if len(row) < width:
                    raise ValueError(f"{path}: line {line_no}: {len(row)} fields, expected {len(header)}")
                image, mid = row[col["ImageID"]].strip(), row[col["LabelName"]].strip()
                if mid not in mid_index:
                    raise ValueError(f"{path}: line {line_no} (image {image}): unknown class {mid}")
                try:
                    float(row[col["Confidence"]])
                except ValueError:
                    raise ValueError(f"{path}: line {line_no} (image {image}): malformed row {row}") from None
                label = int(label_of[mid_index[mid]])
                if image in by_name and label:
                    by_name[image].append(label)
        for r in records:
            r.extra["image_level_labels"] = np.asarray(by_name[r.extra["name"]], np.int64)

    def _image_size(self, record: ImageRecord, entry: dict[str, Any] | None) -> tuple[int, int]:
        if entry is not None and entry.get("orig_size") is not None:
            h, w = (int(v) for v in entry["orig_size"])
            return h, w
        from PIL import Image

        try:
            with Image.open(record.path) as img:
                w, h = img.size
        except (OSError, SyntaxError, ValueError) as err:
            raise OSError(
                f"cannot read image {record.path} (image {record.extra['name']} of {self.source}): {err}"
            ) from err
        return h, w

    def _prepare(self, record: ImageRecord, entry: dict[str, Any] | None) -> tuple[GroundTruth, list[np.ndarray]]:
        """Ground truth in pixels, expanded up the hierarchy, and the detections processed as mmdet does."""
        k = self.num_classes
        h, w = self._image_size(record, entry)
        boxes = record.boxes.reshape(-1, 4) * np.array([w, h, w, h], np.float32)
        labels = record.labels - 1
        group = record.extra["group_of"]
        if self.get_supercategory:
            expanded = [(j, int(a)) for j, c in enumerate(labels) for a in np.flatnonzero(self.tree[c])]
            rows = np.asarray([j for j, _ in expanded], np.int64)
            boxes, group = boxes[rows].reshape(-1, 4), group[rows]
            labels = np.asarray([a for _, a in expanded], np.int64)
        gt = GroundTruth(boxes.astype(np.float32), labels, group_of=group)
        dets = per_class_detections(entry, k)
        allowed = set(labels.tolist())
        if self.has_image_labels:
            allowed |= set((record.extra["image_level_labels"] - 1).tolist())
        out = list(dets)
        empty = np.zeros((0, 5), np.float32)
        tree = self.tree if self.get_supercategory else np.eye(k, dtype=bool)
        for c in (c for c in range(k) if len(dets[c])):
            for a in np.flatnonzero(tree[c]):
                if a in allowed and a != c and self.get_supercategory:
                    out[a] = np.concatenate([out[a], dets[c]])
                elif a not in allowed and self.filter_labels:
                    out[a] = empty
        return gt, out

    def evaluate_per_class(self, detections: Detections) -> tuple[float, list[ClassAP]]:
        """mAP and per-class AP of ``detections`` (see :meth:`evaluate`)."""
        prepared = [self._prepare(r, detections.get(r.image_id)) for r in self.records]
        return eval_map(
            [d for _, d in prepared],
            [g for g, _ in prepared],
            self.num_classes,
            self.iou_thr,
            "area",
            use_group_of=self.use_group_of,
            ioa_thr=self.ioa_thr,
        )

    def evaluate(self, detections: Detections) -> dict[str, float]:
        """OpenImages mAP as mmdet 2.28's ``OpenImagesDataset.evaluate``.

        Args:
            detections: image id -> ``boxes`` (n, 4) xyxy original pixels, ``scores`` (n,), ``labels`` (n,) 1..K,
                ``orig_size`` (h, w) (images without an entry: no detections, size read from the file).

        Returns:
            ``{"mAP": m, "AP50": m}`` (mmdet rounds ``AP50`` to 3 decimals; here both are exact).
        """
        mean_ap, per_class = self.evaluate_per_class(detections)
        evaluated = sum(r.num_gts > 0 for r in per_class)
        logger.debug("OpenImages mAP %.4f over %d classes with objects", mean_ap, evaluated)
        return {"mAP": mean_ap, "AP50": mean_ap}
