"""Semantic segmentation datasets and the official mmseg 0.x train/test transforms.

Layouts:

* ADE20K-style (:class:`ADE20KDataset`): ``root/images/<split>/*.jpg|png`` with label maps
  ``root/annotations/<split>/<stem>.png`` (one class id per pixel). ADE20K stores 0 = "other" and 1..150 =
  classes, hence ``reduce_zero_label`` (0 -> 255 ignored, k -> k - 1). Optional ``root/classes.txt`` (one name a
  line) names the classes; any folder laid out this way works, with or without ``reduce_zero_label``.
* Cityscapes-style (:class:`CityscapesDataset`): ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
  ``root/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (19 classes, 255 ignored); raw ``*_labelIds.png`` are
  mapped to train ids on the fly when the train-id files are absent.

Every label map is checked when it is read, before any transform: one channel, the size of its image, and only
class ids or the ignore index (the error names the file and the value). Given the model's class names, a dataset
whose ``classes.txt`` lists the same classes in another order is relabelled to the model's order by name.

Transforms (tensors, RGB): :class:`SegTrainTransform` is the official pipeline: keep-ratio resize of the image
scale (2048, 512) by a random ratio in [0.5, 2.0], random crop (retried up to 10 times while one class covers
>= 75 % of the crop), horizontal flip p=0.5, photometric distortion, ImageNet normalisation, padding to the crop
(image 0, label 255). :class:`SegTestTransform` only normalises: test-time resizing, multi-scale and flip happen
in :meth:`~internimage.segmentation.models.Segmentor.predict`, so predictions come back at the original size.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..data.datasets import load_image
from ..data.palette import default_palette
from ..data.transforms import hsv_to_rgb, rgb_to_hsv

__all__ = [
    "ADE20KDataset",
    "CITYSCAPES_CLASSES",
    "CityscapesDataset",
    "SegTestTransform",
    "SegTrainTransform",
    "class_lookup",
    "photometric_distortion",
    "seg_collate",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
# Cityscapes label id -> train id (the 19 evaluated classes); every other id is ignored.
_CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                           25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def _read_image(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB."""
    rgb = load_image(path, "RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def _read_label(path: Path) -> torch.Tensor:
    """(H, W) int64 class ids from a single-channel (L or P) PNG."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"label map {path} has mode {img.mode}; expected a single-channel PNG of class ids")
        return torch.from_numpy(np.asarray(img).astype(np.int64))


def _check_label_values(label: torch.Tensor, path: Path, top: int, ignored: Sequence[int], meaning: str) -> None:
    """Refuse a label map holding a value outside ``0..top-1`` that is not one of ``ignored``.

    Checked on the stored values, before any transform: a bad value would otherwise surface only when a random
    crop happens to include it, as an out-of-bounds error of the loss that names neither file nor value.

    Raises:
        ValueError: naming the file, the first bad value and what the values mean (``meaning``).
    """
    bad = (label < 0) | (label >= top)
    for value in ignored:
        bad &= label != value
    if bool(bad.any()):
        raise ValueError(f"label map {path} holds value {int(label[bad].flatten()[0])}; {meaning}")


def _is_placeholder(names: Sequence[str]) -> bool:
    """Names made up for unnamed classes (``class 0`` ...): they say nothing about which class is which."""
    return list(names) == [f"class {i}" for i in range(len(names))]


def class_lookup(dataset_names: Sequence[str], model_names: Sequence[str], where: str) -> torch.Tensor | None:
    """Label id of the dataset -> class index of the model, matched by name.

    Args:
        dataset_names: The dataset's class names, in label-id order.
        model_names: The model's (checkpoint's) class names, in output order.
        where: What named the dataset's classes (for the error message).

    Returns:
        None when both lists are equal (nothing to map), else a (K,) int64 lookup table.

    Raises:
        ValueError: the two lists do not name the same classes (one line naming the unmatched ones).
    """
    dataset_names, model_names = list(dataset_names), list(model_names)
    if dataset_names == model_names:
        return None
    unknown = [n for n in dataset_names if n not in model_names]
    missing = [n for n in model_names if n not in dataset_names]
    if unknown or missing or len(set(dataset_names)) != len(dataset_names) or len(dataset_names) != len(model_names):
        raise ValueError(
            f"{where} names other classes than the model: only in the dataset: {_few(unknown)}; only in the "
            f"model: {_few(missing)}; list the model's class names (in any order)"
        )
    return torch.tensor([model_names.index(n) for n in dataset_names], dtype=torch.int64)


def _few(names: list[str], limit: int = 5) -> str:
    if not names:
        return "-"
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


class _SegDataset(Dataset):
    """Pairs of (image, label path); subclasses fill ``self.samples`` and ``self.classes``."""

    def __init__(
        self,
        samples: list[tuple[Path, Path | None]],
        classes: Sequence[str],
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
        ignore_index: int = 255,
    ) -> None:
        self.samples = samples
        self.classes = tuple(classes)
        self.palette = default_palette(len(self.classes))
        self.transform = transform
        self.ignore_index = ignore_index
        self._lookup: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load_label(self, path: Path) -> torch.Tensor:
        label = _read_label(path)
        meaning = f"with {self.num_classes} classes the values are 0..{self.num_classes - 1} and {self.ignore_index}"
        _check_label_values(label, path, self.num_classes, (self.ignore_index,), meaning + " (ignored)")
        return label

    def align_classes(self, model_classes: Sequence[str], where: str) -> None:
        """Label the samples in the model's class order: label id k becomes the index of its name in the model's.

        Args:
            model_classes: The model's class names, in output order.
            where: What named the dataset's classes (for the error message).

        Raises:
            ValueError: the dataset's names are not the model's (in some order).
        """
        self._lookup = class_lookup(self.classes, model_classes, where)
        self.classes = tuple(model_classes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns ``{'image': (3, H, W) float, 'label': (H, W) int64, 'path': str}`` after the transform."""
        image_path, label_path = self.samples[index]
        image = _read_image(image_path)
        if label_path is not None:
            label = self.load_label(label_path)
            if label.shape != image.shape[1:]:
                raise ValueError(
                    f"label map {label_path} is {tuple(label.shape)} but its image {image_path} is "
                    f"{tuple(image.shape[1:])}"
                )
            if self._lookup is not None:
                valid = label != self.ignore_index
                label[valid] = self._lookup[label[valid]]
        else:
            label = torch.full(image.shape[1:], self.ignore_index, dtype=torch.int64)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return {"image": image, "label": label, "path": str(image_path)}


def _read_classes(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class ADE20KDataset(_SegDataset):
    """ADE20K-style folder: ``images/<split>/*`` + ``annotations/<split>/<stem>.png``.

    Args:
        root: Dataset root (``ADEChallengeData2016`` for ADE20K).
        split: Sub-folder (``training`` / ``validation``).
        transform: ``(uint8 image, int64 label) -> (image, label)``.
        reduce_zero_label: Map label 0 to ``ignore_index`` and k to k - 1 (ADE20K's convention).
        num_classes: Number of classes; default: lines of ``root/classes.txt``, else 150 with
            ``reduce_zero_label`` (ADE20K), else max label + 1 over the split.
        classes: Class names (override ``classes.txt``).
        ignore_index: Label value excluded from training and metrics.
        model_classes: The model's class names: when ``classes.txt`` names the same classes in another order, the
            labels are remapped to the model's order (see :meth:`align_classes`); without ``classes.txt`` they
            name the label ids.
        require_labels: Refuse a split without ``annotations/<split>`` (training and evaluation need labels).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        transform: Callable | None = None,
        reduce_zero_label: bool = True,
        num_classes: int | None = None,
        classes: Sequence[str] | None = None,
        ignore_index: int = 255,
        model_classes: Sequence[str] | None = None,
        require_labels: bool = False,
    ) -> None:
        root = Path(root)
        samples = self._pair(root, split, require_labels)
        self.reduce_zero_label = reduce_zero_label
        names_file = root / "classes.txt"
        names = list(classes) if classes is not None else _read_classes(names_file)
        self.named = bool(names) and not _is_placeholder(names)
        if not self.named and model_classes:
            names = list(model_classes)
        if num_classes is None:
            num_classes = len(names) if names else 150 if reduce_zero_label else None
        if num_classes is None:
            num_classes = self._scan_num_classes(samples, ignore_index)
        if not names:
            names = [f"class {i}" for i in range(num_classes)]
        where = str(names_file) if classes is None else "the class names given"
        if model_classes and self.named and not _is_placeholder(model_classes):
            # Checked before the count, so a wrong list is refused with the names that do not match.
            class_lookup(names, model_classes, where)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        super().__init__(samples, names, transform, ignore_index)
        if model_classes and self.named and not _is_placeholder(model_classes):
            self.align_classes(model_classes, where)

    @staticmethod
    def _pair(root: Path, split: str, require_labels: bool) -> list[tuple[Path, Path | None]]:
        """(image, label map or None) of every image of the split."""
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"ADE20K-style dataset: no image folder {image_dir}")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"ADE20K-style dataset: no images in {image_dir}")
        if require_labels and not label_dir.is_dir():
            raise FileNotFoundError(
                f"ADE20K-style dataset: no label folder {label_dir}; evaluating or training needs the label maps "
                "(predict segments unlabelled images)"
            )
        samples: list[tuple[Path, Path | None]] = []
        for img in images:
            label = label_dir / f"{img.stem}.png"
            if label_dir.is_dir() and not label.is_file():
                raise FileNotFoundError(f"ADE20K-style dataset: image {img.name} has no label map {label}")
            samples.append((img, label if label_dir.is_dir() else None))
        return samples

    def _scan_num_classes(self, samples: list[tuple[Path, Path | None]], ignore_index: int) -> int:
        top = 0
        for _, label_path in samples:
            if label_path is not None:
                label = _read_label(label_path)
                label = label[label != ignore_index]
                top = max(top, int(label.max()) + 1 if label.numel() else 0)
        if top == 0:
            raise ValueError("cannot infer the number of classes: no labelled pixel; pass num_classes")
        return top

    def load_label(self, path: Path) -> torch.Tensor:
        label = _read_label(path)
        k = self.num_classes
        if self.reduce_zero_label:
            meaning = f"with {k} classes and reduce_zero_label=true the values are 1..{k}, 0 and 255 (ignored)"
            _check_label_values(label, path, k + 1, (255, self.ignore_index), meaning)
            label = torch.where(label == 0, 255, label - 1)
            label[label == 254] = 255
        else:
            meaning = f"with {k} classes the values are 0..{k - 1} and {self.ignore_index} (ignored)"
            _check_label_values(label, path, k, (self.ignore_index,), meaning)
        return label

    def zero_label_looks_real(self) -> bool:
        """Whether the label maps say that 0 is a named class, which ``reduce_zero_label`` would throw away.

        True when the split's label maps hold 0 and the class names count max label + 1 (so 0 has a name); with
        ADE20K's convention the names count max label. This is evidence, not proof: a split can lack its top
        class by chance (a small validation split), and then ``reduce_zero_label`` is right all the same, so
        callers warn rather than refuse. Reads every label map unless a value >= the class count shows early
        that the ADE20K convention holds, or one that cannot be read (the loader then names it and its problem).
        """
        if not self.reduce_zero_label or not self.named:
            return False
        k, seen_zero, top = self.num_classes, False, -1
        for _, path in self.samples:
            if path is None:
                continue
            try:
                label = _read_label(path)
            except (OSError, ValueError):
                return False
            label = label[(label != 255) & (label != self.ignore_index)]
            if label.numel():
                seen_zero = seen_zero or bool((label == 0).any())
                top = max(top, int(label.max()))
            if top >= k:
                return False
        return seen_zero and top + 1 == k


class CityscapesDataset(_SegDataset):
    """Cityscapes-style folder: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine`` train-id maps.

    ``train_extra`` reads its labels from ``refinement_final/train_extra`` (the refined coarse labels of the
    official ``cityscapes_extra`` configs, named ``*_gtFine_labelTrainIds.png`` as mmseg expects).

    Args:
        root: Dataset root.
        split: ``train`` / ``val`` / ``test`` / ``train_extra``.
        transform: ``(uint8 image, int64 label) -> (image, label)``.
        ignore_index: Label value excluded from training and metrics.
        require_labels: Refuse an image without a label map (training and evaluation need labels).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        ignore_index: int = 255,
        require_labels: bool = False,
    ) -> None:
        root = Path(root)
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"Cityscapes-style dataset: no image folder {image_dir}")
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise FileNotFoundError(f"Cityscapes-style dataset: no *_leftImg8bit.png under {image_dir}")
        samples: list[tuple[Path, Path | None]] = []
        for img in images:
            stem = img.name[: -len("_leftImg8bit.png")]
            gt = root / ("refinement_final" if split == "train_extra" else "gtFine") / split / img.parent.name
            train_ids, raw_ids = gt / f"{stem}_gtFine_labelTrainIds.png", gt / f"{stem}_gtFine_labelIds.png"
            label = train_ids if train_ids.is_file() else raw_ids if raw_ids.is_file() else None
            if label is None and require_labels:
                raise FileNotFoundError(
                    f"Cityscapes-style dataset: image {img} has no label map ({train_ids.name} or {raw_ids.name} "
                    f"in {gt}); evaluating or training needs the label maps"
                )
            samples.append((img, label))
        super().__init__(samples, CITYSCAPES_CLASSES, transform, ignore_index)
        lut = torch.full((256,), ignore_index, dtype=torch.int64)
        for raw, train in _CITYSCAPES_ID_TO_TRAIN.items():
            lut[raw] = train
        self._lut = lut

    def load_label(self, path: Path) -> torch.Tensor:
        if not path.name.endswith("_labelIds.png"):
            return super().load_label(path)
        return self._lut[_read_label(path).clamp(0, 255)]  # raw ids: every id not evaluated is ignored


# --------------------------------------------------------------------------------------------- transforms
def photometric_distortion(img: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """mmseg ``PhotoMetricDistortion`` on a float (3, H, W) RGB image in [0, 255].

    Each with probability 1/2: brightness +-32, contrast x[0.5, 1.5] (before or after the colour steps, at
    random), saturation x[0.5, 1.5], hue +-18 of 180 units; values clipped to [0, 255] after every step.
    """
    if rng.random() < 0.5:
        img = (img + rng.uniform(-32, 32)).clamp(0, 255)
    contrast_first = rng.random() < 0.5

    def contrast(x: torch.Tensor) -> torch.Tensor:
        return (x * rng.uniform(0.5, 1.5)).clamp(0, 255) if rng.random() < 0.5 else x

    if contrast_first:
        img = contrast(img)
    do_sat, do_hue = rng.random() < 0.5, rng.random() < 0.5
    if do_sat or do_hue:
        hsv = rgb_to_hsv(img)
        if do_sat:
            hsv[1] = (hsv[1] * rng.uniform(0.5, 1.5)).clamp(0, 1)
        if do_hue:
            hsv[0] = (hsv[0] + rng.randint(-18, 18) / 180.0) % 1.0
        img = hsv_to_rgb(hsv).clamp(0, 255)
    if not contrast_first:
        img = contrast(img)
    return img


def _normalize(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=img.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=img.dtype).view(3, 1, 1)
    return (img - m) / s


class SegTrainTransform:
    """The official training pipeline (mmseg 0.x ADE20K config), on tensors.

    Args:
        crop_size: (h, w) crop, 512/640/896 in the official configs.
        scale: Base keep-ratio scale (long, short): (2048, 512), (2560, 640) or (3584, 896).
        ratio_range: Random multiplier of ``scale``.
        cat_max_ratio: Retry the crop (up to 10 times) while one class covers at least this fraction.
        flip_prob: Horizontal flip probability.
        photometric: Apply :func:`photometric_distortion`.
        mean, std: Normalisation on the 0..255 scale.
        ignore_index: Label of padded pixels.
        seed: Seed of a private RNG; None uses the global ``random`` module, which the trainer seeds per rank and
            DataLoader seeds per worker, so runs are reproducible and workers draw different augmentations.
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (512, 512),
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN_255,
        std: Sequence[float] = IMAGENET_STD_255,
        ignore_index: int = 255,
        seed: int | None = None,
    ) -> None:
        self.crop_size = tuple(crop_size)
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.mean, self.std = mean, std
        self.ignore_index = ignore_index
        self.rng: Any = random.Random(seed) if seed is not None else random

    def _resize(self, img: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = self.rng.uniform(*self.ratio_range)
        h, w = img.shape[1:]
        long_max, short_max = max(self.scale) * ratio, min(self.scale) * ratio
        factor = min(long_max / max(h, w), short_max / min(h, w))
        size = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return img, label

    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = self.crop_size
        y = self.rng.randint(0, max(h - ch, 0))
        x = self.rng.randint(0, max(w - cw, 0))
        return y, min(y + ch, h), x, min(x + cw, w)

    def _crop(self, img: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = label.shape
        y1, y2, x1, x2 = self._crop_box(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                counts = torch.bincount(label[y1:y2, x1:x2].flatten(), minlength=self.ignore_index + 1)
                counts = torch.cat([counts[: self.ignore_index], counts[self.ignore_index + 1 :]])
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                y1, y2, x1, x2 = self._crop_box(h, w)
        return img[:, y1:y2, x1:x2], label[y1:y2, x1:x2]

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: image: (3, H, W) uint8 RGB; label: (H, W) int64. Returns: (3, h, w) float, (h, w) int64."""
        img, label = self._resize(image.float(), label)
        img, label = self._crop(img, label)
        if self.rng.random() < self.flip_prob:
            img, label = img.flip(-1), label.flip(-1)
        if self.photometric:
            img = photometric_distortion(img, self.rng)
        img = _normalize(img, self.mean, self.std)
        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - img.shape[1], 0), max(cw - img.shape[2], 0)
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return img.contiguous(), label.contiguous()


class SegTestTransform:
    """Normalisation only; the segmentor resizes at test time (see module docstring)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN_255, std: Sequence[float] = IMAGENET_STD_255) -> None:
        self.mean, self.std = mean, std

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _normalize(image.float(), self.mean, self.std), label


def seg_collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack equal-size samples: ``{'image': (N, 3, H, W), 'label': (N, H, W), 'path': [str]}``."""
    sizes = {tuple(b["image"].shape) for b in batch}
    if len(sizes) > 1:
        raise ValueError(f"cannot batch images of different sizes {sorted(sizes)}; use batch size 1 for evaluation")
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "label": torch.stack([b["label"] for b in batch]),
        "path": [b["path"] for b in batch],
    }
