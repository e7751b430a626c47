"""Classification datasets over files: ``ImageFolder`` trees and ``path label`` lists.

A corrupt or unreadable image must not stop a long run: ``__getitem__`` returns None for it, and
:class:`SkipCollate` drops the Nones from the batch and reports how many it dropped (``num_skipped``), which the
trainer sums into the log. Each failure is logged once at debug level with the file name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

__all__ = [
    "workers_stop_on_error",
    "IMAGE_EXTENSIONS",
    "FileListDataset",
    "INaturalistDataset",
    "ImageFolderDataset",
    "SkipCollate",
    "build_image_dataset",
    "collect_images",
    "inaturalist_meta",
    "load_image",
    "to_8_bit",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# PIL modes holding more than 8 bits per pixel: 16-bit PNG/TIFF open as ``I;16`` (``I;16B``/``I;16L``/``I;16N``
# by byte order) or, from older writers and 32-bit TIFFs, as ``I``.
_WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_8_bit(img: Any) -> Any:
    """Scale a 16-bit (``I;16*``) or 32-bit integer (``I``) PIL image to 8-bit ``L``; other modes unchanged.

    PIL's ``convert('RGB'/'L')`` clips such images instead of scaling them, which turns a normally exposed
    16-bit photo almost entirely white. Values are read on the 16-bit scale (``I`` included, as PIL stores
    16-bit PNGs in it) and mapped by ``round(v / 257)``, so 65535 -> 255 and ``257 * k`` -> ``k`` exactly;
    values outside ``[0, 65535]`` saturate.
    """
    if img.mode not in _WIDE_INT_MODES:
        return img
    import numpy as np
    from PIL import Image

    wide = np.asarray(img).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Any:
    """Decode an image file into a PIL image of ``mode`` (16-bit images scaled to 8 bits, not clipped).

    Raises:
        OSError and other PIL errors for unreadable, truncated or unknown files (decoding happens here).
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decode now: truncated files fail here, inside the try of the caller
        return to_8_bit(img).convert(mode)


class _FileDataset(Dataset):
    """Shared ``(path, label)`` logic; subclasses fill ``samples`` and ``classes``."""

    samples: list[tuple[str, int]]
    classes: list[str]

    def __init__(self, transform: Callable[[Any], torch.Tensor] | None = None, mode: str = "RGB") -> None:
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        try:
            img = load_image(path, self.mode)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            logger.debug("skipping unreadable image %s: %s", path, err)
            return None
        return (self.transform(img) if self.transform is not None else img), label


class ImageFolderDataset(_FileDataset):
    """``root/<class>/**/<image>`` tree; classes are the sorted sub-folder names.

    Args:
        root: Dataset folder.
        transform: PIL image -> tensor.
        mode: PIL mode to convert to (``RGB`` or ``L``).
        classes: Use this class list (and order) instead of the folder names found (e.g. the train set's).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Any], torch.Tensor] | None = None,
        mode: str = "RGB",
        classes: list[str] | None = None,
    ) -> None:
        super().__init__(transform, mode)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
        self.classes = list(classes) if classes is not None else found
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in found if c not in index]
        if unknown:
            raise ValueError(f"{root} has classes not in the class list: {unknown[:5]}")
        self.samples = []
        empty = []
        for cls in found:
            before = len(self.samples)
            for dirpath, _, files in os.walk(root / cls, followlinks=True):
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, name), index[cls]))
            if len(self.samples) == before:
                empty.append(cls)
        if not self.samples:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        if empty:
            logger.warning("%s: class folder(s) without images: %s (no sample of these classes)", root, _preview(empty))
        if classes is None and len(found) == 1:
            logger.warning(
                "%s has a single class folder (%r): a classifier needs two or more (expected root/<class>/<image>)",
                root,
                found[0],
            )


class FileListDataset(_FileDataset):
    """A text file of ``relative/or/absolute/path label`` lines (the official ``meta_data/train.txt`` format).

    Args:
        list_file: The list.
        root: Folder relative paths are resolved against (default: the list's folder).
        transform: PIL image -> tensor.
        mode: PIL mode.
        classes: Class names (index = label); default ``['0', '1', ...]`` up to the largest label.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        root: str | os.PathLike | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        mode: str = "RGB",
        classes: list[str] | None = None,
    ) -> None:
        super().__init__(transform, mode)
        list_file = Path(list_file)
        if not list_file.is_file():
            raise FileNotFoundError(f"file list not found: {list_file}")
        base = Path(root) if root is not None else list_file.parent
        self.samples = []
        lines: list[int] = []
        with open(list_file) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                path, _, label = line.rpartition(" ")
                if not path or not label.lstrip("-").isdigit():
                    raise ValueError(f"{list_file}:{lineno}: expected 'path label', got {line!r}")
                if int(label) < 0 or (classes is not None and int(label) >= len(classes)):
                    limit = f"[0, {len(classes)})" if classes is not None else ">= 0"
                    raise ValueError(f"{list_file}:{lineno}: label {label} is out of range (labels must be {limit})")
                self.samples.append((str(base / path.strip()), int(label)))
                lines.append(lineno)
        if not self.samples:
            raise ValueError(f"file list {list_file} is empty")
        labels = [label for _, label in self.samples]
        top = max(labels)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(top + 1)]
        if classes is None:
            unused = sorted(set(range(top + 1)) - set(labels))
            if unused:
                # One stray large label would otherwise silently widen the classifier head.
                logger.warning(
                    "%s: labels %s never occur; the largest label %d (line %d) makes %d classes",
                    list_file,
                    _preview([str(u) for u in unused]),
                    top,
                    lines[labels.index(top)],
                    top + 1,
                )
            if top == 0:
                logger.warning("%s: every label is 0: a classifier needs two or more classes", list_file)


def inaturalist_meta(date: str | None, lat: float | None, lon: float | None) -> list[float]:
    """The 7 meta inputs of the original's ``intern_image_meta_former`` for one photo (MetaFormer's encoding).

    Date ``YYYY-MM-DD[ hh:mm:ss...]`` -> (sin, cos) of 2 pi month / 12 and of 2 pi hour / 24 (the hour pair 0
    without a time); location -> the unit vector (cos lat cos lon, cos lat sin lon, sin lat). Missing or unparsable
    values give zeros, as in the original.
    """
    import math
    import re

    date_part = [0.0] * 4
    match = re.match(r"\s*(\d+)-(\d+)-(\d+)(?:[ T](\d+):(\d+))?", date or "")
    if match:
        month = int(match.group(2))
        date_part[:2] = [math.sin(2 * math.pi * month / 12), math.cos(2 * math.pi * month / 12)]
        if match.group(4) is not None:
            hour = int(match.group(4))
            date_part[2:] = [math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24)]
    place = [0.0] * 3
    if lat is not None and lon is not None and (lat or lon):
        la, lo = math.radians(float(lat)), math.radians(float(lon))
        place = [math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)]
    return date_part + place


class INaturalistDataset(_FileDataset):
    """iNaturalist 2018 (``train2018.json`` / ``val2018.json``): COCO-style ``images``, ``annotations`` (one
    ``category_id`` per image) and ``categories`` tables; ``file_name`` paths such as
    ``train_val2018/Plantae/7477/<hash>.jpg`` are relative to ``root``.

    Class ``i`` is the ``i``-th category by id (ids 0..8141 in the 2018 release, so the label is the id).

    Args:
        json_file: ``train2018.json`` or ``val2018.json``.
        root: Folder the ``file_name`` paths are relative to (default: the json's folder).
        transform: PIL image -> tensor.
        mode: PIL mode.
        classes: The model's class names: categories are matched to them by name (all must be among them).
        locations: The release's ``<split>2018_locations.json`` (``id``, ``lat``, ``lon``, ``date`` per image):
            items become ``(image, label, meta)`` with the (7,) :func:`inaturalist_meta` of the photo (zeros for an
            image the file does not list), for models with meta branches.
    """

    def __init__(
        self,
        json_file: str | os.PathLike,
        root: str | os.PathLike | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        mode: str = "RGB",
        classes: list[str] | None = None,
        locations: str | os.PathLike | None = None,
    ) -> None:
        import json

        super().__init__(transform, mode)
        json_file = Path(json_file)
        try:
            table = json.loads(json_file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read iNaturalist annotations {json_file}: {err}") from err
        missing = [k for k in ("images", "annotations", "categories") if k not in table]
        if missing:
            raise ValueError(f"{json_file}: no {', '.join(missing)} table (an iNaturalist json has images, "
                             "annotations and categories)")  # fmt: skip
        categories = sorted(table["categories"], key=lambda c: c["id"])
        names = [str(c["name"]) for c in categories]
        index = {c["id"]: i for i, c in enumerate(categories)}
        if classes is not None:
            unknown = [n for n in names if n not in classes]
            if unknown:
                raise ValueError(f"{json_file}: categories {_preview(unknown)} are not classes of the model")
            index = {c["id"]: classes.index(str(c["name"])) for c in categories}
            names = list(classes)
        label_of: dict[Any, int] = {}
        for ann in table["annotations"]:
            if ann["category_id"] not in index:
                raise ValueError(f"{json_file}: annotation {ann.get('id')} has category_id {ann['category_id']}, "
                                 "which is no category of the file")  # fmt: skip
            label_of[ann["image_id"]] = index[ann["category_id"]]
        base = Path(root) if root is not None else json_file.parent
        self.samples = []
        for img in table["images"]:
            if img["id"] not in label_of:
                raise ValueError(f"{json_file}: image {img['id']} ({img['file_name']}) has no annotation")
            self.samples.append((str(base / img["file_name"]), label_of[img["id"]]))
        if not self.samples:
            raise ValueError(f"{json_file} lists no images")
        self.classes = names
        self.meta: list[torch.Tensor] | None = None
        if locations is not None:
            self.meta = _read_locations(Path(locations), [img["id"] for img in table["images"]])

    def __getitem__(self, index: int) -> Any:
        item = super().__getitem__(index)
        if item is None or self.meta is None:
            return item
        return (*item, self.meta[index])


def _read_locations(path: Path, image_ids: list[Any]) -> list[torch.Tensor]:
    """(7,) meta of every image id from an iNaturalist ``*_locations.json`` (a list of per-image records)."""
    import json

    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read iNaturalist locations {path}: {err}") from err
    if not isinstance(records, list) or any(not isinstance(r, dict) or "id" not in r for r in records):
        raise ValueError(f"{path}: expected a list of records with an 'id' (and lat, lon, date)")
    by_id = {r["id"]: r for r in records}
    out = []
    for image_id in image_ids:
        r = by_id.get(image_id, {})
        out.append(torch.tensor(inaturalist_meta(r.get("date"), r.get("lat"), r.get("lon")), dtype=torch.float32))
    return out


def _is_inaturalist(path: Path) -> bool:
    return path.suffix == ".json"


def build_image_dataset(
    path: str | os.PathLike,
    transform: Callable[[Any], torch.Tensor] | None = None,
    mode: str = "RGB",
    root: str | os.PathLike | None = None,
    classes: list[str] | None = None,
    locations: str | os.PathLike | None = None,
) -> ImageFolderDataset | FileListDataset | INaturalistDataset:
    """A folder becomes an :class:`ImageFolderDataset`, a ``.json`` an :class:`INaturalistDataset` (iNaturalist
    2018; ``locations`` its ``*_locations.json`` for the meta inputs), another file a :class:`FileListDataset`."""
    p = Path(path)
    if p.is_dir():
        return ImageFolderDataset(p, transform, mode, classes)
    if p.is_file() and _is_inaturalist(p):
        return INaturalistDataset(p, root, transform, mode, classes, locations)
    if p.is_file():
        return FileListDataset(p, root, transform, mode, classes)
    raise FileNotFoundError(f"dataset not found: {p} (expected an image folder or a 'path label' list file)")


def _preview(items: list[str], n: int = 5) -> str:
    more = f", +{len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


class SkipCollate:
    """Collate ``(image, label)`` samples into ``{'image', 'target', 'num_skipped'}``, dropping None samples."""

    def __call__(self, batch: list[Any]) -> dict[str, Any]:
        good = [s for s in batch if s is not None]
        skipped = len(batch) - len(good)
        if skipped:
            logger.debug("dropped %d unreadable image(s) from a batch", skipped)
        if not good:
            return {"image": torch.empty(0), "target": torch.empty(0, dtype=torch.long), "num_skipped": skipped}
        if len(good[0]) == 3:  # (image, label, meta): iNaturalist with date / location
            images, targets, meta = default_collate(good)
            return {"image": images, "target": targets, "meta": meta, "num_skipped": skipped}
        images, targets = default_collate(good)
        return {"image": images, "target": targets, "num_skipped": skipped}


def collect_images(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Image files named by ``inputs``: files as given, folders expanded (sorted; recursively if asked).

    Raises:
        FileNotFoundError: an input that does not exist, or no image at all.
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            paths += sorted(q for q in found if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(inputs)}")
    return paths


@contextlib.contextmanager
def workers_stop_on_error() -> Iterator[None]:
    """Around a loop over a DataLoader: when the loop raises, its worker processes stop at once.

    A worker's error comes back in a reference cycle that holds the loader's iterator, so only a later garbage
    collection would stop the workers, after a 5 s timeout each; freeing the traceback's frames stops them now.
    """
    try:
        yield
    except BaseException as err:
        traceback.clear_frames(err.__traceback__)
        raise
