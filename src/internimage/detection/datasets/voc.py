"""Pascal VOC 2007 / 2012 in its own layout, with mmdet 2.x's VOC mAP.

Layout (``root`` is ``VOCdevkit/VOC2007`` or ``VOCdevkit/VOC2012``)::

    root/ImageSets/Main/<split>.txt   one image id per line
    root/Annotations/<id>.xml         <size>, <object><name>, <difficult>, <bndbox> (1-based pixels)
    root/JPEGImages/<id>.jpg

As mmdet's ``XMLDataset``: coordinates are truncated to integers and shifted by -1 (0-based, the box spans
``x2 - x1 + 1`` pixels), ``difficult`` objects become ignore regions of their class, the metric is
:func:`~.mean_ap.eval_map` at IoU 0.5 with the legacy ``+1`` convention, AP as the VOC07 11-point mean for 2007 and
the area under the curve otherwise (mmdet picks the year from the folder name, as here).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import DetectionDataset, Detections, ImageRecord, Sample
from .mean_ap import ClassAP, GroundTruth, eval_map, per_class_detections

__all__ = ["VOC_CLASSES", "VOCDataset"]

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _text(node: ET.Element, tag: str, xml_path: Path, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{xml_path}: {what} has no <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, xml_path: Path, what: str) -> float:
    text = _text(node, tag, xml_path, what)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{xml_path}: {what}: <{tag}> is not a number: {text!r}") from None


class VOCDataset(DetectionDataset):
    """Pascal VOC detection (mmdet 2.x ``VOCDataset`` semantics).

    Args:
        root: ``VOCdevkit/VOC20xx`` folder (holding ``Annotations``, ``JPEGImages``, ``ImageSets/Main``).
        split: Name of the image list in ``ImageSets/Main`` (``'trainval'``, ``'test'``, ...) or a path to one.
        transforms: See :class:`~.base.DetectionDataset`.
        train: Training filter (images without objects or smaller than ``min_size`` dropped).
        classes: Class names (labels 1..K in this order); default the 20 VOC classes. Objects of other VOC classes
            are skipped (a subset, as mmdet's ``classes=``); names that are neither are errors.
        year: 2007 (11-point AP) or 2012 (area AP); by default read from ``root`` (``VOC2007`` / ``VOC2012`` in
            the path, as mmdet does).
        min_size: See :class:`~.base.DetectionDataset`.

    Records: ``boxes`` (K, 4) float32 0-based xyxy, ``ignore`` (M, 4) the difficult objects, ``extra`` holds
    ``name`` (the VOC id) and ``ignore_labels`` (M,) int64 in 1..K.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Path = "test",
        transforms: Callable[[Any, dict[str, Any]], Sample | None] | None = None,
        train: bool = False,
        classes: Sequence[str] | None = None,
        year: int | None = None,
        min_size: int = 32,
    ) -> None:
        root = Path(root)
        self.year = self._year(root, year)
        self.eval_mode = "11points" if self.year == 2007 else "area"
        class_names = list(VOC_CLASSES if classes is None else classes)
        if len(set(class_names)) != len(class_names) or not class_names:
            raise ValueError(f"classes must be distinct names, got {class_names}")
        split_file = Path(split) if str(split).endswith(".txt") else root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"VOC image list not found: {split_file}")
        ids = []
        for line in split_file.read_text().splitlines():
            if line.strip():
                ids.append(line.split()[0])
        known = set(VOC_CLASSES) | set(class_names)
        label_of = {name: i + 1 for i, name in enumerate(class_names)}
        records = [self._read(root, image_id, name, split_file, known, label_of) for image_id, name in enumerate(ids)]
        super().__init__(records, class_names, split_file, transforms, train, min_size)

    @staticmethod
    def _year(root: Path, year: int | None) -> int:
        if year is None:
            text = str(root.resolve())
            year = 2007 if "VOC2007" in text else 2012 if "VOC2012" in text else None
            if year is None:
                raise ValueError(f"{root}: cannot tell the VOC year from the path (VOC2007 / VOC2012): pass year=")
        if year not in (2007, 2012):
            raise ValueError(f"VOC year must be 2007 or 2012, got {year}")
        return year

    @staticmethod
    def _read(
        root: Path, image_id: int, name: str, split_file: Path, known: set[str], label_of: dict[str, int]
    ) -> ImageRecord:
        xml_path = root / "Annotations" / f"{name}.xml"
        image_path = root / "JPEGImages" / f"{name}.jpg"
        if not xml_path.is_file():
            raise ValueError(f"{split_file}: image {name!r} has no annotation file {xml_path}")
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            raise ValueError(f"{xml_path}: not valid XML: {err}") from None
        size = tree.find("size")
        width = height = 0
        if size is not None and size.find("width") is not None:
            width = int(_number(size, "width", xml_path, "<size>"))
            height = int(_number(size, "height", xml_path, "<size>"))
        if width <= 0 or height <= 0:
            width, height = _image_size(image_path, xml_path)
        boxes, labels, ignore, ignore_labels = [], [], [], []
        for k, obj in enumerate(tree.findall("object")):
            what = f"object {k}"
            cls = _text(obj, "name", xml_path, what)
            what = f"object {k} ({cls})"
            if cls not in known:
                raise ValueError(f"{xml_path}: {what}: unknown class {cls!r}")
            if cls not in label_of:
                continue  # a VOC class outside the chosen subset
            difficult = obj.find("difficult")
            hard = difficult is not None and difficult.text is not None and int(float(difficult.text.strip())) != 0
            bnd = obj.find("bndbox")
            if bnd is None:
                raise ValueError(f"{xml_path}: {what} has no <bndbox>")
            x1, y1, x2, y2 = (int(_number(bnd, tag, xml_path, what)) for tag in ("xmin", "ymin", "xmax", "ymax"))
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise ValueError(
                    f"{xml_path}: {what}: box (xmin, ymin, xmax, ymax) = {(x1, y1, x2, y2)} is empty or outside the "
                    f"{width}x{height} image"
                )
            box = [x1 - 1, y1 - 1, x2 - 1, y2 - 1]  # mmdet: 1-based pixel indices -> 0-based
            (ignore if hard else boxes).append(box)
            (ignore_labels if hard else labels).append(label_of[cls])
        return ImageRecord(
            image_id=image_id,
            path=image_path,
            height=height,
            width=width,
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            ignore=np.asarray(ignore, np.float32).reshape(-1, 4),
            extra={"name": name, "ignore_labels": np.asarray(ignore_labels, np.int64)},
        )

    def ground_truth(self) -> list[GroundTruth]:
        """Per record: objects and difficult regions, 0-based labels (the input of :func:`~.mean_ap.eval_map`)."""
        return [GroundTruth(r.boxes, r.labels - 1, r.ignore, r.extra["ignore_labels"] - 1) for r in self.records]

    def evaluate_per_class(self, detections: Detections, iou_thr: float = 0.5) -> tuple[float, list[ClassAP]]:
        """mAP and per-class AP of ``detections`` (see :meth:`evaluate`)."""
        dets = [per_class_detections(detections.get(r.image_id), self.num_classes) for r in self.records]
        return eval_map(dets, self.ground_truth(), self.num_classes, iou_thr, self.eval_mode, legacy_coordinates=True)

    def evaluate(self, detections: Detections) -> dict[str, float]:
        """VOC mAP at IoU 0.5 (11-point for 2007, area otherwise), as mmdet's ``VOCDataset.evaluate``.

        Args:
            detections: image id -> ``boxes`` (n, 4) xyxy original pixels, ``scores`` (n,), ``labels`` (n,) 1..K.

        Returns:
            ``{"mAP": m, "AP50": m}`` (mmdet rounds ``AP50`` to 3 decimals; here both are exact).
        """
        mean_ap, per_class = self.evaluate_per_class(detections)
        for name, result in zip(self.class_names, per_class):
            logger.debug("VOC%d %s: AP %.4f (%d objects, %d detections)", self.year, name, result.ap,
                         result.num_gts, result.num_dets)  # fmt: skip
        return {"mAP": mean_ap, "AP50": mean_ap}


def _image_size(image_path: Path, xml_path: Path) -> tuple[int, int]:
    """(width, height) from the image header, for XMLs without ``<size>``."""
    from PIL import Image

    try:
        with Image.open(image_path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{xml_path}: no <size> and the image cannot be read: {image_path}: {err}") from None
