"""COCO-format instance data (annotations JSON + image folder), mmdet-style detection transforms, COCO metrics.

Pipelines follow the official InternImage mmdet 2.x configs (``detection/configs/coco/*.py``):

* 1x train: keep-ratio resize to (1333, 800), horizontal flip 0.5.
* 3x train: flip 0.5, then one of two policies at random: multi-scale resize (shorter side 480..800 step 32, longer
  side <= 1333), or resize (400/500/600) -> random crop 384..600 (absolute range, negative crops allowed) ->
  multi-scale resize.
* test: keep-ratio resize to (1333, 800); predictions are mapped back to the original size by the detector.

Normalisation and padding to a multiple of 32 happen inside the detector. Samples are
``(image uint8 (3, H, W), target)`` with target ``boxes`` (K, 4) xyxy float, ``labels`` (K,) int64 in 1..K
(contiguous, by sorted category id; 0 is background), ``masks`` (K, H, W) uint8, ``image_id`` and ``orig_size``.
Evaluation uses faster-coco-eval (pycocotools-compatible; ``pip install internimage[detection]``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import load_image

__all__ = [
    "AutoAugment",
    "CocoDetection",
    "Compose",
    "RandomCrop",
    "RandomFlip",
    "Resize",
    "coco_evaluate",
    "collate_detection",
    "detection_transforms",
    "predictions_to_coco",
]

logger = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, dict[str, Any]]
MS_SCALES_3X = [(1333, s) for s in range(480, 801, 32)]
#: Train pipelines of :func:`detection_transforms`.
RECIPES = ("1x", "3x", "dino", "dino_ss")
_MAX_REDRAWS = 100


def _mask_api():
    try:
        from faster_coco_eval.core import mask
    except ImportError as err:
        raise RuntimeError("COCO masks need faster-coco-eval: pip install 'internimage[detection]'") from err
    return mask


# ----------------------------------------------------------------------------------------------- dataset
class CocoDetection(torch.utils.data.Dataset):
    """Instances of a COCO-format annotation file.

    Args:
        ann_file: COCO ``instances_*.json``.
        img_dir: Folder the ``file_name`` entries are relative to.
        transforms: Callable ``(image, target) -> (image, target)`` (see :func:`detection_transforms`).
        train: Drop images without usable objects and images smaller than ``min_size`` (mmdet's train filter).
        min_size: Minimum image side kept in training.
        with_masks: Decode instance masks (needed by Mask R-CNN).

    Crowd annotations and boxes under 1 px are not training targets (mmdet ignores them); evaluation still reads
    them from the annotation file.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        img_dir: str | os.PathLike,
        transforms: Callable[[torch.Tensor, dict[str, Any]], Sample] | None = None,
        train: bool = False,
        min_size: int = 32,
        with_masks: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.ann_file}")
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_dir}")
        with open(self.ann_file) as f:
            data = json.load(f)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{self.ann_file} is not a COCO instances file: no '{key}' list")
        self.transforms = transforms
        self.with_masks = with_masks
        self.cat_ids = sorted(c["id"] for c in data["categories"])
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        names = {c["id"]: c["name"] for c in data["categories"]}
        self.class_names = [names[c] for c in self.cat_ids]
        anns: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            anns.setdefault(ann["image_id"], []).append(ann)
        images = sorted(data["images"], key=lambda im: im["id"])
        if train:
            images = [
                im
                for im in images
                if min(im["width"], im["height"]) >= min_size and any(_usable(a) for a in anns.get(im["id"], []))
            ]
        self.images = images
        self.anns = anns
        if not self.images:
            raise ValueError(f"{self.ann_file} has no usable images")
        # Indices of the wide (width > height) and the other images: mmdet's aspect-ratio groups, for redraws.
        wide = [info["width"] > info["height"] for info in self.images]
        self._orientation = {flag: [i for i, w in enumerate(wide) if w == flag] for flag in (True, False)}

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> torch.Tensor:
        """(3, H, W) uint8 RGB."""
        path = self.img_dir / self.images[index]["file_name"]
        arr = np.asarray(load_image(path, "RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def load_target(self, index: int) -> dict[str, Any]:
        """Targets of image ``index`` at its original size (see the module docstring)."""
        info = self.images[index]
        h, w = info["height"], info["width"]
        objs = [a for a in self.anns.get(info["id"], []) if _usable(a)]
        boxes = torch.tensor([_xyxy(a["bbox"]) for a in objs], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in objs], dtype=torch.int64)
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": labels,
            "image_id": int(info["id"]),
            "orig_size": (h, w),
        }
        if self.with_masks:
            target["masks"] = _decode_masks([a.get("segmentation") for a in objs], h, w)
        return target

    def __getitem__(self, index: int) -> Sample:
        for _ in range(_MAX_REDRAWS):
            image, target = self.load_image(index), self.load_target(index)
            if tuple(image.shape[-2:]) != target["orig_size"]:
                raise ValueError(
                    f"{self.images[index]['file_name']}: image is {tuple(image.shape[-2:])}, "
                    f"annotations say {target['orig_size']}"
                )
            if self.transforms is None:
                return image, target
            sample = self.transforms(image, target)
            if sample is not None:
                return sample
            index = self._another(index)  # mmdet's _rand_another: an image of the same orientation
        raise RuntimeError(f"the train pipeline rejected {_MAX_REDRAWS} samples in a row (crops without objects)")

    def _another(self, index: int) -> int:
        """A random image with the same orientation (mmdet's aspect-ratio flag: width > height)."""
        info = self.images[index]
        return random.choice(self._orientation[info["width"] > info["height"]])


def _usable(ann: dict[str, Any]) -> bool:
    x, y, w, h = ann["bbox"]
    return not ann.get("iscrowd", 0) and w >= 1 and h >= 1 and ann.get("area", w * h) > 0


def _xyxy(b: Sequence[float]) -> list[float]:
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def _decode_masks(segs: list[Any], h: int, w: int) -> torch.Tensor:
    """Polygons / RLE -> (K, h, w) uint8."""
    if not segs:
        return torch.zeros((0, h, w), dtype=torch.uint8)
    mask_api = _mask_api()
    out = np.zeros((len(segs), h, w), dtype=np.uint8)
    for i, seg in enumerate(segs):
        if not seg:
            continue
        if isinstance(seg, list):
            rle = mask_api.merge(mask_api.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):
            rle = mask_api.frPyObjects(seg, h, w)
        else:
            rle = seg
        out[i] = mask_api.decode(rle)
    return torch.from_numpy(out)


def collate_detection(batch: list[Sample]) -> dict[str, Any]:
    """``{'images': [...], 'targets': [...]}``: detection images keep their own sizes."""
    return {"images": [b[0] for b in batch], "targets": [b[1] for b in batch]}


# ----------------------------------------------------------------------------------------------- transforms
class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor, dict[str, Any]], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> Sample | None:
        for t in self.transforms:
            sample = t(image, target)
            if sample is None:  # rejected (a crop without objects where none is allowed)
                return None
            image, target = sample
        return image, target


class Resize:
    """mmdet keep-ratio ``Resize``: scale = min(long / max(h, w), short / min(h, w)).

    Args:
        scales: ``(long, short)`` pairs.
        mode: ``value``: one pair at random per sample (mmdet ``multiscale_mode='value'``); ``range``: the long and
            the short side drawn as integers uniformly between the pairs' extremes (``multiscale_mode='range'``).
    """

    def __init__(self, scales: Sequence[tuple[int, int]] = ((1333, 800),), mode: str = "value") -> None:
        if not scales:
            raise ValueError("Resize needs at least one (long, short) scale")
        if mode not in ("value", "range"):
            raise ValueError(f"Resize mode must be 'value' or 'range', got {mode!r}")
        self.scales = [tuple(s) for s in scales]
        self.mode = mode

    def _draw(self) -> tuple[int, int]:
        if self.mode == "value":
            return random.choice(self.scales)
        longs, shorts = [max(s) for s in self.scales], [min(s) for s in self.scales]
        return random.randint(min(longs), max(longs)), random.randint(min(shorts), max(shorts))

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> Sample:
        long_side, short_side = self._draw()
        h, w = image.shape[-2:]
        scale = min(long_side / max(h, w), short_side / min(h, w))
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        resized = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
        image = resized.round().clamp(0, 255).to(image.dtype) if image.dtype == torch.uint8 else resized
        target = dict(target)
        boxes = target["boxes"] * torch.tensor([nw / w, nh / h, nw / w, nh / h])
        target["boxes"] = _clip(boxes, nh, nw)
        if "masks" in target:
            masks = target["masks"]
            target["masks"] = (
                F.interpolate(masks[None].float(), size=(nh, nw), mode="nearest")[0].to(masks.dtype)
                if len(masks)
                else masks.new_zeros((0, nh, nw))
            )
        return image, target


class RandomFlip:
    """Horizontal flip with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> Sample:
        if random.random() >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        b = target["boxes"]
        target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target


class RandomCrop:
    """mmdet ``RandomCrop(crop_type='absolute_range')``.

    Crop height and width are drawn independently from ``[min(size, lo), min(size, hi)]``; boxes are shifted,
    clipped and dropped when empty (masks follow). A crop without objects is kept with ``allow_negative=True``;
    otherwise the sample is rejected (``None``), and :class:`CocoDetection` draws another image, as mmdet does.
    """

    def __init__(self, size_range: tuple[int, int] = (384, 600), allow_negative: bool = True) -> None:
        self.lo, self.hi = size_range
        self.allow_negative = allow_negative

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> Sample | None:
        h, w = image.shape[-2:]
        ch = random.randint(min(h, self.lo), min(h, self.hi))
        cw = random.randint(min(w, self.lo), min(w, self.hi))
        y0, x0 = random.randint(0, h - ch), random.randint(0, w - cw)
        target = dict(target)
        boxes = _clip(target["boxes"] - torch.tensor([x0, y0, x0, y0], dtype=torch.float32), ch, cw)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not self.allow_negative and not bool(keep.any()):
            return None
        target["boxes"], target["labels"] = boxes[keep], target["labels"][keep]
        if "masks" in target:
            target["masks"] = target["masks"][keep, y0 : y0 + ch, x0 : x0 + cw]
        return image[:, y0 : y0 + ch, x0 : x0 + cw], target


class AutoAugment:
    """Apply one of several transform lists, chosen uniformly at random (mmdet ``AutoAugment``)."""

    def __init__(self, policies: Sequence[Sequence[Callable[[torch.Tensor, dict[str, Any]], Sample]]]) -> None:
        self.policies = [Compose(p) for p in policies]

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> Sample | None:
        return random.choice(self.policies)(image, target)


def _clip(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


def detection_transforms(
    recipe: str, train: bool, scale: tuple[int, int] = (1333, 800), scale_factor: float = 1.0
) -> Compose:
    """The official pipelines.

    Args:
        recipe: ``'1x'`` (single scale), ``'3x'`` (multi-scale + crop AutoAugment of the Mask R-CNN 3x configs),
            ``'dino'`` (DINO T/L's: the crop branch first resizes to a long side of 4200 and rejects crops without
            objects) or ``'dino_ss'`` (DINO H/G/CB-H's: short side uniform in 600-1800, long side 2000, flip); the
            test pipeline is the single-scale resize for all.
        train: Training (random) or test pipeline.
        scale: ``(long, short)`` of the single-scale resize.
        scale_factor: Multiplies every size (e.g. 0.1 for quick runs on small images).

    Returns:
        A :class:`Compose` over ``(uint8 image, target)``.
    """

    def s(pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        return [(round(a * scale_factor), round(b * scale_factor)) for a, b in pairs]

    if recipe not in RECIPES:
        raise ValueError(f"detection recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if not train:
        return Compose([Resize(s([scale]))])
    if recipe == "1x":
        return Compose([Resize(s([scale])), RandomFlip(0.5)])
    if recipe == "dino_ss":
        return Compose([RandomFlip(0.5), Resize(s([(2000, 600), (2000, 1800)]), mode="range")])
    crop = (round(384 * scale_factor), round(600 * scale_factor))
    long_side = 4200 if recipe == "dino" else 1333
    policies = [
        [Resize(s(MS_SCALES_3X))],
        [
            Resize(s([(long_side, 400), (long_side, 500), (long_side, 600)])),
            RandomCrop(crop, allow_negative=recipe != "dino"),
            Resize(s(MS_SCALES_3X)),
        ],
    ]
    return Compose([RandomFlip(0.5), AutoAugment(policies)])


# ----------------------------------------------------------------------------------------------- evaluation
def predictions_to_coco(
    predictions: list[dict[str, torch.Tensor]], image_ids: Sequence[int], cat_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Detector outputs -> COCO result entries (``bbox`` xywh, ``score``, ``category_id``, ``segmentation`` RLE).

    Args:
        predictions: Per image ``boxes`` (D, 4) xyxy, ``scores`` (D,), ``labels`` (D,) in 1..K, optional ``masks``
            (D, 1, H, W) probabilities (kept where ``>= 0.5``, mmdet's ``mask_thr_binary``).
        image_ids: COCO image id of each prediction.
        cat_ids: COCO category id of label 1..K (``dataset.cat_ids``).
    """
    results: list[dict[str, Any]] = []
    mask_api = None
    for pred, image_id in zip(predictions, image_ids):
        boxes = pred["boxes"].detach().float().cpu()
        scores = pred["scores"].detach().float().cpu().tolist()
        labels = pred["labels"].detach().cpu().tolist()
        masks = pred.get("masks")
        if masks is not None:
            mask_api = mask_api or _mask_api()
            binary = (masks[:, 0] >= 0.5).cpu().numpy().astype(np.uint8)
        for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
            entry = {
                "image_id": int(image_id),
                "category_id": int(cat_ids[label - 1]),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "score": float(score),
            }
            if masks is not None:
                rle = mask_api.encode(np.asfortranarray(binary[i]))
                counts = rle["counts"]
                rle["counts"] = counts.decode("ascii") if isinstance(counts, bytes) else counts
                entry["segmentation"] = rle
            results.append(entry)
    return results


_STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def coco_evaluate(
    ann_file: str | os.PathLike | dict[str, Any],
    results: list[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    image_ids: Sequence[int] | None = None,
    backend: str = "faster_coco_eval",
) -> dict[str, float]:
    """COCO AP of ``results`` against the ground truth.

    Args:
        ann_file: Ground-truth annotation file (or its loaded dict).
        results: COCO result entries (:func:`predictions_to_coco`).
        iou_types: ``bbox`` and/or ``segm``.
        image_ids: Restrict to these images (default: all images of the annotation file).
        backend: ``'faster_coco_eval'`` (default) or ``'pycocotools'`` (the reference, for cross-checks).

    Returns:
        ``{f'{iou_type}_{name}'}`` for name in mAP, mAP_50, mAP_75, mAP_s, mAP_m, mAP_l (-1 where undefined).
        With no results at all every AP is 0.
    """
    if not results:
        return {f"{t}_{n}": 0.0 for t in iou_types for n in _STAT_NAMES}
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval
        except ImportError as err:
            raise RuntimeError("COCO evaluation needs faster-coco-eval: pip install 'internimage[detection]'") from err
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"backend must be 'faster_coco_eval' or 'pycocotools', got {backend!r}")
    # Both libraries report progress on stdout / INFO; library code logs at DEBUG instead.
    quiet = {"print_function": logger.debug} if backend == "faster_coco_eval" else {}
    metrics: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        gt_source = json.loads(json.dumps(ann_file)) if isinstance(ann_file, dict) else str(ann_file)
        if isinstance(gt_source, dict) and backend == "pycocotools":
            gt = COCO()
            gt.dataset = gt_source
            gt.createIndex()
        else:
            gt = COCO(gt_source, **quiet)
        for iou_type in iou_types:
            entries = [r for r in results if iou_type == "bbox" or "segmentation" in r]
            if not entries:
                metrics.update({f"{iou_type}_{n}": 0.0 for n in _STAT_NAMES})
                continue
            dt = gt.loadRes(json.loads(json.dumps(entries)))
            ev = COCOeval(gt, dt, iou_type, **quiet)
            if image_ids is not None:
                ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            metrics.update({f"{iou_type}_{n}": float(v) for n, v in zip(_STAT_NAMES, ev.stats[:6])})
    logger.debug("%s", captured.getvalue())
    return metrics
