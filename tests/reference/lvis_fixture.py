"""A tiny deterministic LVIS v1 fixture (annotation file + detections), shared by ``make_lvis.py`` and the tests.

Pure standard library, so the reference interpreter (with the ``lvis`` package) and the project's tests build the
very same records. Coordinates are multiples of 0.25 (exact in binary), scores are distinct.
"""

from __future__ import annotations

import random

#: (id, name, frequency): non-contiguous ids, every frequency group represented.
CATEGORIES = [
    (1, "aerosol_can", "r"),
    (3, "alarm_clock", "c"),
    (4, "apple", "f"),
    (7, "banana", "f"),
    (10, "bottle", "c"),
    (12, "cup", "f"),
    (15, "kite", "r"),
    (20, "zebra", "c"),
]
#: (id, width, height, split)
IMAGES = [
    (101, 160, 120, "train2017"),
    (102, 128, 160, "val2017"),
    (103, 150, 150, "train2017"),
    (104, 140, 110, "val2017"),
    (105, 170, 130, "train2017"),
    (106, 120, 140, "val2017"),
    (107, 160, 160, "train2017"),
    (108, 150, 120, "val2017"),
]
MINIVAL_IDS = [102, 104, 106, 108]


def _q(v: float) -> float:
    return round(v * 4) / 4


def build_lvis(seed: int = 0) -> tuple[dict, list[dict]]:
    """(LVIS v1 annotation dict, detections as LVIS results: image_id, category_id, bbox xywh, score)."""
    rng = random.Random(seed)
    cat_ids = [c[0] for c in CATEGORIES]
    images, anns, dets = [], [], []
    ann_id = 1
    for img_id, w, h, split in IMAGES:
        present = rng.sample(cat_ids, 3)
        rest = [c for c in cat_ids if c not in present]
        neg = sorted(rng.sample(rest, 2))
        not_exhaustive = sorted(rng.sample(present, 1)) if img_id % 2 else []
        images.append(
            {
                "id": img_id,
                "width": w,
                "height": h,
                "coco_url": f"http://images.cocodataset.org/{split}/{img_id:012d}.jpg",
                "neg_category_ids": neg,
                "not_exhaustive_category_ids": not_exhaustive,
            }
        )
        for cat in present:
            for _ in range(rng.randint(1, 3)):
                side = rng.choice([10, 20, 40, 70, 100])
                bw = _q(min(w - 2, side * rng.uniform(0.8, 1.2)))
                bh = _q(min(h - 2, side * rng.uniform(0.8, 1.2)))
                x, y = _q(rng.uniform(0, w - bw)), _q(rng.uniform(0, h - bh))
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": img_id,
                        "category_id": cat,
                        "bbox": [x, y, bw, bh],
                        "area": _q(bw * bh * 0.8),
                        "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
                    }
                )
                ann_id += 1
                if rng.random() < 0.8:  # a detection near it
                    dx, dy = rng.uniform(-0.3, 0.3) * bw, rng.uniform(-0.3, 0.3) * bh
                    dets.append(
                        {
                            "image_id": img_id,
                            "category_id": cat,
                            "score": rng.random(),
                            "bbox": [_q(max(0, x + dx)), _q(max(0, y + dy)), bw, bh],
                        }
                    )
        for _ in range(rng.randint(2, 5)):  # false positives of any category: present, negative, unknown
            bw, bh = _q(rng.uniform(8, 60)), _q(rng.uniform(8, 60))
            dets.append(
                {
                    "image_id": img_id,
                    "category_id": rng.choice(cat_ids),
                    "score": rng.random(),
                    "bbox": [_q(rng.uniform(0, w - bw)), _q(rng.uniform(0, h - bh)), bw, bh],
                }
            )
    # One image with more than 300 detections, most scored above its true ones: the per-image cap drops those.
    img_id, w, h, _ = IMAGES[-1]
    cat = next(a["category_id"] for a in anns if a["image_id"] == img_id)
    for _ in range(305):
        bw, bh = _q(rng.uniform(8, 40)), _q(rng.uniform(8, 40))
        dets.append(
            {
                "image_id": img_id,
                "category_id": cat,
                "score": 0.5 + rng.random() * 0.5,
                "bbox": [_q(rng.uniform(0, w - bw)), _q(rng.uniform(0, h - bh)), bw, bh],
            }
        )
    # Distinct scores (ties would make the order depend on tie-breaking only).
    for i, d in enumerate(dets):
        d["score"] = round(d["score"], 6) + i * 1e-9
    counts = {c: len({a["image_id"] for a in anns if a["category_id"] == c}) for c in cat_ids}
    categories = [
        {
            "id": c,
            "name": n,
            "frequency": f,
            "synset": f"{n}.n.01",
            "image_count": counts[c],
            "instance_count": sum(a["category_id"] == c for a in anns),
        }
        for c, n, f in CATEGORIES
    ]
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": categories}, dets


def minival(data: dict) -> dict:
    """The subset file of :data:`MINIVAL_IDS` (what ``lvis_v1_minival.json`` is to ``lvis_v1_val.json``)."""
    keep = set(MINIVAL_IDS)
    return {
        **data,
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
    }
