"""Segmentation datasets beyond ADE20K and Cityscapes, in the layouts mmseg 0.30's converters produce.

One class per layout; class names and palettes are those of the original's dataset classes (InternImage's
``mmseg_custom/datasets`` for Mapillary and NYU, mmseg 0.30's for COCO-Stuff and Pascal Context). Every label map
is checked when read: one channel (an RGB colour map is refused, naming the file), and only class ids or the
ignore index 255 (with ``reduce_zero_label``: 0..K and 255). All use ignore index 255, as mmseg does.

==================  =====================================================================  =======  ==========
dataset             layout (``root`` = data_root)                                          classes  zero label
==================  =====================================================================  =======  ==========
``mapillary``       ``<split>/images/*.jpg`` + ``<split>/labels/<stem>.png`` (Vistas v1.2;       66  a class
                    splits ``training`` / ``validation``)
``cocostuff164k``   ``images/<split>/*.jpg`` + ``annotations/<split>/<stem>_labelTrainIds.png``  171  a class
                    (``train2017`` / ``val2017``; raw ``<stem>.png`` stuffthingmaps are mapped
                    on the fly with the converter's id -> train id table when no train-id file)
``cocostuff10k``    ``images/<split>/*.jpg`` + ``annotations/<split>/<stem>_labelTrainIds.png``  171  ignored
                    (``train2014`` / ``test2014``; 0 = unlabelled, ``reduce_zero_label``)
``nyu``             ``image/<stem>.png`` + ``label40/<stem>.png``, stems listed in                40  ignored
                    ``<split>.txt`` (``train`` / ``test``)
``pascal_context``  ``JPEGImages/<stem>.jpg`` + ``SegmentationClassContext/<stem>.png``, stems     59  ignored
                    in ``ImageSets/SegmentationContext/<split>.txt`` (``train`` / ``val``;
                    ``root`` = ``VOCdevkit/VOC2010``; 0 = background, ``reduce_zero_label``)
==================  =====================================================================  =======  ==========

``reduce_zero_label`` (mmseg): 0 -> 255 (ignored), k -> k - 1. Mapillary can also be read with the original's
``MapillaryHack`` (``cityscapes_classes=True``): its 66 classes merged into the 19 Cityscapes train ids, every other
class ignored, as the original's Mapillary pre-training for Cityscapes does.

:func:`dataset_fields` gives the config fields of a layout (classes, ``reduce_zero_label``, split names) and
:func:`build_layout_dataset` builds one by name (``ade20k`` and ``cityscapes`` included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .data import (
    CITYSCAPES_CLASSES,
    ADE20KDataset,
    CityscapesDataset,
    _check_label_values,
    _read_label,
    _SegDataset,
)

__all__ = [
    "COCO_STUFF_CLASSES",
    "DATASETS",
    "MAPILLARY_CLASSES",
    "NYU_DEPTH_V2_CLASSES",
    "PASCAL_CONTEXT_59_CLASSES",
    "COCOStuff10kDataset",
    "COCOStuff164kDataset",
    "MapillaryDataset",
    "NYUDepthV2Dataset",
    "PascalContext59Dataset",
    "build_layout_dataset",
    "dataset_fields",
]

MAPILLARY_CLASSES = (
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane", "Crosswalk - Plain",
    "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road", "Service Lane", "Sidewalk", "Bridge",
    "Building", "Tunnel", "Person", "Bicyclist", "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk",
    "Lane Marking - General", "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner",
    "Bench", "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box", "Mailbox",
    "Manhole", "Phone Booth", "Pothole", "Street Light", "Pole", "Traffic Sign Frame", "Utility Pole",
    "Traffic Light", "Traffic Sign (Back)", "Traffic Sign (Front)", "Trash Can", "Bicycle", "Boat", "Bus", "Car",
    "Caravan", "Motorcycle", "On Rails", "Other Vehicle", "Trailer", "Truck", "Wheeled Slow", "Car Mount",
    "Ego Vehicle", "Unlabeled",
)  # fmt: skip
_MAPILLARY_PALETTE = (
    (165, 42, 42), (0, 192, 0), (196, 196, 196), (190, 153, 153), (180, 165, 180), (90, 120, 150), (102, 102, 156),
    (128, 64, 255), (140, 140, 200), (170, 170, 170), (250, 170, 160), (96, 96, 96), (230, 150, 140),
    (128, 64, 128), (110, 110, 110), (244, 35, 232), (150, 100, 100), (70, 70, 70), (150, 120, 90), (220, 20, 60),
    (255, 0, 0), (255, 0, 100), (255, 0, 200), (200, 128, 128), (255, 255, 255), (64, 170, 64), (230, 160, 50),
    (70, 130, 180), (190, 255, 255), (152, 251, 152), (107, 142, 35), (0, 170, 30), (255, 255, 128), (250, 0, 30),
    (100, 140, 180), (220, 220, 220), (220, 128, 128), (222, 40, 40), (100, 170, 30), (40, 40, 40), (33, 33, 33),
    (100, 128, 160), (142, 0, 0), (70, 100, 150), (210, 170, 100), (153, 153, 153), (128, 128, 128), (0, 0, 80),
    (250, 170, 30), (192, 192, 192), (220, 220, 0), (140, 140, 20), (119, 11, 32), (150, 0, 255), (0, 60, 100),
    (0, 0, 142), (0, 0, 90), (0, 0, 230), (0, 80, 100), (128, 64, 64), (0, 0, 110), (0, 0, 70), (0, 0, 192),
    (32, 32, 32), (120, 10, 10), (0, 0, 0),
)  # fmt: skip
NYU_DEPTH_V2_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)  # fmt: skip
_NYU_DEPTH_V2_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
)  # fmt: skip
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
_COCO_STUFF_PALETTE = (
    (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224), (0, 192, 192),
    (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224), (0, 0, 64), (0, 160, 192),
    (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224), (0, 0, 192), (128, 160, 192), (128, 128, 0),
    (128, 0, 32), (128, 32, 0), (128, 0, 128), (64, 128, 32), (0, 160, 0), (0, 0, 0), (192, 128, 160), (0, 32, 0),
    (0, 128, 128), (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32), (128, 96, 128), (0, 0, 128),
    (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128), (128, 128, 128), (64, 0, 160),
    (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0), (128, 0, 192), (0, 128, 32), (64, 224, 0),
    (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192), (0, 128, 160), (192, 224, 0), (0, 128, 64),
    (128, 128, 32), (192, 32, 128), (0, 64, 192), (0, 0, 32), (64, 160, 128), (128, 64, 64), (128, 0, 160),
    (64, 32, 128), (128, 192, 192), (0, 0, 160), (192, 160, 128), (128, 192, 0), (128, 0, 96), (192, 32, 0),
    (128, 64, 128), (64, 128, 96), (64, 160, 0), (0, 64, 0), (192, 128, 224), (64, 32, 0), (0, 192, 128),
    (64, 128, 224), (192, 160, 0), (0, 192, 0), (192, 128, 96), (192, 96, 128), (0, 64, 128), (64, 0, 96),
    (64, 224, 128), (128, 64, 0), (192, 0, 224), (64, 96, 128), (128, 192, 128), (64, 0, 224), (192, 224, 128),
    (128, 192, 64), (192, 0, 96), (192, 96, 0), (128, 64, 192), (0, 128, 96), (0, 224, 0), (64, 64, 64),
    (128, 128, 224), (0, 96, 0), (64, 192, 192), (0, 128, 224), (128, 224, 0), (64, 192, 64), (128, 128, 96),
    (128, 32, 128), (64, 0, 192), (0, 64, 96), (0, 160, 128), (192, 0, 64), (128, 64, 224), (0, 32, 128),
    (192, 128, 192), (0, 64, 224), (128, 160, 128), (192, 128, 0), (128, 64, 32), (128, 32, 64), (192, 0, 128),
    (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160), (0, 32, 64), (64, 128, 128), (64, 192, 160),
    (128, 160, 64), (64, 128, 0), (192, 192, 32), (128, 96, 192), (64, 0, 128), (64, 64, 32), (0, 224, 192),
    (192, 0, 0), (192, 64, 160), (0, 96, 192), (192, 128, 128), (64, 64, 160), (128, 224, 192), (192, 128, 64),
    (192, 64, 32), (128, 96, 64), (192, 0, 192), (0, 192, 32), (64, 224, 64), (64, 0, 64), (128, 192, 160),
    (64, 96, 64), (64, 128, 192), (0, 192, 160), (192, 224, 64), (64, 128, 64), (128, 192, 32), (192, 32, 192),
    (64, 64, 192), (0, 64, 32), (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192), (192, 192, 192),
    (0, 64, 160), (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128), (64, 192, 96),
    (64, 160, 64), (64, 64, 0),
)  # fmt: skip
PASCAL_CONTEXT_59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door",
    "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain",
    "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window",
    "wood",
)  # fmt: skip
_PASCAL_CONTEXT_59_PALETTE = (
    (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140), (204, 5, 255),
    (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250),
    (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92),
    (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20), (255, 8, 41),
    (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0),
    (0, 235, 255), (0, 173, 255), (31, 0, 255),
)  # fmt: skip
_CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# The 11 COCO thing ids (1-based) that were never annotated; the stuffthingmaps store ids 0-based (id - 1), so
# the 182 raw values 0..181 hold 171 classes. mmseg's coco_stuff164k converter numbers the rest consecutively.
_COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

# The original's MapillaryHack: Cityscapes train id -> the Vistas v1.2 classes merged into it (others ignored).
_MAPILLARY_TO_CITYSCAPES = {
    "road": ("Road", "Lane Marking - General", "Manhole"),
    "sidewalk": ("Curb", "Sidewalk"),
    "building": ("Building",),
    "wall": ("Wall",),
    "fence": ("Fence",),
    "pole": ("Pole", "Utility Pole"),
    "traffic light": ("Traffic Light",),
    "traffic sign": ("Traffic Sign (Front)",),
    "vegetation": ("Vegetation",),
    "terrain": ("Terrain",),
    "sky": ("Sky",),
    "person": ("Person",),
    "rider": ("Bicyclist", "Motorcyclist", "Other Rider"),
    "car": ("Car",),
    "truck": ("Truck",),
    "bus": ("Bus",),
    "train": ("On Rails",),
    "motorcycle": ("Motorcycle",),
    "bicycle": ("Bicycle",),
}


def coco_stuff_raw_to_train() -> torch.Tensor:
    """(256,) int64: stuffthingmaps value -> train id (0..170), 255 -> 255, unused values -> -1."""
    lut = torch.full((256,), -1, dtype=torch.int64)
    used = [v for v in range(182) if v + 1 not in _COCO_UNUSED_IDS]
    lut[torch.tensor(used)] = torch.arange(len(used))
    lut[255] = 255
    return lut


def mapillary_to_cityscapes() -> torch.Tensor:
    """(256,) int64: Vistas v1.2 class id -> Cityscapes train id, 255 for the other Vistas classes, -1 beyond 65."""
    lut = torch.full((256,), -1, dtype=torch.int64)
    lut[: len(MAPILLARY_CLASSES)] = 255
    lut[255] = 255
    for train_id, name in enumerate(CITYSCAPES_CLASSES):
        for vistas in _MAPILLARY_TO_CITYSCAPES[name]:
            lut[MAPILLARY_CLASSES.index(vistas)] = train_id
    return lut


class _LayoutDataset(_SegDataset):
    """A fixed class list, mmseg's ``reduce_zero_label`` and optionally a table from stored values to class ids.

    Args:
        samples: (image, label map or None) pairs.
        classes: Class names in train-id order.
        palette: RGB colour per class.
        transform: ``(uint8 image, int64 label) -> (image, label)``.
        reduce_zero_label: 0 -> 255 (ignored), k -> k - 1.
        ignore_index: Label value excluded from training and metrics.
        lut: (256,) stored value -> class id (255 ignored, -1 invalid), applied to label maps for which
            ``use_lut(path)`` is true (default: all).
        model_classes: The model's class names: labels are relabelled to that order when it names the same classes.
    """

    layout = "segmentation"

    def __init__(
        self,
        samples: list[tuple[Path, Path | None]],
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        transform: Callable | None,
        reduce_zero_label: bool,
        ignore_index: int = 255,
        lut: torch.Tensor | None = None,
        model_classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(samples, classes, transform, ignore_index)
        self.palette = [tuple(int(v) for v in c) for c in palette]
        self.reduce_zero_label = reduce_zero_label
        self._raw_lut = lut
        if model_classes and list(model_classes) != [f"class {i}" for i in range(len(model_classes))]:
            self.align_classes(model_classes, f"the {self.layout} class list")

    def use_lut(self, path: Path) -> bool:
        return True

    def load_label(self, path: Path) -> torch.Tensor:
        label = _read_label(path)
        k = self.num_classes
        if self._raw_lut is not None and self.use_lut(path):
            mapped = self._raw_lut[label.clamp(0, 255)]
            bad = (mapped < 0) | (label > 255)
            if bool(bad.any()):
                raise ValueError(
                    f"label map {path} holds value {int(label[bad].flatten()[0])}, which is no {self.layout} class id "
                    "and not 255 (ignored)"
                )
            return mapped.masked_fill(mapped == 255, self.ignore_index)
        if self.reduce_zero_label:
            meaning = f"{self.layout} ({k} classes, reduce_zero_label) stores 1..{k}, 0 and 255 (both ignored)"
            _check_label_values(label, path, k + 1, (255, self.ignore_index), meaning)
            label = torch.where(label == 0, 255, label - 1)
            label[label == 254] = 255
            return label.masked_fill(label == 255, self.ignore_index)
        meaning = f"{self.layout} ({k} classes) stores 0..{k - 1} and {self.ignore_index} (ignored)"
        _check_label_values(label, path, k, (self.ignore_index,), meaning)
        return label


def _pair(
    layout: str,
    images: list[Path],
    label_of: Callable[[Path], Path | None],
    label_dir: Path,
    require_labels: bool,
) -> list[tuple[Path, Path | None]]:
    """(image, label map or None) of every image; a missing label map is an error when the label folder exists."""
    if require_labels and not label_dir.is_dir():
        raise FileNotFoundError(
            f"{layout} dataset: no label folder {label_dir}; evaluating or training needs the label maps"
        )
    samples: list[tuple[Path, Path | None]] = []
    for img in images:
        label = label_of(img) if label_dir.is_dir() else None
        if label_dir.is_dir() and label is None:
            raise FileNotFoundError(f"{layout} dataset: image {img} has no label map in {label_dir}")
        samples.append((img, label))
    return samples


def _folder_images(layout: str, image_dir: Path, suffix: str) -> list[Path]:
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{layout} dataset: no image folder {image_dir}")
    images = sorted(p for p in image_dir.iterdir() if p.name.lower().endswith(suffix))
    if not images:
        raise FileNotFoundError(f"{layout} dataset: no *{suffix} images in {image_dir}")
    return images


def _listed_images(layout: str, split_file: Path, image_dir: Path, suffix: str) -> list[Path]:
    """Images named by a split file (one stem a line, mmseg's ``split``), each checked to exist."""
    if not split_file.is_file():
        raise FileNotFoundError(f"{layout} dataset: no split file {split_file} (one image name a line)")
    stems = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not stems:
        raise FileNotFoundError(f"{layout} dataset: split file {split_file} lists no image")
    images = [image_dir / f"{stem}{suffix}" for stem in stems]
    for img in images:
        if not img.is_file():
            raise FileNotFoundError(f"{layout} dataset: {split_file} lists {img.name}, but there is no {img}")
    return images


def _split_name(split: str) -> str:
    return split[:-4] if split.endswith(".txt") else split


class MapillaryDataset(_LayoutDataset):
    """Mapillary Vistas v1.2: ``root/<split>/images/*.jpg`` + ``root/<split>/labels/<stem>.png`` (66 classes).

    Args:
        root: Dataset root (``data/Mapillary``).
        split: ``training`` / ``validation``.
        transform: ``(uint8 image, int64 label) -> (image, label)``.
        cityscapes_classes: Merge into the 19 Cityscapes classes (the original's ``MapillaryHack``).
        ignore_index: Label value excluded from training and metrics.
        model_classes: The model's class names (relabel to their order).
        require_labels: Refuse a split without label maps.
    """

    layout = "Mapillary Vistas"

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        transform: Callable | None = None,
        cityscapes_classes: bool = False,
        ignore_index: int = 255,
        model_classes: Sequence[str] | None = None,
        require_labels: bool = False,
    ) -> None:
        base = Path(root) / split
        label_dir = base / "labels"
        images = _folder_images(self.layout, base / "images", ".jpg")
        samples = _pair(self.layout, images, lambda p: _exists(label_dir / f"{p.stem}.png"), label_dir, require_labels)
        classes = CITYSCAPES_CLASSES if cityscapes_classes else MAPILLARY_CLASSES
        palette = _CITYSCAPES_PALETTE if cityscapes_classes else _MAPILLARY_PALETTE
        lut = mapillary_to_cityscapes() if cityscapes_classes else None
        super().__init__(samples, classes, palette, transform, False, ignore_index, lut, model_classes)


def _exists(path: Path) -> Path | None:
    return path if path.is_file() else None


class COCOStuff164kDataset(_LayoutDataset):
    """COCO-Stuff 164k as mmseg's converter leaves it (171 classes, 255 ignored).

    ``root/images/<split>/*.jpg`` + ``root/annotations/<split>/<stem>_labelTrainIds.png``; where a train-id file is
    missing, the raw stuffthingmap ``<stem>.png`` is read and mapped with the converter's table.

    Args:
        root: Dataset root (``data/coco_stuff164k``).
        split: ``train2017`` / ``val2017``.
        transform, ignore_index, model_classes, require_labels: As :class:`MapillaryDataset`.
    """

    layout = "COCO-Stuff 164k"

    def __init__(
        self,
        root: str | Path,
        split: str = "train2017",
        transform: Callable | None = None,
        ignore_index: int = 255,
        model_classes: Sequence[str] | None = None,
        require_labels: bool = False,
    ) -> None:
        root = Path(root)
        label_dir = root / "annotations" / split
        images = _folder_images(self.layout, root / "images" / split, ".jpg")

        def label_of(img: Path) -> Path | None:
            return _exists(label_dir / f"{img.stem}_labelTrainIds.png") or _exists(label_dir / f"{img.stem}.png")

        samples = _pair(self.layout, images, label_of, label_dir, require_labels)
        lut = coco_stuff_raw_to_train()
        super().__init__(samples, COCO_STUFF_CLASSES, _COCO_STUFF_PALETTE, transform, False, ignore_index, lut,
                         model_classes)  # fmt: skip

    def use_lut(self, path: Path) -> bool:
        return not path.name.endswith("_labelTrainIds.png")


class COCOStuff10kDataset(_LayoutDataset):
    """COCO-Stuff 10k as mmseg's converter leaves it: 0 = unlabelled, 1..171 = classes (``reduce_zero_label``).

    ``root/images/<split>/*.jpg`` + ``root/annotations/<split>/<stem>_labelTrainIds.png``.

    Args:
        root: Dataset root (``data/coco_stuff10k``).
        split: ``train2014`` / ``test2014``.
        transform, ignore_index, model_classes, require_labels: As :class:`MapillaryDataset`.
    """

    layout = "COCO-Stuff 10k"

    def __init__(
        self,
        root: str | Path,
        split: str = "train2014",
        transform: Callable | None = None,
        ignore_index: int = 255,
        model_classes: Sequence[str] | None = None,
        require_labels: bool = False,
    ) -> None:
        root = Path(root)
        label_dir = root / "annotations" / split
        images = _folder_images(self.layout, root / "images" / split, ".jpg")
        samples = _pair(
            self.layout, images, lambda p: _exists(label_dir / f"{p.stem}_labelTrainIds.png"), label_dir, require_labels
        )
        super().__init__(samples, COCO_STUFF_CLASSES, _COCO_STUFF_PALETTE, transform, True, ignore_index, None,
                         model_classes)  # fmt: skip


class NYUDepthV2Dataset(_LayoutDataset):
    """NYU Depth V2, 40 classes (the original's ``nyu_depth_v2.py``): 0 = unlabelled (``reduce_zero_label``).

    ``root/image/<stem>.png`` + ``root/label40/<stem>.png`` for the stems listed in ``root/<split>.txt``.

    Args:
        root: Dataset root (``data/nyu_depth_v2``).
        split: ``train`` / ``test`` (``train.txt`` also accepted).
        transform, ignore_index, model_classes, require_labels: As :class:`MapillaryDataset`.
    """

    layout = "NYU Depth V2"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        ignore_index: int = 255,
        model_classes: Sequence[str] | None = None,
        require_labels: bool = False,
    ) -> None:
        root = Path(root)
        label_dir = root / "label40"
        images = _listed_images(self.layout, root / f"{_split_name(split)}.txt", root / "image", ".png")
        samples = _pair(self.layout, images, lambda p: _exists(label_dir / p.name), label_dir, require_labels)
        super().__init__(samples, NYU_DEPTH_V2_CLASSES, _NYU_DEPTH_V2_PALETTE, transform, True, ignore_index, None,
                         model_classes)  # fmt: skip


class PascalContext59Dataset(_LayoutDataset):
    """Pascal Context 59 (mmseg's ``PascalContextDataset59``): 0 = background, ignored (``reduce_zero_label``).

    ``root/JPEGImages/<stem>.jpg`` + ``root/SegmentationClassContext/<stem>.png`` for the stems listed in
    ``root/ImageSets/SegmentationContext/<split>.txt`` (``root`` = ``VOCdevkit/VOC2010``).

    Args:
        root: ``VOCdevkit/VOC2010``.
        split: ``train`` / ``val``.
        transform, ignore_index, model_classes, require_labels: As :class:`MapillaryDataset`.
    """

    layout = "Pascal Context"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        ignore_index: int = 255,
        model_classes: Sequence[str] | None = None,
        require_labels: bool = False,
    ) -> None:
        root = Path(root)
        label_dir = root / "SegmentationClassContext"
        split_file = root / "ImageSets" / "SegmentationContext" / f"{_split_name(split)}.txt"
        images = _listed_images(self.layout, split_file, root / "JPEGImages", ".jpg")
        samples = _pair(self.layout, images, lambda p: _exists(label_dir / f"{p.stem}.png"), label_dir, require_labels)
        super().__init__(samples, PASCAL_CONTEXT_59_CLASSES, _PASCAL_CONTEXT_59_PALETTE, transform, True, ignore_index,
                         None, model_classes)  # fmt: skip


# name -> (dataset class or None for the ADE20K-style folder, fields of the config)
DATASETS: dict[str, tuple[type | None, dict[str, Any]]] = {
    "ade20k": (None, {"reduce_zero_label": True, "train_split": "training", "val_split": "validation"}),
    "cityscapes": (CityscapesDataset, {"classes": list(CITYSCAPES_CLASSES), "reduce_zero_label": False,
                                       "train_split": "train", "val_split": "val"}),
    "mapillary": (MapillaryDataset, {"classes": list(MAPILLARY_CLASSES), "reduce_zero_label": False,
                                     "train_split": "training", "val_split": "validation"}),
    "cocostuff164k": (COCOStuff164kDataset, {"classes": list(COCO_STUFF_CLASSES), "reduce_zero_label": False,
                                             "train_split": "train2017", "val_split": "val2017"}),
    "cocostuff10k": (COCOStuff10kDataset, {"classes": list(COCO_STUFF_CLASSES), "reduce_zero_label": True,
                                           "train_split": "train2014", "val_split": "test2014"}),
    "nyu": (NYUDepthV2Dataset, {"classes": list(NYU_DEPTH_V2_CLASSES), "reduce_zero_label": True,
                                "train_split": "train", "val_split": "test"}),
    "pascal_context": (PascalContext59Dataset, {"classes": list(PASCAL_CONTEXT_59_CLASSES), "reduce_zero_label": True,
                                                "train_split": "train", "val_split": "val"}),
}  # fmt: skip


def dataset_fields(name: str, cityscapes_classes: bool = False) -> dict[str, Any]:
    """The config fields a layout fixes: ``classes`` and ``num_classes`` (not for ``ade20k``, whose folder names
    its own), ``reduce_zero_label``, ``train_split`` and ``val_split`` (the official configs' folders).

    Args:
        name: One of :data:`DATASETS`.
        cityscapes_classes: Mapillary merged into the 19 Cityscapes classes.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    fields = dict(DATASETS[name][1])
    fields["dataset"] = name
    if name == "mapillary" and cityscapes_classes:
        fields["classes"] = list(CITYSCAPES_CLASSES)
    if "classes" in fields:
        fields["num_classes"] = len(fields["classes"])
    return fields


def build_layout_dataset(
    name: str,
    root: str | Path,
    split: str,
    transform: Callable | None = None,
    model_classes: Sequence[str] | None = None,
    require_labels: bool = False,
    **kwargs: Any,
) -> _SegDataset:
    """The dataset of layout ``name`` (``ade20k`` reads an ADE20K-style folder; ``kwargs`` go to its class).

    Args:
        name: One of :data:`DATASETS`.
        root: Dataset root.
        split: Split (folder or split-file name).
        transform: ``(uint8 image, int64 label) -> (image, label)``.
        model_classes: The model's class names: the labels are relabelled to their order (same names required).
        require_labels: Refuse images without label maps.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    cls = DATASETS[name][0]
    if cls is None:
        return ADE20KDataset(root, split, transform, model_classes=model_classes, require_labels=require_labels,
                             **kwargs)  # fmt: skip
    if cls is CityscapesDataset:
        ds = CityscapesDataset(root, split, transform, require_labels=require_labels, **kwargs)
        ds.palette = list(_CITYSCAPES_PALETTE)
        if model_classes and list(model_classes) != [f"class {i}" for i in range(len(model_classes))]:
            ds.align_classes(model_classes, "the Cityscapes class list")
        return ds
    return cls(root, split, transform, model_classes=model_classes, require_labels=require_labels, **kwargs)
