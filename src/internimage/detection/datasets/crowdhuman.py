"""CrowdHuman: full-body person boxes with ignore regions, read from the ``.odgt`` files or the converter's json.

Layout (the official ``configs/crowd_human`` README)::

    data/CrowdHuman/
        annotations/annotation_{train,val}.odgt     as distributed
        annotations/annotation_{train,val}.json     written by the original's tools/create_crowd_anno.py
        Images/<ID>.jpg

``.odgt``: one JSON object per line, ``{"ID": str, "gtboxes": [{"tag": "person" | "mask", "fbox": [x, y, w, h],
"vbox": ..., "hbox": ..., "extra": {"ignore": 0 | 1, ...}}, ...]}``. The full-body ``fbox`` is the object; a box
tagged anything but ``person`` (CrowdHuman's ``mask``: crowds, reflections, statues) or with ``extra.ignore`` != 0 is
an ignore region. The converter's json is COCO-style over the same records (image ``id`` = record index, ``bbox`` =
``fbox``, ``iscrowd`` = 1 for ignore regions); an annotation with ``ignore`` set is skipped as mmdet does. Image ids
are the record index for ``.odgt`` too, so both files give the same ids; the ``.odgt`` ``ID`` is in ``extra["ID"]``.

Full-body boxes of truncated people reach past the image: they are clipped to it (the evaluation toolkit clips
too). Records with a zero or negative width or height are dropped like the converter does (one warning counts them),
and so are boxes under 1 pixel (mmdet's train filter); a box that does not touch the image at all is an error naming
the file and the record.

Ignore regions are no negatives in training (``target["ignore_boxes"]``) and are ignored in evaluation.
:meth:`CrowdHumanDataset.evaluate` is the CrowdHuman toolkit's (CrowdDet's ``APMRToolkits``, full-body mode):
detections clipped to the image, sorted by score, greedily matched to the free person box of largest IoU > 0.5,
else dropped when their intersection over their own area with an ignore region is > 0.5, else false positives;
``AP`` is the trapezoid area under the precision/recall points of the ranked list (the toolkit's rule: from the
first point, without an anchor at recall 0), ``mMR`` the log-average miss rate at the nine FPPI points 10^-2..10^0
(Dollar et al.'s MR^-2), ``recall`` the final recall. JI is not computed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import DetectionDataset, Detections, ImageRecord, Sample

__all__ = ["MR_FPPI_POINTS", "CrowdHumanDataset", "crowdhuman_ap_mr", "match_image"]

logger = logging.getLogger(__name__)

#: The toolkit's nine reference FPPI points from 10^-2 to 10^0 (as it writes them).
MR_FPPI_POINTS = (0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000)
IOU_THR = 0.5
_EPS = 1e-6  # the toolkit's IoU / IoA denominators


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _image_size(path: Path, where: str) -> tuple[int, int]:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as err:  # PIL raises several kinds
        raise OSError(f"{where}: cannot read image {path}: {err}") from err
    return h, w


class CrowdHumanDataset(DetectionDataset):
    """CrowdHuman's person class from ``annotation_*.odgt`` or the converter's ``annotation_*.json``.

    Args:
        ann_file: ``.odgt`` (read as distributed) or ``.json`` (COCO-style, the original's converter).
        img_dir: The ``Images`` folder.
        transforms: ``(image, target) -> (image, target) | None``; targets carry ``ignore_boxes`` (M, 4).
        train: Keep only images with person boxes (mmdet's ``filter_empty_gt``) and sides >= ``min_size``.
        min_size: mmdet's minimum image side in training.

    Raises:
        FileNotFoundError: the annotation file or an image is missing.
        ValueError: one line naming the file and the record (``file:line`` for ``.odgt``).
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transforms: Callable[[torch.Tensor, dict[str, Any]], Sample | None] | None = None,
        train: bool = False,
        min_size: int = 32,
    ) -> None:
        path, img_dir = Path(ann_file), Path(img_dir)
        if not path.is_file():
            raise FileNotFoundError(f"CrowdHuman annotation file not found: {path}")
        self._dropped = 0
        if path.suffix == ".odgt":
            records = self._read_odgt(path, img_dir)
        elif path.suffix == ".json":
            records = self._read_json(path, img_dir)
        else:
            raise ValueError(f"{path}: CrowdHuman annotations must be a .odgt or a converted .json file")
        if self._dropped:
            logger.warning("%s: dropped %d box(es) with a width or height under 1 pixel", path, self._dropped)
        super().__init__(records, ["person"], path, transforms, train, min_size)

    # ------------------------------------------------------------------------------------------ readers
    def _boxes(self, raw: list[tuple[list[float], bool]], h: int, w: int, where: str) -> tuple[np.ndarray, ...]:
        """xywh (+ ignore flag) -> clipped xyxy person boxes (K, 4) and ignore regions (M, 4), float32."""
        boxes, ignore = [], []
        for j, (box, ign) in enumerate(raw):
            x, y, bw, bh = box
            if bw < 1 or bh < 1:
                self._dropped += 1
                continue
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
            if x2 <= x1 or y2 <= y1:
                raise ValueError(f"{where}: box #{j} [x, y, w, h] = {box} lies outside the {w}x{h} image")
            (ignore if ign else boxes).append([x1, y1, x2, y2])
        as_arr = lambda b: np.array(b, np.float32).reshape(-1, 4)  # noqa: E731
        return as_arr(boxes), as_arr(ignore)

    def _read_odgt(self, path: Path, img_dir: Path) -> list[ImageRecord]:
        records = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where}: not a JSON object ({err.msg}, column {err.colno})") from err
                if not isinstance(rec, dict) or not isinstance(rec.get("ID"), str) or not rec["ID"]:
                    raise ValueError(f"{where}: record has no 'ID' string: {_short(rec)}")
                where = f"{where} (ID {rec['ID']})"
                gtboxes = rec.get("gtboxes")
                if not isinstance(gtboxes, list):
                    raise ValueError(f"{where}: no 'gtboxes' list")
                raw = []
                for j, gb in enumerate(gtboxes):
                    if not isinstance(gb, dict) or not isinstance(gb.get("tag"), str):
                        raise ValueError(f"{where}: gtboxes #{j} has no 'tag' string: {_short(gb)}")
                    box = gb.get("fbox")
                    if not isinstance(box, list) or len(box) != 4 or not all(_is_num(v) for v in box):
                        raise ValueError(
                            f"{where}: gtboxes #{j}: 'fbox' must be 4 numbers [x, y, w, h], got {_short(box)}"
                        )
                    extra = gb.get("extra") if isinstance(gb.get("extra"), dict) else {}
                    raw.append(([float(v) for v in box], gb["tag"] != "person" or extra.get("ignore", 0) != 0))
                image = img_dir / f"{rec['ID']}.jpg"
                if isinstance(rec.get("height"), int) and isinstance(rec.get("width"), int):
                    h, w = rec["height"], rec["width"]
                else:
                    h, w = _image_size(image, where)
                boxes, ignore = self._boxes(raw, h, w, where)
                labels = np.ones(len(boxes), np.int64)
                records.append(ImageRecord(len(records), image, h, w, boxes, labels, ignore, extra={"ID": rec["ID"]}))
        return records

    def _read_json(self, path: Path, img_dir: Path) -> list[ImageRecord]:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise ValueError(f"{path} is not a COCO-style CrowdHuman file: no '{key}' list")
        person = [c.get("id") for c in data["categories"] if isinstance(c, dict) and c.get("name") == "person"]
        if len(person) != 1:
            raise ValueError(f"{path}: 'categories' must hold one 'person' category, got {_short(data['categories'])}")
        images: dict[int, dict[str, Any]] = {}
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or not isinstance(im.get("id"), int) or im["id"] in images:
                raise ValueError(f"{path}: image #{i} has no integer 'id' or repeats one: {_short(im)}")
            if not isinstance(im.get("file_name"), str):
                raise ValueError(f"{path}: image {im['id']} has no 'file_name'")
            for key in ("height", "width"):
                if not isinstance(im.get(key), int) or im[key] < 1:
                    raise ValueError(f"{path}: image {im['id']}: '{key}' must be a positive integer")
            images[im["id"]] = im
        raw: dict[int, list[tuple[list[float], bool]]] = {i: [] for i in images}
        for i, ann in enumerate(data["annotations"]):
            where = f"{path}: annotation {ann.get('id', f'#{i}') if isinstance(ann, dict) else f'#{i}'}"
            if not isinstance(ann, dict) or ann.get("image_id") not in images:
                raise ValueError(f"{where}: image_id is not an image of the file: {_short(ann)}")
            if ann.get("category_id") != person[0]:
                raise ValueError(f"{where}: category_id {_short(ann.get('category_id'))} is not 'person' ({person[0]})")
            box = ann.get("bbox")
            if not isinstance(box, list) or len(box) != 4 or not all(_is_num(v) for v in box):
                raise ValueError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {_short(box)}")
            if ann.get("ignore", False):
                continue
            raw[ann["image_id"]].append(([float(v) for v in box], bool(ann.get("iscrowd", 0))))
        records = []
        for im in data["images"]:
            where = f"{path}: image {im['id']} ({im['file_name']})"
            boxes, ignore = self._boxes(raw[im["id"]], im["height"], im["width"], where)
            labels = np.ones(len(boxes), np.int64)
            image = img_dir / im["file_name"]
            records.append(ImageRecord(im["id"], image, im["height"], im["width"], boxes, labels, ignore))
        return records

    # ------------------------------------------------------------------------------------------ metric
    def evaluate(self, detections: Detections) -> dict[str, float]:
        """The CrowdHuman toolkit's AP, MR^-2 and recall (see the module doc).

        Args:
            detections: image id -> ``boxes`` (n, 4) xyxy original pixels and ``scores`` (n,); labels are not used
                (one class). Images without an entry have no detections; unknown image ids are ignored (logged).

        Returns:
            ``AP``, ``mMR`` (lower is better) and ``recall``, in [0, 1].
        """
        unknown = set(detections) - {r.image_id for r in self.records}
        if unknown:
            logger.warning("%d detected image id(s) are not images of %s: ignored", len(unknown), self.source)
        scored: list[tuple[np.ndarray, np.ndarray]] = []
        num_gt = 0
        for r in self.records:
            num_gt += len(r.boxes)
            d = detections.get(r.image_id)
            if d is None:
                continue
            boxes = _numpy(d["boxes"]).astype(np.float64).reshape(-1, 4)
            scores = _numpy(d["scores"]).astype(np.float64).reshape(-1)
            scored.append(match_image(boxes, scores, r.boxes, r.ignore, r.height, r.width))
        if scored:
            scores = np.concatenate([s for s, _ in scored])
            tp = np.concatenate([t for _, t in scored])
        else:
            scores, tp = np.zeros(0), np.zeros(0, bool)
        return crowdhuman_ap_mr(scores, tp, num_gt, len(self.records))


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _clip_toolkit(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """The toolkit's clip: x1 to [0, w - 1], y1 to [0, h - 1], x2 to [0, w], y2 to [0, h]."""
    out = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), w - 1)
    out[:, 1] = np.minimum(np.maximum(out[:, 1], 0), h - 1)
    out[:, 2] = np.maximum(np.minimum(out[:, 2], w), 0)
    out[:, 3] = np.maximum(np.minimum(out[:, 3], h), 0)
    return out


def _overlaps(dt: np.ndarray, gt: np.ndarray, iou: bool) -> np.ndarray:
    """(n, m) IoU (or intersection over the detection's area) with the toolkit's epsilon."""
    iw = np.minimum(dt[:, None, 2], gt[None, :, 2]) - np.maximum(dt[:, None, 0], gt[None, :, 0])
    ih = np.minimum(dt[:, None, 3], gt[None, :, 3]) - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    d_area = ((dt[:, 2] - dt[:, 0]) * (dt[:, 3] - dt[:, 1]))[:, None]
    if not iou:
        return inter / (d_area + _EPS)
    g_area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None]
    return inter / (d_area + g_area - inter + _EPS)


def match_image(
    boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, ignore: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The toolkit's per-image matching (Caltech rule) of one image's detections.

    Args:
        boxes: (n, 4) xyxy detections; scores: (n,).
        gt: (m, 4) xyxy person boxes; ignore: (k, 4) xyxy ignore regions.
        height, width: Image size (detections and boxes are clipped to it).

    Returns:
        Scores (p,) and true-positive flags (p,) of the detections that count, by decreasing score (detections
        absorbed by an ignore region are left out).
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    dt = _clip_toolkit(boxes, height, width)[order]
    scores = np.asarray(scores, np.float64)[order]
    gts = _clip_toolkit(np.concatenate([np.asarray(gt).reshape(-1, 4), np.asarray(ignore).reshape(-1, 4)]), height,
                        width)  # fmt: skip
    is_person = np.arange(len(gts)) < len(np.asarray(gt).reshape(-1, 4))
    iou, ioa = _overlaps(dt, gts, True), _overlaps(dt, gts, False)
    taken = np.zeros(len(gts), bool)
    keep, tp = np.zeros(len(dt), bool), np.zeros(len(dt), bool)
    for i in range(len(dt)):
        best, j_best = IOU_THR, -1
        for j in range(len(gts)):
            if taken[j]:
                continue
            if is_person[j]:
                if iou[i, j] > best:
                    best, j_best = iou[i, j], j
            elif j_best >= 0:
                break
            elif ioa[i, j] > IOU_THR:
                best, j_best = ioa[i, j], j
        if j_best < 0:
            keep[i] = True  # false positive
        elif is_person[j_best]:
            taken[j_best] = True
            keep[i] = tp[i] = True
    return scores[keep], tp[keep]


def crowdhuman_ap_mr(scores: np.ndarray, tp: np.ndarray, num_gt: int, num_images: int) -> dict[str, float]:
    """AP, MR^-2 and recall of the ranked detections of a whole set (the toolkit's ``eval_AP`` / ``eval_MR``).

    Args:
        scores: (p,) scores of the counted detections (all images); tp: (p,) bool true positives.
        num_gt: Person boxes (ignore regions excluded).
        num_images: Images of the set (for FPPI).

    Returns:
        ``AP``, ``mMR`` and ``recall``; with no person box AP and recall are 0 and mMR 1.
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.asarray(tp, bool)[order]
    if num_gt == 0 or len(tp) == 0:
        return {"AP": 0.0, "mMR": 1.0, "recall": 0.0}
    tps = np.cumsum(tp).astype(np.float64)
    fps = np.cumsum(~tp).astype(np.float64)
    rec = tps / num_gt
    prec = tps / (tps + fps)
    ap = float(np.sum((rec[1:] - rec[:-1]) * (prec[1:] + prec[:-1]) / 2))
    fppi = fps / num_images
    miss = 1.0 - rec
    idx = [int(np.argmax(fppi >= p)) if np.any(fppi >= p) else len(fppi) - 1 for p in MR_FPPI_POINTS]
    with np.errstate(divide="ignore"):
        mr = float(np.exp(np.mean(np.log(miss[idx]))))
    return {"AP": ap, "mMR": mr, "recall": float(rec[-1])}
