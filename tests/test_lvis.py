"""LVIS v1: layout, federated evaluation against the ``lvis`` package, minival, repeat factors, bad input.

``tests/reference/lvis_metrics.json`` is the recorded output of the reference implementation (the ``lvis``
package's ``LVISEval``, boxes, 300 detections per image) on the fixture of ``tests/reference/lvis_fixture.py``;
regenerate it with ``python tests/reference/make_lvis.py`` under an interpreter that has ``lvis`` installed. The
tests rebuild the same fixture and compare :meth:`LVISDataset.evaluate` with it within 1e-6.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internimage.detection.datasets.lvis import (
    ClassBalancedDataset,
    LVISDataset,
    lvis_ann_file,
    repeat_factors,
    repeat_indices,
)
from reference.lvis_fixture import MINIVAL_IDS, build_lvis, minival

REFERENCE = Path(__file__).parent / "reference" / "lvis_metrics.json"


def write_layout(root: Path, data: dict, split: str = "val") -> Path:
    """Images (solid colours) under ``train2017`` / ``val2017`` and ``annotations/lvis_v1_<split>.json``."""
    for im in data["images"]:
        path = root / Path(*im["coco_url"].split("/")[-2:])
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.new("RGB", (im["width"], im["height"]), (im["id"] % 255, 40, 90)).save(path)
    ann = lvis_ann_file(root, split)
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(data))
    return ann


def as_detections(dataset: LVISDataset, dets: list[dict]) -> dict:
    label = {c: i + 1 for i, c in enumerate(dataset.cat_ids)}
    out: dict[int, dict] = {}
    for d in dets:
        x, y, w, h = d["bbox"]
        e = out.setdefault(d["image_id"], {"boxes": [], "scores": [], "labels": []})
        e["boxes"].append([x, y, x + w, y + h])
        e["scores"].append(d["score"])
        e["labels"].append(label[d["category_id"]])
    return {k: {"boxes": torch.tensor(v["boxes"], dtype=torch.float64), "scores": torch.tensor(v["scores"]),
                "labels": torch.tensor(v["labels"])} for k, v in out.items()}  # fmt: skip


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis_v1")
    data, dets = build_lvis()
    write_layout(root, data, "val")
    write_layout(root, minival(data), "minival")
    return root, data, dets


def test_layout(fixture):
    root, data, _ = fixture
    ds = LVISDataset(lvis_ann_file(root, "val"), root)
    assert ds.cat_ids == [1, 3, 4, 7, 10, 12, 15, 20]
    assert ds.class_names[:2] == ["aerosol_can", "alarm_clock"]
    assert ds.frequency == ["r", "c", "f", "f", "c", "f", "r", "c"]
    assert len(ds) == 8
    r = ds.records[1]
    assert r.image_id == 102 and r.path == root / "val2017" / "000000000102.jpg" and (r.height, r.width) == (160, 128)
    assert ds.records[0].path == root / "train2017" / "000000000101.jpg"
    ann = next(a for a in data["annotations"] if a["image_id"] == 102)
    x, y, w, h = ann["bbox"]
    np.testing.assert_allclose(r.boxes[0], [x, y, x + w, y + h])
    assert r.labels[0] == ds.cat_ids.index(ann["category_id"]) + 1 and r.boxes.dtype == np.float32
    im = data["images"][1]
    assert r.extra["neg_category_ids"] == im["neg_category_ids"]
    assert r.extra["not_exhaustive_category_ids"] == im["not_exhaustive_category_ids"]
    assert r.extra["neg_labels"] == [ds.cat_ids.index(c) + 1 for c in im["neg_category_ids"]]
    image, target = ds[1]
    assert image.shape == (3, 160, 128) and image.dtype == torch.uint8
    assert target["image_id"] == 102 and target["ignore_boxes"].shape == (0, 4)
    assert ds.image_counts.tolist() == [c["image_count"] for c in data["categories"]]


@pytest.mark.parametrize("split", ["val", "minival"])
def test_evaluate_matches_lvis_package(fixture, split):
    root, _, dets = fixture
    ds = LVISDataset(lvis_ann_file(root, split), root)
    ours = ds.evaluate(as_detections(ds, dets))
    ref = json.loads(REFERENCE.read_text())[split]
    assert set(ref) <= set(ours)
    for key, value in ref.items():
        assert math.isclose(ours[key], value, abs_tol=1e-6), (split, key, ours[key], value)


def test_minival_is_the_subset(fixture):
    root, _, _ = fixture
    ds = LVISDataset(lvis_ann_file(root, "minival"), root)
    assert [r.image_id for r in ds.records] == MINIVAL_IDS
    assert all(r.path.parent.name == "val2017" for r in ds.records)


def test_perfect_detections_score_one(fixture):
    root, data, _ = fixture
    ds = LVISDataset(lvis_ann_file(root, "val"), root)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0 - i * 1e-4}
            for i, a in enumerate(data["annotations"])]  # fmt: skip
    out = ds.evaluate(as_detections(ds, dets))
    for key in ("bbox_AP", "bbox_AP50", "bbox_APr", "bbox_APc", "bbox_APf", "bbox_AR@300"):
        assert out[key] == pytest.approx(1.0), key


def test_repeat_factors_hand_case():
    # 4 images; category 1 in all (f = 1), category 2 in one (f = 1/4), category 3 in two (f = 1/2); t = 0.5.
    labels = [np.array([1, 2]), np.array([1, 3]), np.array([1, 3, 3]), np.array([1])]
    f = repeat_factors(labels, 0.5)
    r2 = math.sqrt(0.5 / 0.25)  # sqrt(2)
    np.testing.assert_allclose(f, [r2, 1.0, 1.0, 1.0])
    assert repeat_indices(f) == [0, 0, 1, 2, 3]
    np.testing.assert_allclose(repeat_factors(labels, 1.0), [2.0, math.sqrt(2), math.sqrt(2), 1.0])
    assert repeat_indices([2.0, 1.5, 1.0]) == [0, 0, 1, 1, 2]


def test_class_balanced_dataset(fixture):
    root, _, _ = fixture
    ds = LVISDataset(lvis_ann_file(root, "val"), root, train=True)
    cb = ClassBalancedDataset(ds, oversample_thr=0.5)
    assert len(cb) == sum(math.ceil(r) for r in cb.factors) > len(ds)
    assert cb[0][1]["image_id"] == ds.records[cb.indices[0]].image_id


def test_passes_the_3x_transforms(fixture):
    from internimage.detection.data import detection_transforms

    root, _, _ = fixture
    ds = LVISDataset(lvis_ann_file(root, "val"), root, transforms=detection_transforms("3x", True, (1333, 800)),
                     train=True)  # fmt: skip
    torch.manual_seed(0)
    image, target = ds[0]
    assert image.ndim == 3 and target["boxes"].shape[-1] == 4 and len(target["labels"]) == len(target["boxes"])


def _broken(root: Path, edit) -> Path:
    data, _ = build_lvis()
    data = copy.deepcopy(data)
    edit(data)
    return write_layout(root, data, "train")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["annotations"][3].update(category_id=999), "annotation 4: category_id 999 is not in 'categories'"),
        (lambda d: d["annotations"][0].update(bbox=[150.0, 10.0, 40.0, 20.0]), "annotation 1: bbox [x, y, w, h]"),
        (lambda d: d["images"][2].pop("neg_category_ids"), "image 103 has no 'neg_category_ids' list"),
        (lambda d: d["categories"][0].update(frequency="x"), "category 1 (aerosol_can): 'frequency' must be"),
        (lambda d: d["annotations"][2].update(image_id=5), "annotation 3: image_id 5 is not an image"),
    ],
)
def test_bad_input_is_one_line(tmp_path, edit, message):
    ann = _broken(tmp_path, edit)
    with pytest.raises(ValueError) as err:
        LVISDataset(ann, tmp_path)
    text = str(err.value)
    assert "\n" not in text and str(ann) in text and message in text, text
