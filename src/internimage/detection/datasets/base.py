"""The shared shape of the detection datasets beyond COCO (VOC, LVIS, OpenImages, CrowdHuman).

A dataset reads and validates its annotations once, when it opens, into one :class:`ImageRecord` per image (a
broken record is a one-line ``ValueError`` naming the file and the record), and evaluates detections with the
dataset's own metric (:meth:`DetectionDataset.evaluate`), the same function in the training loop and in ``eval``.
Samples are those of :class:`~internimage.detection.data.CocoDetection`: ``(image uint8 (3, H, W), target)`` with
``boxes`` (K, 4) xyxy pixels, ``labels`` (K,) in 1..K, ``image_id`` and ``orig_size``, so the same transforms,
collate and detectors take them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.datasets import load_image

__all__ = ["DetectionDataset", "Detections", "ImageRecord", "Sample"]

Sample = tuple[torch.Tensor, dict[str, Any]]
#: Per image id: ``boxes`` (n, 4) xyxy in original pixels, ``scores`` (n,), ``labels`` (n,) in 1..K (tensors or
#: arrays), and ``orig_size`` (h, w).
Detections = dict[int, dict[str, Any]]
_MAX_REDRAWS = 100


@dataclass
class ImageRecord:
    """One image and its objects, validated.

    Attributes:
        image_id: Unique id (the key of :data:`Detections`).
        path: Image file.
        height, width: Image size in pixels; 0 when the annotations do not say (read from the image on load).
        boxes: (K, 4) float32 xyxy, pixels (or fractions of the image size when ``normalized``).
        labels: (K,) int64 in 1..num_classes.
        ignore: (M, 4) float32 xyxy regions that are neither objects nor background (VOC ``difficult``, CrowdHuman
            ignore regions); same units as ``boxes``.
        normalized: Boxes are fractions of the image size (OpenImages CSVs).
        extra: Dataset-specific fields (e.g. OpenImages group-of flags, LVIS negative categories).
    """

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    normalized: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class DetectionDataset(torch.utils.data.Dataset):
    """Records + transforms -> samples; subclasses read their format into records and implement :meth:`evaluate`.

    Args:
        records: One per image (validated by the subclass).
        class_names: Names of labels 1..K.
        source: What errors name (the annotation file or folder).
        transforms: Callable ``(image, target) -> (image, target) | None`` (None rejects the sample: redrawn).
        train: Drop images without objects and images smaller than ``min_size`` (mmdet's train filter).
        min_size: Minimum image side kept in training (where the size is known up front).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        source: str | Path,
        transforms: Callable[[torch.Tensor, dict[str, Any]], Sample | None] | None = None,
        train: bool = False,
        min_size: int = 32,
    ) -> None:
        self.source = Path(source)
        self.class_names = list(class_names)
        self.transforms = transforms
        records = list(records)
        if train:
            records = [r for r in records if len(r.boxes) and (r.height == 0 or min(r.height, r.width) >= min_size)]
        if not records:
            raise ValueError(f"{self.source} has no usable images")
        missing = next((r.path for r in records if not r.path.is_file()), None)
        if missing is not None:
            raise FileNotFoundError(f"{self.source}: image file not found: {missing}")
        self.records = records
        # mmdet's aspect-ratio groups (width > height), for redraws; unknown sizes count as wide.
        wide = [r.width >= r.height for r in records]
        self._orientation = {flag: [i for i, w in enumerate(wide) if w == flag] for flag in (True, False)}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> torch.Tensor:
        """(3, H, W) uint8 RGB; an unreadable file is an ``OSError`` naming it."""
        record = self.records[index]
        try:
            arr = np.asarray(load_image(record.path, "RGB"))
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise OSError(
                f"cannot read image {record.path} (image id {record.image_id} of {self.source}): {err}"
            ) from err
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        h, w = image.shape[-2:]
        if record.height and (record.height, record.width) != (h, w):
            raise ValueError(
                f"{record.path}: image is {(h, w)}, {self.source} says (height, width) = "
                f"{(record.height, record.width)}"
            )
        return image

    def load_target(self, index: int, size: tuple[int, int]) -> dict[str, Any]:
        """Targets of image ``index`` in pixels of its original ``size`` (h, w)."""
        record = self.records[index]
        h, w = size
        scale = np.array([w, h, w, h], np.float32) if record.normalized else np.ones(4, np.float32)
        return {
            "boxes": torch.from_numpy(record.boxes.reshape(-1, 4) * scale).float(),
            "labels": torch.from_numpy(record.labels.reshape(-1)).long(),
            "ignore_boxes": torch.from_numpy(record.ignore.reshape(-1, 4) * scale).float(),
            "image_id": int(record.image_id),
            "orig_size": (int(h), int(w)),
        }

    def __getitem__(self, index: int) -> Sample:
        for _ in range(_MAX_REDRAWS):
            image = self.load_image(index)
            target = self.load_target(index, tuple(image.shape[-2:]))
            if self.transforms is None:
                return image, target
            sample = self.transforms(image, target)
            if sample is not None:
                return sample
            index = self._another(index)  # mmdet's _rand_another: an image of the same orientation
        raise RuntimeError(f"the train pipeline rejected {_MAX_REDRAWS} samples in a row (crops without objects)")

    def _another(self, index: int) -> int:
        record = self.records[index]
        return random.choice(self._orientation[record.width >= record.height])

    def evaluate(self, detections: Detections) -> dict[str, float]:
        """The dataset's own metric over ``detections`` (images without an entry count as no detections)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its metric")
