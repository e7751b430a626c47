"""CrowdHuman: the ``.odgt`` and converted-json layouts, ignore regions, and the toolkit's AP / MR^-2 on hand cases.

The expected figures are computed by hand below from the CrowdHuman toolkit's rules (CrowdDet's ``APMRToolkits``,
full-body mode): greedy matching by score at IoU > 0.5, detections covering an ignore region (IoA > 0.5) dropped,
AP = trapezoids between consecutive (recall, precision) points, MR^-2 = geometric mean of the miss rate at the first
point reaching each of the nine reference FPPI values (the last point when none does).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internimage.detection.datasets.crowdhuman import CrowdHumanDataset, crowdhuman_ap_mr, match_image

IDS = ["273271,c9db000d5146c15", "273271,1a0d6000b9e1f5b7", "284193,faa9000f2678b5e"]
SIZE = (120, 100)  # (width, height) of every image
#: One record per image, as in annotation_val.odgt (full-body fbox, ignore via tag 'mask' or extra.ignore).
ODGT = [
    {
        "ID": IDS[0],
        "gtboxes": [
            {
                "tag": "person",
                "fbox": [10, 10, 30, 60],
                "vbox": [10, 10, 30, 40],
                "hbox": [15, 10, 10, 10],
                "extra": {"box_id": 0, "occ": 0},
            },
            {
                "tag": "person",
                "fbox": [50, 10, 30, 60],
                "vbox": [50, 10, 30, 60],
                "hbox": [55, 10, 10, 10],
                "extra": {"box_id": 1, "occ": 0},
                "head_attr": {"ignore": 0},
            },
            {
                "tag": "mask",
                "fbox": [0, 75, 120, 25],
                "vbox": [0, 75, 120, 25],
                "hbox": [0, 75, 120, 25],
                "extra": {"ignore": 1},
            },
        ],
    },
    {
        "ID": IDS[1],
        "gtboxes": [
            {"tag": "person", "fbox": [20, 20, 40, 40], "extra": {"ignore": 0}},
            {"tag": "person", "fbox": [70, 0, 30, 30], "extra": {"ignore": 1}},
            {"tag": "person", "fbox": [-10, 50, 30, 60], "extra": {}},  # truncated: clipped to [0, 50, 20, 100]
        ],
    },
    {"ID": IDS[2], "gtboxes": []},
]


def write_odgt(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_images(img_dir: Path) -> None:
    img_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(IDS):
        Image.new("RGB", SIZE, (30 * i, 90, 160)).save(img_dir / f"{name}.jpg")


def converted_json(records: list[dict]) -> dict:
    """What the original's tools/create_crowd_anno.py writes for ``records``."""
    images, anns = [], []
    for idx, rec in enumerate(records):
        images.append({"file_name": rec["ID"] + ".jpg", "height": SIZE[1], "width": SIZE[0], "id": idx})
        for gb in rec["gtboxes"]:
            x, y, w, h = gb["fbox"]
            ign = gb["tag"] != "person" or gb.get("extra", {}).get("ignore", 0) != 0
            anns.append({"area": w * h, "iscrowd": int(ign), "image_id": idx, "bbox": [x, y, w, h],
                         "category_id": 1, "id": len(anns) + 1})  # fmt: skip
    return {"images": images, "annotations": anns,
            "categories": [{"supercategory": "none", "id": 1, "name": "person"}]}  # fmt: skip


@pytest.fixture()
def layout(tmp_path):
    root = tmp_path / "CrowdHuman"
    write_images(root / "Images")
    (root / "annotations").mkdir()
    odgt = write_odgt(root / "annotations" / "annotation_val.odgt", ODGT)
    js = root / "annotations" / "annotation_val.json"
    js.write_text(json.dumps(converted_json(ODGT)))
    return root, odgt, js


#: Detections (xyxy, score) per image id and the role each plays in the hand computation.
DETS = {
    0: [
        ([10, 10, 40, 70], 0.90),  # = person 1: TP
        ([52, 12, 80, 70], 0.80),  # IoU 1624/1800 with person 2: TP
        ([10, 78, 40, 98], 0.70),  # inside the 'mask' region: dropped
        ([11, 10, 40, 70], 0.60),
    ],  # person 1 already taken, no ignore overlap: FP
    1: [
        ([20, 20, 60, 60], 0.85),  # = person 3: TP
        ([72, 2, 98, 28], 0.50),  # inside the extra.ignore region: dropped
        ([0, 0, 10, 10], 0.95),
    ],  # FP
}  # the truncated person [0, 50, 20, 100] is missed; image 2 has neither persons nor detections


def detections(as_tensor: bool = True) -> dict:
    conv = torch.tensor if as_tensor else np.array
    return {k: {"boxes": conv([b for b, _ in v], dtype=torch.float32 if as_tensor else np.float64),
                "scores": conv([s for _, s in v]), "labels": conv([1] * len(v)), "orig_size": (SIZE[1], SIZE[0])}
            for k, v in DETS.items()}  # fmt: skip


# Hand computation. Counted detections by score: .95 FP, .90 TP, .85 TP, .80 TP, .60 FP; 4 persons, 3 images.
#   recall    0, 1/4, 1/2, 3/4, 3/4      precision 0, 1/2, 2/3, 3/4, 3/5
#   AP = 1/4 (0 + 1/2)/2 + 1/4 (1/2 + 2/3)/2 + 1/4 (2/3 + 3/4)/2 + 0 = (30 + 70 + 85) / 480
#   FPPI 1/3, 1/3, 1/3, 1/3, 2/3 ; miss rate 1, 3/4, 1/2, 1/4, 1/4
#   reference FPPI 0.01 .. 0.3162 (7 points) -> first point (FPPI 1/3 >= each): miss 1
#   0.5623 -> point 5 (2/3): miss 1/4 ; 1.0 -> none reaches it, last point: miss 1/4
#   MR^-2 = exp((7 ln 1 + 2 ln 1/4) / 9) = (1/4)^(2/9)
EXPECTED = {"AP": 185 / 480, "mMR": 0.25 ** (2 / 9), "recall": 0.75}


@pytest.mark.parametrize("fmt", ["odgt", "json"])
def test_layout(layout, fmt):
    root, odgt, js = layout
    ds = CrowdHumanDataset(odgt if fmt == "odgt" else js, root / "Images")
    assert len(ds) == 3 and ds.class_names == ["person"] and ds.num_classes == 1
    r0, r1, r2 = ds.records
    assert [r.image_id for r in ds.records] == [0, 1, 2]
    assert r0.path == root / "Images" / f"{IDS[0]}.jpg" and (r0.height, r0.width) == (100, 120)
    np.testing.assert_array_equal(r0.boxes, [[10, 10, 40, 70], [50, 10, 80, 70]])
    np.testing.assert_array_equal(r0.ignore, [[0, 75, 120, 100]])
    np.testing.assert_array_equal(r1.boxes, [[20, 20, 60, 60], [0, 50, 20, 100]])
    np.testing.assert_array_equal(r1.ignore, [[70, 0, 100, 30]])
    assert r0.labels.tolist() == [1, 1] and r0.labels.dtype == np.int64 and r0.boxes.dtype == np.float32
    assert r2.boxes.shape == (0, 4) and r2.ignore.shape == (0, 4)
    if fmt == "odgt":
        assert r0.extra["ID"] == IDS[0]
    image, target = ds[0]
    assert image.shape == (3, 100, 120)
    assert target["ignore_boxes"].tolist() == [[0, 75, 120, 100]] and target["labels"].tolist() == [1, 1]


@pytest.mark.parametrize("fmt", ["odgt", "json"])
def test_evaluate_hand_case(layout, fmt):
    root, odgt, js = layout
    ds = CrowdHumanDataset(odgt if fmt == "odgt" else js, root / "Images")
    for as_tensor in (True, False):
        out = ds.evaluate(detections(as_tensor))
        for key, value in EXPECTED.items():
            assert math.isclose(out[key], value, abs_tol=1e-9), (key, out[key], value)


def test_ignore_regions_matter(layout):
    root, odgt, _ = layout
    dets = detections()
    dets[0]["scores"][2] = 0.99  # the detection inside the 'mask' region now ranks first
    with_ignore = CrowdHumanDataset(odgt, root / "Images").evaluate(dets)
    for key, value in EXPECTED.items():  # dropped wherever it ranks
        assert math.isclose(with_ignore[key], value, abs_tol=1e-9), key
    no_ignore = [{**r, "gtboxes": [g for g in r["gtboxes"] if g["tag"] == "person" and not g.get("extra", {}).get(
        "ignore")]} for r in ODGT]  # fmt: skip
    out = CrowdHumanDataset(write_odgt(odgt.with_name("plain.odgt"), no_ignore), root / "Images").evaluate(dets)
    # Without ignore regions: .99 F, .95 F, .90 T, .85 T, .80 T, .60 F, .50 F.
    #   recall 0, 0, 1/4, 1/2, 3/4, 3/4, 3/4 ; precision 0, 0, 1/3, 1/2, 3/5, 1/2, 3/7
    #   AP = 1/4 (0 + 1/3)/2 + 1/4 (1/3 + 1/2)/2 + 1/4 (1/2 + 3/5)/2 = 17/60
    #   FPPI 1/3, 2/3, 2/3, 2/3, 2/3, 1, 4/3 ; miss 1, 1, 3/4, 1/2, 1/4, 1/4, 1/4
    #   7 points -> miss 1 ; 0.5623 -> FPPI 2/3 first at point 2: miss 1 ; 1.0 -> point 6: 1/4 ; MR = (1/4)^(1/9)
    assert math.isclose(out["AP"], 17 / 60, abs_tol=1e-9)
    assert math.isclose(out["mMR"], 0.25 ** (1 / 9), abs_tol=1e-9)


def test_match_image_rules():
    gt = np.array([[0, 0, 10, 10]], np.float64)
    ignore = np.array([[0, 0, 20, 20]], np.float64)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40], [0, 0, 20, 10]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    s, tp = match_image(boxes, scores, gt, np.zeros((0, 4)), 50, 50)
    # .95 has IoU exactly 0.5 with the person (not > 0.5): FP; .90 TP; .80 duplicate FP; .70 FP.
    assert s.tolist() == [0.95, 0.9, 0.8, 0.7] and tp.tolist() == [False, True, False, False]
    s, tp = match_image(boxes, scores, gt, ignore, 50, 50)
    # With the ignore region: .95 and the duplicate .80 lie inside it (IoA 1): dropped.
    assert s.tolist() == [0.9, 0.7] and tp.tolist() == [True, False]
    # Boxes are clipped to the image first: this one becomes [0, 0, 10, 10].
    s, tp = match_image(np.array([[-5.0, -5.0, 10, 10]]), np.array([0.5]), gt, np.zeros((0, 4)), 50, 50)
    assert tp.tolist() == [True]


def test_ap_mr_edge_cases():
    # Every detection a TP of the only person: a single point, so the toolkit's AP is 0 and MR is (1 - 1) -> 0.
    out = crowdhuman_ap_mr(np.array([0.9]), np.array([True]), 1, 1)
    assert out["AP"] == 0 and out["mMR"] == 0 and out["recall"] == 1
    assert crowdhuman_ap_mr(np.zeros(0), np.zeros(0, bool), 3, 2) == {"AP": 0.0, "mMR": 1.0, "recall": 0.0}


def test_train_filter_and_transforms(layout):
    from internimage.detection.data import detection_transforms

    root, odgt, _ = layout
    ds = CrowdHumanDataset(odgt, root / "Images", transforms=detection_transforms("3x", True, (1333, 800)), train=True)
    assert [r.image_id for r in ds.records] == [0, 1]  # the image without persons is no training sample
    torch.manual_seed(0)
    for i in range(2):
        image, target = ds[i]
        assert image.ndim == 3 and target["boxes"].shape[-1] == 4
        assert target["ignore_boxes"].ndim == 2 and target["ignore_boxes"].shape[-1] == 4


def test_bad_odgt_line_names_file_and_line(layout):
    root, odgt, _ = layout
    lines = odgt.read_text().splitlines()
    odgt.write_text("\n".join([lines[0], '{"ID": "x", "gtboxes": [', lines[2]]) + "\n")
    with pytest.raises(ValueError) as err:
        CrowdHumanDataset(odgt, root / "Images")
    assert f"{odgt}:2:" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"ID": IDS[0], "gtboxes": [{"tag": "person", "fbox": [200, 10, 30, 30]}]}], f":1 (ID {IDS[0]}): box #0"),
        ([{"ID": IDS[0], "gtboxes": [{"tag": "person", "fbox": [1, 2, 3]}]}], f":1 (ID {IDS[0]}): gtboxes #0: 'fbox'"),
        ([{"gtboxes": []}], ":1: record has no 'ID'"),
        ([{"ID": IDS[0]}], "no 'gtboxes' list"),
    ],
)
def test_bad_odgt_records(layout, records, message):
    root, odgt, _ = layout
    write_odgt(odgt, records)
    with pytest.raises(ValueError) as err:
        CrowdHumanDataset(odgt, root / "Images")
    assert str(odgt) in str(err.value) and message in str(err.value), str(err.value)


def test_bad_json_records(layout):
    root, _, js = layout
    data = converted_json(ODGT)
    data["annotations"][1]["category_id"] = 2
    js.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotation 2: category_id 2 is not 'person'"):
        CrowdHumanDataset(js, root / "Images")
    data = converted_json(ODGT)
    data["annotations"][0]["bbox"] = [130, 10, 5, 5]
    js.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"image 0 \(273271,c9db000d5146c15.jpg\): box #0 .* outside the 120x100"):
        CrowdHumanDataset(js, root / "Images")


def test_missing_image_is_named(layout):
    root, odgt, _ = layout
    (root / "Images" / f"{IDS[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=IDS[1]):
        CrowdHumanDataset(odgt, root / "Images")
