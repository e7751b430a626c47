"""Segmentation layouts beyond ADE20K: Cityscapes, Mapillary, COCO-Stuff 164k / 10k, NYU Depth V2, Pascal Context.

Class lists are checked against values written here from the original's files (InternImage
``segmentation/mmseg_custom/datasets/{mapillary,nyu_depth_v2}.py``, mmseg 0.30 ``coco_stuff.py``,
``pascal_context.py``, ``tools/convert_datasets/coco_stuff164k.py``); reading and mIoU against mmseg 0.30 run on the
same fixtures (``tests/reference/seg_datasets.json``, recorded by ``tests/reference/make_seg_datasets.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internimage.segmentation.datasets import (
    COCOStuff10kDataset,
    COCOStuff164kDataset,
    MapillaryDataset,
    NYUDepthV2Dataset,
    PascalContext59Dataset,
    build_layout_dataset,
    dataset_fields,
)
from internimage.segmentation.evaluation import SegMetric
from reference.seg_fixtures import SPLITS, write_layout

REFERENCE = json.loads((Path(__file__).parent / "reference" / "seg_datasets.json").read_text())
LAYOUTS = list(SPLITS)


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_reading_and_miou_match_mmseg(name, tmp_path):
    ref = REFERENCE[name]
    write_layout(name, tmp_path, seed=ref["seed"])
    for k, split in enumerate(SPLITS[name]):
        entry = ref["splits"][split]
        ds = build_layout_dataset(name, tmp_path, split, require_labels=True)
        assert ds.num_classes == entry["num_classes"] and ds.ignore_index == entry["ignore_index"] == 255
        pairs = [[str(Path(i).relative_to(tmp_path)), str(Path(a).relative_to(tmp_path))] for i, a in ds.samples]
        assert pairs == entry["pairs"]
        labels = [ds[i]["label"] for i in range(len(ds))]
        for ours, theirs in zip(labels, entry["labels"]):
            assert torch.equal(ours, torch.tensor(theirs))
        if k == 1:
            metric = SegMetric(ds.num_classes)
            for pred, label in zip(entry["preds"], labels):
                metric.update(torch.tensor(pred)[None], label[None])
            got, want = metric.compute(), entry["metrics"]
            assert got["aAcc"] == pytest.approx(want["aAcc"], abs=1e-12)
            for a, b in zip(got["IoU"] + got["Acc"], want["IoU"] + want["Acc"]):
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)
    if "classes" in ref:  # mmseg's class list and palette
        assert list(ds.classes) == ref["classes"] and [list(c) for c in ds.palette] == ref["palette"]


def test_class_lists_from_the_original_files():
    # InternImage segmentation/mmseg_custom/datasets/mapillary.py (Vistas v1.2)
    m = dataset_fields("mapillary")
    assert m["num_classes"] == 66 and m["classes"][0] == "Bird" and m["classes"][-1] == "Unlabeled"
    assert m["classes"][13] == "Road" and m["classes"][50] == "Traffic Sign (Front)" and not m["reduce_zero_label"]
    assert MapillaryDataset.__init__.__defaults__[0] == "training"
    # nyu_depth_v2.py: 40 classes, reduce_zero_label=True, split files
    n = dataset_fields("nyu")
    assert n["num_classes"] == 40 and n["classes"][0] == "wall" and n["classes"][-1] == "otherprop"
    assert n["classes"][23] == "refridgerator" and n["reduce_zero_label"] and n["val_split"] == "test"
    # mmseg 0.30 coco_stuff.py (171 classes) and configs coco-stuff164k / coco-stuff10k
    c = dataset_fields("cocostuff164k")
    assert c["num_classes"] == 171 and c["classes"][0] == "person" and c["classes"][-1] == "wood"
    assert c["classes"][79] == "toothbrush" and c["classes"][80] == "banner" and not c["reduce_zero_label"]
    assert (
        dataset_fields("cocostuff10k")["reduce_zero_label"]
        and dataset_fields("cocostuff10k")["val_split"] == "test2014"
    )
    # mmseg 0.30 pascal_context.py PascalContextDataset59
    p = dataset_fields("pascal_context")
    assert p["num_classes"] == 59 and p["classes"][0] == "aeroplane" and p["classes"][-1] == "wood"
    assert p["reduce_zero_label"]
    cs = dataset_fields("cityscapes")
    assert cs["num_classes"] == 19 and cs["classes"][-1] == "bicycle" and cs["train_split"] == "train"
    with pytest.raises(ValueError, match="unknown dataset"):
        dataset_fields("voc")


def _one(tmp_path, name):
    write_layout(name, tmp_path, n=1)
    return tmp_path


def test_reduce_zero_label_on_hand_values(tmp_path):
    root = _one(tmp_path, "nyu")
    label = np.array([[0, 1, 2, 40], [255, 20, 39, 0]] * 12, np.uint8).repeat(8, 1)
    Image.fromarray(label).save(root / "label40" / "1.png")
    got = NYUDepthV2Dataset(root, "train")[0]["label"][:2, ::8]
    assert got.tolist() == [[255, 0, 1, 39], [255, 19, 38, 255]]
    root = _one(tmp_path / "pc", "pascal_context")
    Image.fromarray(label).save(root / "SegmentationClassContext" / "2008_000001.png")
    got = PascalContext59Dataset(root, "train.txt")[0]["label"][:2, ::8]
    assert got.tolist() == [[255, 0, 1, 39], [255, 19, 38, 255]]
    root = _one(tmp_path / "c10", "cocostuff10k")
    stored = label.copy()
    stored[0, :8] = 171
    Image.fromarray(stored).save(next((root / "annotations" / "train2014").iterdir()))
    assert COCOStuff10kDataset(root, "train2014")[0]["label"][0, 0] == 170


def test_cocostuff164k_raw_stuffthingmaps_use_the_converter_table(tmp_path):
    root = _one(tmp_path, "cocostuff164k")
    ann = root / "annotations" / "train2017"
    for p in ann.iterdir():
        p.unlink()
    # clsID_to_trID of mmseg's tools/convert_datasets/coco_stuff164k.py: 10->10, 12->11, 24->23, 26->24, 91->80,
    # 181->170, 255->255 (11, 25, 90 are not COCO-Stuff ids)
    raw = np.array([[10, 12, 24, 26], [91, 181, 255, 0]] * 12, np.uint8).repeat(8, 1)
    Image.fromarray(raw).save(ann / "000000000139.png")
    got = COCOStuff164kDataset(root, "train2017")[0]["label"][:2, ::8]
    assert got.tolist() == [[10, 11, 23, 24], [80, 170, 255, 0]]
    raw[0, 0] = 11
    Image.fromarray(raw).save(ann / "000000000139.png")
    with pytest.raises(ValueError, match=r"000000000139\.png holds value 11"):
        COCOStuff164kDataset(root, "train2017")[0]


def test_mapillary_merged_into_cityscapes_like_the_original_hack(tmp_path):
    root = _one(tmp_path, "mapillary")
    # MapillaryHack map: [[13, 24, 41], [2, 15], [17], [6], [3], [45, 47], [48], [50], [30], [29], [27], [19],
    # [20, 21, 22], [55], [61], [54], [58], [57], [52]]; every other class of range(66) -> 255
    values = [
        13,
        24,
        41,
        2,
        15,
        17,
        6,
        3,
        45,
        47,
        48,
        50,
        30,
        29,
        27,
        19,
        20,
        21,
        22,
        55,
        61,
        54,
        58,
        57,
        52,
        0,
        65,
        49,
    ]
    want = [0, 0, 0, 1, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 12, 12, 13, 14, 15, 16, 17, 18, 255, 255, 255]
    label = np.array([values], np.uint8).repeat(24, 0)
    img = np.zeros((24, len(values), 3), np.uint8)
    stem = next((root / "training" / "images").iterdir()).stem
    Image.fromarray(img).save(root / "training" / "images" / f"{stem}.jpg")
    Image.fromarray(label).save(root / "training" / "labels" / f"{stem}.png")
    ds = MapillaryDataset(root, "training", cityscapes_classes=True)
    assert ds.num_classes == 19 and ds[0]["label"][0].tolist() == want
    assert MapillaryDataset(root, "training")[0]["label"][0].tolist() == values


@pytest.mark.parametrize("name", LAYOUTS)
def test_rgb_and_out_of_range_label_maps_are_one_line_errors_naming_the_file(name, tmp_path):
    pairs = write_layout(name, tmp_path, n=1)[SPLITS[name][0]]
    ann = tmp_path / pairs[0][1]
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(ann)
    ds = build_layout_dataset(name, tmp_path, SPLITS[name][0])
    with pytest.raises(ValueError, match="mode RGB") as err:
        ds[0]
    assert str(ann) in str(err.value) and "\n" not in str(err.value)
    bad = 200 if name != "mapillary" else 66
    Image.fromarray(np.full((24, 32), bad, np.uint8)).save(ann)
    with pytest.raises(ValueError, match=f"holds value {bad}") as err:
        ds[0]
    assert str(ann) in str(err.value) and "\n" not in str(err.value)


def test_missing_pieces_are_named(tmp_path):
    write_layout("nyu", tmp_path, n=1)
    (tmp_path / "train.txt").write_text("1\n77\n")
    with pytest.raises(FileNotFoundError, match="lists 77.png"):
        NYUDepthV2Dataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no split file"):
        NYUDepthV2Dataset(tmp_path, "val")
    write_layout("cocostuff10k", tmp_path / "c", n=1)
    for p in (tmp_path / "c" / "annotations" / "train2014").iterdir():
        p.unlink()
    with pytest.raises(FileNotFoundError, match="has no label map"):
        COCOStuff10kDataset(tmp_path / "c", "train2014")


def test_classes_are_relabelled_to_the_model_order_by_name(tmp_path):
    write_layout("pascal_context", tmp_path, n=1)
    plain = PascalContext59Dataset(tmp_path, "train")
    order = list(reversed(plain.classes))
    ds = PascalContext59Dataset(tmp_path, "train", model_classes=order)
    a, b = plain[0]["label"], ds[0]["label"]
    assert torch.equal(b[a == 255], a[a == 255]) and torch.equal(b[a != 255], 58 - a[a != 255])
    with pytest.raises(ValueError, match="names other classes"):
        PascalContext59Dataset(tmp_path, "train", model_classes=[*order[:-1], "dog"])


def test_config_from_dataset_and_validation():
    from internimage.segmentation import SegmentationConfig

    cfg = SegmentationConfig.from_dataset("cocostuff10k", data_root="x")
    assert cfg.num_classes == 171 and cfg.reduce_zero_label and cfg.train_split == "train2014"
    cfg = SegmentationConfig.from_dataset("mapillary", num_classes=19)
    assert cfg.classes[0] == "road" and cfg.dataset == "mapillary"
    with pytest.raises(ValueError, match="dataset must be one of"):
        SegmentationConfig(dataset="voc").validate()


def test_cityscapes_150_output_head_scores_predictions_beyond_the_19_classes_as_misses():
    """mmseg's ``intersect_and_union`` (mmseg 0.30 ``core/evaluation/metrics.py``), written out here: areas are
    ``torch.histc(x, bins=K, min=0, max=K - 1)``, which drops a prediction >= K, so such a pixel lowers its class's
    IoU (label area) and adds to no class's prediction area."""
    g = torch.Generator().manual_seed(3)
    k, outputs = 19, 150
    label = torch.randint(0, k, (2, 16, 24), generator=g)
    label[:, :2] = 255
    pred = torch.where(torch.rand(label.shape, generator=g) < 0.6, label.clamp(max=k - 1), 0)
    pred = torch.where(
        torch.rand(label.shape, generator=g) < 0.2, torch.randint(k, outputs, label.shape, generator=g), pred
    )
    inter = torch.zeros(k, dtype=torch.float64)
    area_pred, area_label = inter.clone(), inter.clone()
    for p, t in zip(pred, label):
        keep = t != 255
        p, t = p[keep].double(), t[keep].double()
        inter += torch.histc(p[p == t], bins=k, min=0, max=k - 1)
        area_pred += torch.histc(p, bins=k, min=0, max=k - 1)
        area_label += torch.histc(t, bins=k, min=0, max=k - 1)
    iou = inter / (area_pred + area_label - inter)
    metric = SegMetric(k)
    metric.update(pred, label)
    got = metric.compute()
    assert got["IoU"] == pytest.approx(iou.tolist(), abs=1e-12)
    assert got["aAcc"] == pytest.approx(float(inter.sum() / area_label.sum()), abs=1e-12)
    assert got["mIoU"] == pytest.approx(float(iou.nanmean()), abs=1e-12) and float((pred >= k).sum()) > 0
    scores = torch.zeros(2, outputs, 16, 24).scatter_(1, pred[:, None], 1.0)  # (N, 150, H, W): argmax = pred
    metric2 = SegMetric(k)
    metric2.update(scores, label)
    assert torch.equal(metric2.cm, metric.cm)
