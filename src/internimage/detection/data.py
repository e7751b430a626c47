"""COCO-format instance data (annotations JSON + image folder), mmdet-style detection transforms, COCO metrics.

Pipelines follow the official InternImage mmdet 2.x configs (``detection/configs/coco/*.py``):

* 1x train: keep-ratio resize to (1333, 800), horizontal flip 0.5.
* 3x train: flip 0.5, then one of two policies at random: multi-scale resize (shorter side 480..800 step 32, longer
  side <= 1333), or resize (400/500/600) -> random crop 384..600 (absolute range, negative crops allowed) ->
  multi-scale resize.
* test: keep-ratio resize to (1333, 800); predictions are mapped back to the original size by the detector.

Normalisation and padding to a multiple of 32 happen inside the detector. Samples are
``(image uint8 (3, H, W), target)`` with target ``boxes`` (K, 4) xyxy float, ``labels`` (K,) int64 in 1..K
(contiguous: in the order of the model's class names when given, categories matched by name, else by sorted
category id; 0 is background), ``masks`` (K, H, W) uint8, ``image_id`` and ``orig_size``.
Evaluation uses faster-coco-eval (pycocotools-compatible; ``pip install internimage[detection]``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import load_image

__all__ = [
    "RECIPES",
    "AutoAugment",
    "CocoDetection",
    "Compose",
    "RandomCrop",
    "RandomFlip",
    "Resize",
    "collate_detection",
    "detection_transforms",
    "label_order",
    "coco_mask_api",
    "read_coco",
]

logger = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, dict[str, Any]]
MS_SCALES_3X = [(1333, s) for s in range(480, 801, 32)]
#: Train pipelines of :func:`detection_transforms`.
RECIPES = ("1x", "3x", "dino", "dino_ss", "dino_ss_1200")
_MAX_REDRAWS = 100


def coco_mask_api():
    try:
        from faster_coco_eval.core import mask
    except ImportError as err:
        raise RuntimeError("COCO masks need faster-coco-eval: pip install 'internimage[detection]'") from err
    return mask


# ----------------------------------------------------------------------------------------------- dataset
class CocoDetection(torch.utils.data.Dataset):
    """Instances of a COCO-format annotation file.

    The file is validated once, when the dataset is opened (see :func:`read_coco`): a broken record is a one-line
    ``ValueError`` naming the file and the record, and every image file must exist, instead of an error deep in a
    loader worker when the sample happens to be drawn.

    Args:
        ann_file: COCO ``instances_*.json``.
        img_dir: Folder the ``file_name`` entries are relative to.
        transforms: Callable ``(image, target) -> (image, target)`` (see :func:`detection_transforms`).
        train: Drop images without usable objects and images smaller than ``min_size`` (mmdet's train filter).
        min_size: Minimum image side kept in training.
        with_masks: Decode instance masks (needed by Mask R-CNN).
        classes: Names of labels 1..K (a checkpoint's classes): categories are matched to them by name. Default:
            labels follow the sorted category ids.

    Crowd annotations, boxes under 1 px and (with masks) annotations whose polygons were all invalid are not
    training targets (mmdet ignores them); evaluation reads the validated annotations (:attr:`coco`).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        img_dir: str | os.PathLike,
        transforms: Callable[[torch.Tensor, dict[str, Any]], Sample] | None = None,
        train: bool = False,
        min_size: int = 32,
        with_masks: bool = True,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        data, maskless = read_coco(self.ann_file)
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_dir}")
        self.coco = data
        self.transforms = transforms
        self.with_masks = with_masks
        self.cat_ids = label_order(data["categories"], classes, self.ann_file)
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        names = {c["id"]: c["name"] for c in data["categories"]}
        self.class_names = [names[c] for c in self.cat_ids]
        anns: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            # Without a valid polygon an object has no mask target: mmdet's ignore flag drops it from training.
            if not (with_masks and ann["id"] in maskless):
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
        _check_image_files(self.img_dir, self.images, self.ann_file)
        # Indices of the wide (width > height) and the other images: mmdet's aspect-ratio groups, for redraws.
        wide = [info["width"] > info["height"] for info in self.images]
        self._orientation = {flag: [i for i, w in enumerate(wide) if w == flag] for flag in (True, False)}

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> torch.Tensor:
        """(3, H, W) uint8 RGB.

        Raises:
            OSError: naming the file, for an unreadable or truncated image.
        """
        info = self.images[index]
        path = self.img_dir / info["file_name"]
        try:
            arr = np.asarray(load_image(path, "RGB"))
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise OSError(f"cannot read image {path} (image id {info['id']} of {self.ann_file}): {err}") from err
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
                    f"{self.img_dir / self.images[index]['file_name']}: image is {tuple(image.shape[-2:])}, "
                    f"{self.ann_file} says (height, width) = {target['orig_size']}"
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


# ----------------------------------------------------------------------------------------------- validation
def read_coco(ann_file: str | os.PathLike) -> tuple[dict[str, Any], set[int]]:
    """Load and validate a COCO instances file once, so that no sample can fail later because of its records.

    Checked: valid JSON; ``images`` / ``annotations`` / ``categories`` lists; unique integer ids of each (COCO's
    index keeps one record per id: duplicates silently lose annotations or merge images); images with a
    ``file_name`` and positive integer ``width`` / ``height``; annotations naming an existing image and category,
    with ``bbox`` = 4 finite numbers of non-negative size and a well-formed ``segmentation``. Polygons with fewer
    than 3 points or an odd number of coordinates are dropped (the COCO mask API reads a list whose first polygon
    has 4 values as boxes): one warning counts them.

    Args:
        ann_file: The annotation file.

    Returns:
        The loaded file (invalid polygons removed) and the ids of annotations left without any polygon by that.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file and the first bad record.
    """
    path = Path(ann_file)
    data = _load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"{path} is not a COCO instances file: no '{key}' list")
    cat_ids = _check_categories(data["categories"], path)
    images = _check_images(data["images"], path)
    _check_annotations(data["annotations"], images, cat_ids, path)
    return data, _drop_bad_polygons(data["annotations"], path)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 JSON file: {err}") from err


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ids(records: list[Any], kind: str, path: Path) -> list[int]:
    """The integer ``id`` of every record; duplicates are refused (COCO indexes records by id)."""
    ids = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not _is_int(rec.get("id")):
            raise ValueError(f"{path}: {kind} #{i} has no integer 'id': {_short(rec)}")
        ids.append(rec["id"])
    if len(set(ids)) != len(ids):
        counts = Counter(ids)
        dups = [k for k, n in counts.items() if n > 1]
        shown = ", ".join(f"{k} ({counts[k]} times)" for k in dups[:5]) + (", ..." if len(dups) > 5 else "")
        files = [r["file_name"] for r in records if r["id"] == dups[0] and isinstance(r.get("file_name"), str)]
        named = f": {', '.join(files[:5])} share id {dups[0]}" if files else ""
        raise ValueError(f"{path}: {kind} ids must be unique; repeated: {kind} id {shown}{named}")
    return ids


def _check_categories(categories: list[Any], path: Path) -> set[int]:
    ids = _ids(categories, "category", path)
    for cat in categories:
        if not isinstance(cat.get("name"), str):
            raise ValueError(f"{path}: category {cat['id']} has no 'name' string")
    return set(ids)


def _check_images(images: list[Any], path: Path) -> dict[int, dict[str, Any]]:
    _ids(images, "image", path)
    for im in images:
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise ValueError(f"{path}: image {im['id']} has no 'file_name'")
        for key in ("width", "height"):
            if not _is_int(im.get(key)) or im[key] < 1:
                got = f"got {im[key]!r}" if key in im else "missing"
                raise ValueError(
                    f"{path}: image {im['id']} ({im['file_name']}): '{key}' must be a positive integer, {got}"
                )
    return {im["id"]: im for im in images}


def _check_annotations(
    annotations: list[Any], images: dict[int, dict[str, Any]], cat_ids: set[int], path: Path
) -> None:
    _ids(annotations, "annotation", path)
    for ann in annotations:
        where = f"{path}: annotation {ann['id']}"
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not an image of the file")
        if ann.get("category_id") not in cat_ids:
            shown = ", ".join(map(str, sorted(cat_ids)[:10])) + (", ..." if len(cat_ids) > 10 else "")
            raise ValueError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories' (ids {shown})")
        _check_bbox(ann, where)
        _check_segmentation(ann.get("segmentation"), images[ann["image_id"]], where)


def _check_bbox(ann: dict[str, Any], where: str) -> None:
    box = ann.get("bbox")
    if box is None:
        raise ValueError(f"{where} has no 'bbox'")
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise ValueError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {_short(box)}")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{where}: bbox {box} has a negative width or height (COCO boxes are [x, y, width, height])")
    if "area" in ann and not _is_number(ann["area"]):
        raise ValueError(f"{where}: area must be a number, got {_short(ann['area'])}")


def _check_segmentation(seg: Any, image: dict[str, Any], where: str) -> None:
    if seg is None or (isinstance(seg, list) and all(isinstance(p, list) for p in seg)):
        return
    if isinstance(seg, dict) and "counts" in seg:
        if list(seg.get("size", ())) != [image["height"], image["width"]]:
            size = [image["height"], image["width"]]
            raise ValueError(f"{where}: RLE size {seg.get('size')!r} is not the image's [height, width] {size}")
        return
    raise ValueError(f"{where}: segmentation must be a list of polygons or an RLE dict, got {_short(seg)}")


def _valid_polygon(poly: list[Any]) -> bool:
    return len(poly) >= 6 and len(poly) % 2 == 0


def _drop_bad_polygons(annotations: list[dict[str, Any]], path: Path) -> set[int]:
    """Remove degenerate polygons in place; returns the ids of annotations left without any."""
    touched, emptied, dropped = [], set(), 0
    for ann in annotations:
        seg = ann.get("segmentation")
        if not isinstance(seg, list) or all(_valid_polygon(p) for p in seg):
            continue
        kept = [p for p in seg if _valid_polygon(p)]
        dropped += len(seg) - len(kept)
        touched.append(ann["id"])
        if not kept:
            emptied.add(ann["id"])
        ann["segmentation"] = kept
    if dropped:
        shown = ", ".join(map(str, touched[:5])) + (", ..." if len(touched) > 5 else "")
        logger.warning(
            "%s: dropped %d polygon(s) with fewer than 3 points or an odd number of coordinates "
            "(annotation(s) %s); %d annotation(s) left without a mask are not training targets",
            path, dropped, shown, len(emptied),
        )  # fmt: skip
    return emptied


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def label_order(categories: list[dict[str, Any]], classes: Sequence[str] | None, ann_file: Path) -> list[int]:
    """Category id of each label 1..K: ``classes`` matched by name, else the sorted ids (official checkpoints).

    Raises:
        ValueError: names that cannot be matched one to one, named in one line.
    """
    if not classes:
        return sorted(c["id"] for c in categories)
    by_name: dict[str, int] = {}
    for cat in categories:
        if cat["name"] in by_name:
            raise ValueError(
                f"{ann_file}: category name {cat['name']!r} is used by ids {by_name[cat['name']]} and {cat['id']}; "
                "names must be unique to match the model's classes"
            )
        by_name[cat["name"]] = cat["id"]
    unknown = [n for n in by_name if n not in classes]
    absent = [n for n in classes if n not in by_name]
    if unknown or absent:
        parts = [f"categories named {', '.join(unknown[:10])} are not classes of the model"] if unknown else []
        parts += [f"classes {', '.join(absent[:10])} have no category"] if absent else []
        raise ValueError(f"{ann_file}: {'; '.join(parts)} (model classes: {', '.join(list(classes)[:10])})")
    return [by_name[n] for n in classes]


def _check_image_files(img_dir: Path, images: list[dict[str, Any]], ann_file: Path) -> None:
    """Every image file exists (a stat each), so a missing one is named now, not by a loader worker later."""
    missing = [im for im in images if not (img_dir / im["file_name"]).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        first = missing[0]
        raise FileNotFoundError(
            f"image file not found: {img_dir / first['file_name']} (image id {first['id']} of {ann_file}){more}"
        )


def _decode_masks(segs: list[Any], h: int, w: int) -> torch.Tensor:
    """Polygons / RLE -> (K, h, w) uint8."""
    if not segs:
        return torch.zeros((0, h, w), dtype=torch.uint8)
    mask_api = coco_mask_api()
    out = np.zeros((len(segs), h, w), dtype=np.uint8)
    for i, seg in enumerate(segs):
        if isinstance(seg, list):
            # Only real polygons: the mask API reads a list whose first entry has 4 values as boxes.
            seg = [p for p in seg if _valid_polygon(p)]
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
        for key in _BOX_KEYS.intersection(target):
            target[key] = _clip(target[key] * torch.tensor([nw / w, nh / h, nw / w, nh / h]), nh, nw)
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
        for key in _BOX_KEYS.intersection(target):
            b = target[key]
            target[key] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
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
        if "ignore_boxes" in target:
            ignore = _clip(target["ignore_boxes"] - torch.tensor([x0, y0, x0, y0], dtype=torch.float32), ch, cw)
            target["ignore_boxes"] = ignore[(ignore[:, 2] > ignore[:, 0]) & (ignore[:, 3] > ignore[:, 1])]
        return image[:, y0 : y0 + ch, x0 : x0 + cw], target


class AutoAugment:
    """Apply one of several transform lists, chosen uniformly at random (mmdet ``AutoAugment``)."""

    def __init__(self, policies: Sequence[Sequence[Callable[[torch.Tensor, dict[str, Any]], Sample]]]) -> None:
        self.policies = [Compose(p) for p in policies]

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> Sample | None:
        return random.choice(self.policies)(image, target)


#: Target entries holding (K, 4) xyxy boxes that follow every geometric transform (objects and ignore regions).
_BOX_KEYS = frozenset({"boxes", "ignore_boxes"})


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
            objects), ``'dino_ss'`` (DINO H/G/CB-H's: short side uniform in 600-1800, long side 2000, flip) or
            ``'dino_ss_1200'`` (the CB-H LVIS / OpenImages / VOC configs: short side 600-1200); the
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
    if recipe in ("dino_ss", "dino_ss_1200"):
        top = 1800 if recipe == "dino_ss" else 1200
        return Compose([RandomFlip(0.5), Resize(s([(2000, 600), (2000, top)]), mode="range")])
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
