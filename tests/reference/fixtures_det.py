"""Deterministic tiny detection fixtures in the datasets' real on-disk formats (numpy RNG + stdlib + PIL only).

Shared by the tests (``from reference.fixtures_det import ...``) and by the reference scripts run in the oracle
venv (``from fixtures_det import ...``), so both see byte-identical files. Everything derives from
``numpy.random.default_rng(seed)``: the same seed gives the same images, annotations and detections.

Generic pieces (any layout): :func:`write_image`, :func:`random_box`, :func:`fake_detections`.
Layouts: :func:`write_voc` (``VOCdevkit/VOC20xx``), :func:`write_openimages` (OpenImages V6 CSVs + hierarchy).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "OI_CLASSES",
    "OI_HIERARCHY",
    "fake_detections",
    "random_box",
    "write_image",
    "write_openimages",
    "write_voc",
]


def write_image(path: Path, height: int, width: int, rng: np.random.Generator) -> None:
    """A random RGB image of (height, width); format from the suffix (``.jpg``: JPEG quality 90)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)


def random_box(rng: np.random.Generator, height: int, width: int, min_side: int = 6) -> list[float]:
    """A random xyxy box inside (0, 0, width, height) with sides >= ``min_side`` (float pixels)."""
    x1 = float(rng.uniform(0, width - min_side - 1))
    y1 = float(rng.uniform(0, height - min_side - 1))
    x2 = float(rng.uniform(x1 + min_side, width))
    y2 = float(rng.uniform(y1 + min_side, height))
    return [x1, y1, x2, y2]


def fake_detections(
    gts: list[tuple[np.ndarray, np.ndarray]],
    sizes: list[tuple[int, int]],
    num_classes: int,
    rng: np.random.Generator,
    hit_rate: float = 0.75,
    false_per_image: int = 3,
    jitter: float = 0.12,
    label_pool: list[int] | None = None,
    group_of: list[np.ndarray] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Detections around the ground truth: per object a jittered hit (prob ``hit_rate``, sometimes a duplicate,
    sometimes the wrong class), plus random false positives; scores distinct in (0.01, 1).

    Args:
        gts: Per image ``(boxes (n, 4) xyxy pixels, labels (n,) in 1..num_classes)``.
        sizes: Per image (height, width).
        label_pool: Labels drawn for wrong-class hits and false positives (default all).
        group_of: Per image (n,) flags: each group-of object also gets 1-3 small detections inside it (members).

    Returns:
        Per image ``{"boxes": (m, 4) float32, "scores": (m,) float32, "labels": (m,) int64 1..num_classes}``.
    """
    pool = list(range(1, num_classes + 1)) if label_pool is None else list(label_pool)
    out = []
    for index, ((boxes, labels), (h, w)) in enumerate(zip(gts, sizes)):
        det_boxes, det_labels = [], []
        flags = group_of[index] if group_of is not None else np.zeros(len(labels), bool)
        for box, label, flag in zip(np.asarray(boxes, np.float64).reshape(-1, 4), labels, flags):
            if flag:
                for _ in range(int(rng.integers(1, 4))):
                    bw, bh = (box[2] - box[0]) / 3, (box[3] - box[1]) / 3
                    x1 = float(rng.uniform(box[0], box[2] - bw))
                    y1 = float(rng.uniform(box[1], box[3] - bh))
                    det_boxes.append([x1, y1, x1 + bw, y1 + bh])
                    det_labels.append(int(label))
            copies = int(rng.random() < hit_rate) + int(rng.random() < 0.2)
            for _ in range(copies):
                bw, bh = box[2] - box[0], box[3] - box[1]
                noise = rng.normal(0, jitter, 4) * np.array([bw, bh, bw, bh])
                b = box + noise
                b = [max(0.0, b[0]), max(0.0, b[1]), min(float(w), b[2]), min(float(h), b[3])]
                if b[2] - b[0] < 1 or b[3] - b[1] < 1:
                    continue
                wrong = rng.random() < 0.1
                det_boxes.append(b)
                det_labels.append(int(rng.choice(pool)) if wrong else int(label))
        for _ in range(false_per_image):
            det_boxes.append(random_box(rng, h, w, 4))
            det_labels.append(int(rng.choice(pool)))
        n = len(det_boxes)
        out.append(
            {
                "boxes": np.asarray(det_boxes, np.float32).reshape(-1, 4),
                "scores": (0.01 + 0.98 * rng.permutation(n) / max(n, 1) + rng.uniform(0, 1e-3, n)).astype(np.float32),
                "labels": np.asarray(det_labels, np.int64),
            }
        )
    return out


# ----------------------------------------------------------------------------------------------------------- VOC


def _voc_xml(name: str, year: int, size: tuple[int, int] | None, objects: list[dict]) -> str:
    parts = [f"<annotation>\n\t<folder>VOC{year}</folder>\n\t<filename>{name}.jpg</filename>"]
    if size is not None:
        h, w = size
        parts.append(f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>")
    for obj in objects:
        x1, y1, x2, y2 = obj["bbox"]
        parts.append(
            f"\t<object>\n\t\t<name>{obj['name']}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>"
            f"\n\t\t<difficult>{obj['difficult']}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>"
            f"\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>"
        )
    parts.append("</annotation>\n")
    return "\n".join(parts)


def write_voc(
    devkit: Path,
    year: int,
    seed: int,
    classes: tuple[str, ...] = ("cat", "dog", "person", "car"),
    num_images: int = 8,
    split: str = "test",
) -> dict:
    """Write ``devkit/VOC{year}/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}``.

    Images are 40-80 px; 2-5 objects each with 1-based integer corners (some written as decimals, e.g. ``"12.6"``,
    truncated by readers), about one in five ``difficult``; image 1 has only difficult objects, image 2 has no
    ``<size>`` in its XML.

    Returns:
        ``{"root", "split", "ids", "sizes" [(h, w)], "objects" [[{"name", "bbox" (1-based ints), "difficult"}]]}``.
    """
    rng = np.random.default_rng(seed)
    root = devkit / f"VOC{year}"
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    ids, sizes, all_objects = [], [], []
    for i in range(num_images):
        name = f"{year}_{i:06d}"
        h, w = int(rng.integers(40, 81)), int(rng.integers(40, 81))
        write_image(root / "JPEGImages" / f"{name}.jpg", h, w, rng)
        objects = []
        for _ in range(int(rng.integers(2, 6))):
            x1, y1, x2, y2 = random_box(rng, h, w, 8)
            bbox = [int(x1) + 1, int(y1) + 1, max(int(x2), int(x1) + 2), max(int(y2), int(y1) + 2)]
            objects.append(
                {
                    "name": classes[int(rng.integers(len(classes)))],
                    "bbox": bbox,
                    "difficult": int(i == 1 or rng.random() < 0.2),
                }
            )
        written = [dict(o) for o in objects]
        if i == 3:  # a decimal coordinate, truncated by int(float(.))
            written[0]["bbox"] = [f"{written[0]['bbox'][0]}.6", *written[0]["bbox"][1:]]
        (root / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, year, None if i == 2 else (h, w), written))
        ids.append(name)
        sizes.append((h, w))
        all_objects.append(objects)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in ids))
    return {"root": root, "split": split, "ids": ids, "sizes": sizes, "objects": all_objects}


# ---------------------------------------------------------------------------------------------------- OpenImages

#: (MID, display name) in label order.
OI_CLASSES = (
    ("/m/0a1", "Animal"),
    ("/m/0b2", "Cat"),
    ("/m/0c3", "Kitten"),
    ("/m/0d4", "Dog"),
    ("/m/0e5", "Vehicle"),
    ("/m/0f6", "Toy"),
)
#: Three levels (Animal > Cat > Kitten), a sibling (Dog), and a class under two parents (Toy: Animal, Vehicle).
OI_HIERARCHY = {
    "LabelName": "/m/0bl9f",
    "Subcategory": [
        {
            "LabelName": "/m/0a1",
            "Subcategory": [
                {"LabelName": "/m/0b2", "Subcategory": [{"LabelName": "/m/0c3"}]},
                {"LabelName": "/m/0d4"},
                {"LabelName": "/m/0f6"},
            ],
        },
        {"LabelName": "/m/0e5", "Subcategory": [{"LabelName": "/m/0f6"}]},
    ],
}
_OI_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
)


def write_openimages(root: Path, seed: int, num_images: int = 8) -> dict:
    """Write an OpenImages V6 layout under ``root``.

    Files: ``annotations/{validation-annotations-bbox.csv, class-descriptions-boxable.csv,
    bbox_labels_600_hierarchy.json, validation-annotations-human-imagelabels-boxable.csv}`` and
    ``validation/<ImageID>.jpg``. Boxes are fractions with 6 decimals, about one in four group-of; image-level
    labels repeat the box classes (confidence 1) plus one other class (last in ``image_labels``, confidence 0 or 1).

    Returns:
        ``{"ann_file", "label_file", "hierarchy_file", "image_level_file", "img_prefix", "ids", "sizes" [(h, w)],
        "boxes" [(n, 4) fractions xyxy], "labels" [(n,) 1..K], "group_of" [(n,) bool], "image_labels" [[1..K]]}``.
    """
    rng = np.random.default_rng(seed)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    img_prefix = root / "validation"
    label_file = ann / "class-descriptions-boxable.csv"
    with open(label_file, "w", newline="") as f:
        csv.writer(f).writerows(OI_CLASSES)
    hierarchy_file = ann / "bbox_labels_600_hierarchy.json"
    hierarchy_file.write_text(json.dumps(OI_HIERARCHY, indent=1))
    k = len(OI_CLASSES)
    leaf_weights = np.array([1, 2, 3, 3, 2, 2], np.float64)
    info = {"ids": [], "sizes": [], "boxes": [], "labels": [], "group_of": [], "image_labels": []}
    box_rows, label_rows = [], []
    for i in range(num_images):
        image_id = f"{seed:02x}{i:014x}"
        h, w = int(rng.integers(40, 81)), int(rng.integers(40, 81))
        write_image(img_prefix / f"{image_id}.jpg", h, w, rng)
        n = int(rng.integers(1, 6))
        boxes, labels, groups = [], [], []
        for _ in range(n):
            x1, y1, x2, y2 = random_box(rng, 100, 100, 8)
            frac = [round(x1 / 100, 6), round(y1 / 100, 6), round(x2 / 100, 6), round(y2 / 100, 6)]
            label = int(rng.choice(k, p=leaf_weights / leaf_weights.sum())) + 1
            group = bool(rng.random() < 0.25)
            boxes.append(frac)
            labels.append(label)
            groups.append(group)
            mid = OI_CLASSES[label - 1][0]
            box_rows.append(
                f"{image_id},xclick,{mid},1,{frac[0]:.6f},{frac[2]:.6f},{frac[1]:.6f},{frac[3]:.6f},"
                f"{int(rng.integers(0, 2))},0,{int(group)},0,0"
            )
        image_labels = sorted(set(labels))
        extra = int(rng.choice([c for c in range(1, k + 1) if c not in image_labels]))
        for label in image_labels:
            label_rows.append(f"{image_id},verification,{OI_CLASSES[label - 1][0]},1")
        label_rows.append(f"{image_id},verification,{OI_CLASSES[extra - 1][0]},{int(rng.random() < 0.5)}")
        image_labels.append(extra)
        info["ids"].append(image_id)
        info["sizes"].append((h, w))
        info["boxes"].append(np.asarray(boxes, np.float64))
        info["labels"].append(np.asarray(labels, np.int64))
        info["group_of"].append(np.asarray(groups, bool))
        info["image_labels"].append(image_labels)
    label_rows.append("ffffffffffffffff,verification,/m/0a1,1")  # an image without boxes: not in the dataset
    ann_file = ann / "validation-annotations-bbox.csv"
    ann_file.write_text(_OI_HEADER + "\n" + "\n".join(box_rows) + "\n")
    image_level_file = ann / "validation-annotations-human-imagelabels-boxable.csv"
    image_level_file.write_text("ImageID,Source,LabelName,Confidence\n" + "\n".join(label_rows) + "\n")
    info.update(
        ann_file=ann_file,
        label_file=label_file,
        hierarchy_file=hierarchy_file,
        image_level_file=image_level_file,
        img_prefix=img_prefix,
    )
    return info
