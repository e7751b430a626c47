"""The Occ3D mIoU (camera mask, free left out) against numbers worked out by hand; class order and colours."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from internimage.occupancy.classes import FREE_LABEL, OCC_CLASSES, OCC_PALETTE, SEMANTIC_CLASSES, occ_class_index
from internimage.occupancy.evaluation import OccupancyMetric, confusion_matrix, per_class_iou

CAR, ROAD, PED, OTHERS = 4, 11, 7, 0

# Eight voxels (2, 2, 2). The last one (gt pedestrian, predicted others) is outside the camera mask.
GT = np.array([CAR, CAR, CAR, ROAD, ROAD, FREE_LABEL, FREE_LABEL, PED]).reshape(2, 2, 2)
PRED = np.array([CAR, CAR, ROAD, ROAD, FREE_LABEL, FREE_LABEL, CAR, OTHERS]).reshape(2, 2, 2)
MASK = np.array([1, 1, 1, 1, 1, 1, 1, 0], dtype=bool).reshape(2, 2, 2)


def test_class_order_and_palette_are_the_originals():
    # occ_metrics.py, Metric_mIoU.class_names:
    original = [
        "others", "barrier", "bicycle", "bus", "car", "construction_vehicle",
        "motorcycle", "pedestrian", "traffic_cone", "trailer", "truck",
        "driveable_surface", "other_flat", "sidewalk",
        "terrain", "manmade", "vegetation", "free",
    ]  # fmt: skip
    assert list(OCC_CLASSES) == original
    assert FREE_LABEL == 17 and len(SEMANTIC_CLASSES) == 17
    assert occ_class_index("car") == 4
    with pytest.raises(ValueError, match="unknown occupancy class"):
        occ_class_index("sky")
    # The challenge's colour table (car blue, pedestrian red, driveable surface magenta, vegetation green).
    assert OCC_PALETTE[4] == (0, 150, 245)
    assert OCC_PALETTE[7] == (255, 0, 0)
    assert OCC_PALETTE[11] == (255, 0, 255)
    assert OCC_PALETTE[13] == (75, 0, 75)
    assert OCC_PALETTE[16] == (0, 175, 0)
    assert len(OCC_PALETTE) == 18 and len(set(OCC_PALETTE)) == 18


def test_hand_computed_case_with_camera_mask():
    # Counted (gt, pred) pairs: (car, car) x2, (car, road), (road, road), (road, free), (free, free), (free, car).
    # car:  TP 2, FN 1 (car -> road), FP 1 (free -> car)   -> 2 / 4 = 0.5
    # road: TP 1, FN 1 (road -> free), FP 1 (car -> road)  -> 1 / 3
    # free: TP 1, FN 1, FP 1 -> 1 / 3, but free is not averaged
    # pedestrian / others: only in the masked voxel -> absent -> NaN, skipped.
    # mIoU = (0.5 + 1/3) / 2 = 41.666...%
    metric = OccupancyMetric()
    metric.update(PRED, GT, MASK)
    out = metric.compute()
    assert out["count"] == 1
    assert out["per_class_iou"]["car"] == pytest.approx(50.0)
    assert out["per_class_iou"]["driveable_surface"] == pytest.approx(100 / 3)
    assert out["per_class_iou"]["free"] == pytest.approx(100 / 3)
    assert math.isnan(out["per_class_iou"]["pedestrian"])
    assert math.isnan(out["per_class_iou"]["others"])
    assert out["mIoU"] == pytest.approx(125 / 3)
    assert out["hist"].sum() == 7
    assert out["hist"][CAR, ROAD] == 1 and out["hist"][FREE_LABEL, CAR] == 1
    lines = out["table"].splitlines()
    assert lines[0] == "===> per class IoU of 1 samples:"
    assert "===> car - IoU = 50.0" in lines
    assert "===> driveable_surface - IoU = 33.33" in lines
    assert "===> others - IoU = nan" in lines
    assert lines[-1] == "===> mIoU of 1 samples: 41.67"
    assert not any(line.startswith("===> free") for line in lines)
    assert len(lines) == 1 + 17 + 1


def test_without_mask_every_voxel_counts():
    # Adding (pedestrian -> others): pedestrian IoU 0 / 1 = 0, others 0 / 1 = 0.
    # mIoU = (0.5 + 1/3 + 0 + 0) / 4 = 20.833...%
    metric = OccupancyMetric(use_mask=False)
    metric.update(torch.from_numpy(PRED), torch.from_numpy(GT))
    assert metric.compute()["mIoU"] == pytest.approx(125 / 6)


def test_accumulation_batches_and_ignore_label():
    a, b = OccupancyMetric(), OccupancyMetric()
    a.update(PRED, GT, MASK)
    a.update(PRED[::-1], GT[::-1], MASK[::-1])
    b.update(np.stack([PRED, PRED[::-1]]), np.stack([GT, GT[::-1]]), np.stack([MASK, MASK[::-1]]))
    assert a.count == b.count == 2
    np.testing.assert_array_equal(a.compute()["hist"], b.compute()["hist"])
    assert a.compute()["mIoU"] == pytest.approx(125 / 3)
    # 255 in the ground truth is skipped, as hist_info's (gt >= 0) & (gt < n) filter does.
    gt = GT.copy()
    gt[0, 0, 0] = 255
    hist = confusion_matrix(PRED[MASK], gt[MASK])
    assert hist.sum() == 6
    a.reset()
    assert a.count == 0 and a.hist.sum() == 0


def test_per_class_iou_nan_for_absent_class():
    hist = np.zeros((3, 3))
    hist[0, 0] = 2
    hist[1, 0] = 2
    iou = per_class_iou(hist)
    assert iou[0] == pytest.approx(0.5) and iou[1] == 0 and math.isnan(iou[2])


def test_bad_input():
    metric = OccupancyMetric()
    with pytest.raises(ValueError, match="shape"):
        metric.update(PRED, GT[:1], MASK)
    with pytest.raises(ValueError, match="mask_camera is required"):
        metric.update(PRED, GT)
    with pytest.raises(ValueError, match=r"predicted labels must be in \[0, 18\)"):
        metric.update(PRED + 20, GT, MASK)
    with pytest.raises(ValueError, match="class names"):
        OccupancyMetric(num_classes=5)


def test_all_reduce_single_process(tmp_path):
    metric = OccupancyMetric()
    metric.update(PRED, GT, MASK)
    metric.all_reduce()  # not initialised: no-op
    assert metric.count == 1
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        metric.all_reduce()
    finally:
        torch.distributed.destroy_process_group()
    assert metric.count == 1 and metric.compute()["mIoU"] == pytest.approx(125 / 3)
