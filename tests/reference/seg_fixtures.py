"""Tiny segmentation datasets in the layouts mmseg 0.30's converters produce (numpy + Pillow only).

Shared by ``tests/test_seg_datasets*.py`` and ``make_seg_datasets.py`` (which runs in the oracle venv). Each writer
lays out 2 images per split with the real folder and file naming, label maps holding the dataset's stored values
(train ids, raw ids with 0 = unlabelled, 255 = ignored) as single-channel PNGs (Mapillary: palette PNGs as Vistas
ships them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 24, 32

# Stored label values each fixture draws from (the first value is the background block).
VALUES = {
    "cityscapes": (0, 1, 2, 13, 255),
    "mapillary": (13, 15, 17, 55, 65),
    "cocostuff164k": (0, 5, 100, 170, 255),
    "cocostuff10k": (1, 6, 101, 171, 0),
    "nyu": (1, 2, 20, 40, 0),
    "pascal_context": (1, 15, 30, 59, 0),
}
SPLITS = {
    "cityscapes": ("train", "val"),
    "mapillary": ("training", "validation"),
    "cocostuff164k": ("train2017", "val2017"),
    "cocostuff10k": ("train2014", "test2014"),
    "nyu": ("train", "test"),
    "pascal_context": ("train", "val"),
}


def stored_label(rng: np.random.Generator, values: tuple[int, ...]) -> np.ndarray:
    """(H, W) uint8: background ``values[0]`` with a block of each other value."""
    label = np.full((H, W), values[0], np.uint8)
    for v in values[1:]:
        h, w = rng.integers(H // 3, H // 2 + 1), rng.integers(W // 3, W // 2 + 1)
        y, x = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
        label[y : y + h, x : x + w] = v
    return label


def image_for(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: a colour per stored value plus noise (learnable by a tiny model)."""
    label = label.astype(np.int64)
    colours = np.stack([(label * 37) % 256, (label * 91 + 60) % 256, (label * 53 + 120) % 256], -1).astype(float)
    return (colours + rng.normal(0, 8, colours.shape)).clip(0, 255).astype(np.uint8)


def _save_label(label: np.ndarray, path: Path, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label)
    if palette:  # a palette PNG whose indices are the class ids
        img = Image.frombytes("P", img.size, label.tobytes())
        img.putpalette([c for v in range(256) for c in ((v * 37) % 256, (v * 91) % 256, (v * 53) % 256)])
    img.save(path)


def _save_image(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(img).save(path)


def write_layout(name: str, root: Path, n: int = 2, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Write dataset ``name`` under ``root``; returns ``{split: [(image, label map) relative to root]}``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS[name]:
        pairs = []
        stems = []
        for i in range(n):
            label = stored_label(rng, VALUES[name])
            img = image_for(rng, label)
            if name == "cityscapes":
                city = "aachen" if split == "train" else "frankfurt"
                stem = f"{city}_{i:06d}_000019"
                image = f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"
                ann = f"gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png"
            elif name == "mapillary":
                stem = f"{'_' if i else '-'}{seed}xJ3b{i}Rq9k"
                image, ann = f"{split}/images/{stem}.jpg", f"{split}/labels/{stem}.png"
            elif name == "cocostuff164k":
                stem = f"{i + 139 + 1000 * seed:012d}"
                image, ann = f"images/{split}/{stem}.jpg", f"annotations/{split}/{stem}_labelTrainIds.png"
            elif name == "cocostuff10k":
                stem = f"COCO_{split}_{i + 9 + 1000 * seed:012d}"
                image, ann = f"images/{split}/{stem}.jpg", f"annotations/{split}/{stem}_labelTrainIds.png"
            elif name == "nyu":
                stem = f"{i + 1 + (0 if split == 'train' else 1000):d}"
                image, ann = f"image/{stem}.png", f"label40/{stem}.png"
            else:
                stem = f"20{'08' if split == 'train' else '10'}_{i + 1:06d}"
                image, ann = f"JPEGImages/{stem}.jpg", f"SegmentationClassContext/{stem}.png"
            _save_image(img, root / image)
            _save_label(label, root / ann, palette=name == "mapillary")
            pairs.append((image, ann))
            stems.append(stem)
        if name == "nyu":
            (root / f"{split}.txt").write_text("\n".join(stems) + "\n")
        elif name == "pascal_context":
            lists = root / "ImageSets" / "SegmentationContext"
            lists.mkdir(parents=True, exist_ok=True)
            (lists / f"{split}.txt").write_text("\n".join(stems) + "\n")
        written[split] = pairs
    return written


def fake_prediction(seed: int, label: np.ndarray, num_classes: int) -> np.ndarray:
    """A prediction right on about 70 % of the pixels (labels >= num_classes replaced by random classes)."""
    rng = np.random.default_rng(seed)
    pred = np.where(label < num_classes, label, rng.integers(0, num_classes, label.shape)).astype(np.int64)
    wrong = rng.random(label.shape) < 0.3
    return np.where(wrong, rng.integers(0, num_classes, label.shape), pred)
