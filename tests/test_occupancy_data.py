"""Occ3D-nuScenes readers on generated scenes: tables, ordering, queues, projections, labels vs images, bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from internimage.occupancy.classes import FREE_LABEL, OCC_PALETTE, occ_class_index
from internimage.occupancy.data import (
    CAMERA_NAMES,
    NUSCENES_MINI_TRAIN_SCENES,
    NUSCENES_MINI_VAL_SCENES,
    NUSCENES_VAL_SCENES,
    OccupancyDataset,
    collate_occupancy,
    load_frames,
    photometric_distortion,
    prev_exists_flags,
    queue_indices,
    read_can_bus_pose,
    resolve_scenes,
)
from internimage.occupancy.synthetic import generate_scenes

W, H = 96, 54
OCC = (50, 50, 16)
PC_RANGE = np.array([-40.0, -40.0, -1.0, 40.0, 40.0, 5.4])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("occ") / "nus"
    summary = generate_scenes(root, num_scenes=2, frames_per_scene=3, image_size=(W, H), occ_size=OCC, seed=3,
                              keep_renders=True, lidar_azimuths=360)  # fmt: skip
    return root, summary


def _dataset(root, train=False, **kw):
    kw.setdefault("occ_root", root)
    return OccupancyDataset(root, version="v1.0-synthetic", scenes="all", train=train, occ_size=OCC, **kw)


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def test_constants_from_the_original():
    # nuscenes_occ_converter.py, camera_types:
    assert CAMERA_NAMES == ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                            "CAM_BACK_RIGHT")  # fmt: skip
    # nuscenes-devkit splits.py: 150 val scenes, starting 'scene-0003', 'scene-0012', ending 'scene-1073'.
    assert len(NUSCENES_VAL_SCENES) == 150 == len(set(NUSCENES_VAL_SCENES))
    assert NUSCENES_VAL_SCENES[:3] == ("scene-0003", "scene-0012", "scene-0013")
    assert NUSCENES_VAL_SCENES[-1] == "scene-1073" and "scene-0802" in NUSCENES_VAL_SCENES
    assert "scene-0801" not in NUSCENES_VAL_SCENES and "scene-0628" not in NUSCENES_VAL_SCENES
    assert NUSCENES_MINI_VAL_SCENES == ("scene-0103", "scene-0916")
    assert len(NUSCENES_MINI_TRAIN_SCENES) == 8 and "scene-0061" in NUSCENES_MINI_TRAIN_SCENES
    available = ["scene-0001", "scene-0003", "scene-0004"]
    assert resolve_scenes("val", "v1.0-trainval", available) == ["scene-0003"]
    assert resolve_scenes("train", "v1.0-trainval", available) == ["scene-0001", "scene-0004"]
    with pytest.raises(ValueError, match="belongs to v1.0-trainval"):
        resolve_scenes("train", "v1.0-mini", available)
    with pytest.raises(ValueError, match="scene-0009"):
        resolve_scenes(["scene-0009"], "v1.0-mini", available)


def test_tables_tokens_and_order(scenes):
    root, summary = scenes
    frames = load_frames(root, "synthetic", "all", occ_root=root)
    expected = [tok for sc in summary["scenes"] for tok in sc["samples"]]
    assert [f.token for f in frames] == expected
    assert [f.scene_name for f in frames] == ["scene-0001"] * 3 + ["scene-0002"] * 3
    assert all(a.timestamp < b.timestamp for a, b in zip(frames, frames[1:]))
    assert all(Path(p).is_file() for f in frames for p in f.image_paths)
    for f in frames:
        assert [Path(p).parts[-2] for p in f.image_paths] == list(CAMERA_NAMES)
        np.testing.assert_allclose(f.intrinsics[:, 0, 2], W / 2)
        assert Path(f.occ_path).is_file() and f.has_can_bus
    only = load_frames(root, "synthetic", ["scene-0002"])
    assert [f.token for f in only] == summary["scenes"][1]["samples"]


def test_queue_selection_and_prev_exists(scenes):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        q = queue_indices(10, 4, rng)
        assert len(q) == 4 and q[-1] == 10 and q[:3] == sorted(q[:3]) and set(q[:3]) <= {6, 7, 8, 9}
        seen.add(tuple(q))
    assert len(seen) == 4  # every 3-of-4 choice of the previous frames occurs
    assert queue_indices(1, 3, rng) == [0, 0, 1]  # negative indices clamp to frame 0
    assert queue_indices(5, 1, rng) == [5]
    assert prev_exists_flags(["a", "a", "b", "b"]) == [False, True, False, True]

    root, summary = scenes
    ds = _dataset(root, train=True, queue_length=3)
    # Index 3 is the first frame of scene 2: its queue holds frames of scene 1 before it.
    item = ds[3]
    assert item["prev_exists"].tolist() == [False, True, False]
    assert item["sample_token"] == summary["scenes"][1]["samples"][0] and item["scene_name"] == "scene-0002"
    assert ds[0]["prev_exists"].tolist() == [False, True, True]
    assert item["img"].shape == (3, 6, 3, 64, 96) and item["lidar2img"].shape == (3, 6, 4, 4)
    assert item["can_bus"].shape == (3, 18) and item["ego2lidar"].shape == (3, 4, 4)
    batch = collate_occupancy([ds[4], ds[5]])
    assert batch["img"].shape == (2, 3, 6, 3, 64, 96) and batch["prev_exists"].shape == (2, 3)
    assert batch["voxel_semantics"].shape == (2, *OCC) and batch["mask_camera"].dtype == torch.bool
    assert batch["sample_token"] == [ds.frames[4].token, ds.frames[5].token]


def test_eval_item_images_and_can_bus(scenes):
    from PIL import Image

    root, summary = scenes
    ds = _dataset(root)
    item = ds[1]
    assert item["img"].shape == (1, 6, 3, 64, 96) and item["img_shape"].tolist() == [H, W]
    assert item["prev_exists"].tolist() == [False]
    # nuScenes-like LIDAR_TOP mounting: ego-frame points need ego2lidar before lidar2img.
    assert not torch.allclose(item["ego2lidar"][0], torch.eye(4))
    raw = np.asarray(Image.open(ds.frames[1].image_paths[2]).convert("RGB"), dtype=np.float32)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(item["img"][0, 2, :, :H, :W].numpy().transpose(1, 2, 0), (raw - mean) / std, atol=1e-4)
    assert (item["img"][0, :, :, H:, :] == 0).all()  # zero padding after normalisation, as PadMultiViewImage
    semantics = item["voxel_semantics"].numpy()
    assert semantics.dtype == np.int64 and (semantics == FREE_LABEL).any()

    can = item["can_bus"][0].double().numpy()
    ego2global = summary["ego2global"][item["sample_token"]]
    np.testing.assert_allclose(can[:3], ego2global[:3, 3], atol=1e-3)
    yaw = np.degrees(np.arctan2(ego2global[1, 0], ego2global[0, 0])) % 360
    assert can[17] == pytest.approx(yaw, abs=1e-3) and can[16] == pytest.approx(np.radians(yaw), abs=1e-5)
    assert can[9] == pytest.approx(9.81)  # CAN bus accel z from can_bus/<scene>_pose.json

    half = _dataset(root, image_scale=0.5)[1]
    assert half["img_shape"].tolist() == [H // 2, W // 2] and half["img"].shape[-2:] == (32, 64)
    scale = torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(half["lidar2img"], scale @ item["lidar2img"])

    train_item = _dataset(root, train=True, queue_length=1)[1]
    assert train_item["img"].shape == item["img"].shape and not torch.equal(train_item["img"], item["img"])
    no_labels = _dataset(root, occ_root=None)[0]
    assert "voxel_semantics" not in no_labels and "mask_camera" not in no_labels


def test_photometric_distortion_and_hsv_roundtrip():
    import torch

    from internimage.data.transforms import hsv_to_rgb, rgb_to_hsv

    img = np.random.default_rng(0).uniform(0, 255, (5, 7, 3)).astype(np.float32)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(chw)).numpy(), chw.numpy(), atol=1e-3)
    dark = chw - 40  # unclipped brightness: V may be negative, S stays (max - min) / max as OpenCV's float HSV
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(dark)).numpy(), dark.numpy(), atol=1e-3)
    outs = [photometric_distortion(img, np.random.default_rng(s)) for s in range(6)]
    assert all(o.shape == img.shape and o.dtype == np.float32 and np.isfinite(o).all() for o in outs)
    assert any(not np.allclose(o, img) for o in outs)


def test_can_bus_reader_follows_the_converter(tmp_path, scenes, caplog):
    msgs = [
        {"accel": [i, 0, 0], "orientation": [1, 0, 0, 0], "pos": [i, i, 0], "rotation_rate": [0, 0, i],
         "utime": 10 * i, "vel": [i, 0, 0]}
        for i in (1, 2, 3)
    ]  # fmt: skip
    path = tmp_path / "scene-0001_pose.json"
    path.write_text(json.dumps(msgs))
    # Position from the last message not later than the sample; the other fields from the message the walk stops
    # on (the first later one), as _get_can_bus_info reads pose[key] after the loop.
    v = read_can_bus_pose(path, 25)
    assert v[:3].tolist() == [2, 2, 0] and v[7] == 3 and v[12] == 3 and v[13] == 3 and v.shape == (18,)
    assert read_can_bus_pose(path, 5)[7] == 1 and read_can_bus_pose(path, 99)[7] == 3
    assert read_can_bus_pose(tmp_path / "absent.json", 0) is None

    root, _ = scenes
    copy = _copy(root, tmp_path)
    shutil.rmtree(copy / "can_bus")
    with caplog.at_level(logging.WARNING, logger="internimage.occupancy.data"):
        ds = _dataset(copy)
    assert len([r for r in caplog.records if "CAN bus" in r.getMessage()]) == 1
    can = ds[0]["can_bus"][0]
    assert (can[7:16] == 0).all() and can[0] != 0


def _project(item, summary, token):
    """(6, P, 3) pixel u, v and depth of ego-frame points, through the item's lidar2img @ ego2lidar."""
    ego2global = summary["ego2global"][token]
    l2i = item["lidar2img"][0].double().numpy() @ item["ego2lidar"][0].double().numpy()
    return l2i, np.linalg.inv(ego2global)


def test_lidar2img_projects_box_corners_where_they_were_drawn(scenes):
    root, summary = scenes
    ds = _dataset(root)
    checked = 0
    for index, frame in enumerate(ds.frames):
        item = ds[index]
        l2i, global2ego = _project(item, summary, frame.token)
        scene = next(s for s in summary["scenes"] if frame.token in s["samples"])
        for c, cam in enumerate(CAMERA_NAMES):
            render = summary["renders"][frame.token][cam]
            cam_pos = summary["cameras"][frame.token][cam]["cam2global"][:3, 3]
            for b, box in enumerate(scene["boxes"]):
                corners = box.corners()
                pts = np.c_[corners, np.ones(8)] @ global2ego.T @ l2i[c].T
                if (pts[:, 2] < 0.5).any():
                    continue
                u, v = pts[:, 0] / pts[:, 2], pts[:, 1] / pts[:, 2]
                if u.min() < 1 or v.min() < 1 or u.max() > W - 1 or v.max() > H - 1:
                    continue
                rows, cols = np.nonzero(render["instance"] == b)
                if rows.size == 0:
                    continue
                # Drawn pixels (centres at +0.5) never leave the projected corners' bounding box.
                assert cols.min() + 0.5 >= u.min() - 1 and cols.max() + 0.5 <= u.max() + 1
                assert rows.min() + 0.5 >= v.min() - 1 and rows.max() + 0.5 <= v.max() + 1
                r0, r1 = int(v.min()), int(np.ceil(v.max()))
                c0, c1 = int(u.min()), int(np.ceil(u.max()))
                window_inst = render["instance"][r0:r1, c0:c1]
                window_depth = render["depth"][r0:r1, c0:c1]
                nearest = np.linalg.norm(corners - cam_pos, axis=1).min()
                if ((window_inst != b) & (window_inst >= 0) & (window_depth < nearest)).any():
                    continue  # partly hidden by a nearer box: its outline may be cut
                # Unoccluded: each outline corner (extreme in u or v) lands within a pixel of a pixel drawn for it.
                for k in {u.argmin(), u.argmax(), v.argmin(), v.argmax()}:
                    pu, pv = int(np.floor(u[k])), int(np.floor(v[k]))
                    assert (render["instance"][max(pv - 1, 0) : pv + 2, max(pu - 1, 0) : pu + 2] == b).any()
                checked += 1
    assert checked >= 3, checked


def _pixel_classes(rgb: np.ndarray) -> np.ndarray:
    """Nearest class colour of every pixel, allowing the renderer's 0.75..1.0 shading (-1: sky-like)."""
    palette = np.asarray(OCC_PALETTE[:FREE_LABEL], dtype=np.float64)
    px = rgb.reshape(-1, 1, 3).astype(np.float64)
    best = np.full(px.shape[0], np.inf)
    cls = np.full(px.shape[0], -1)
    for shade in np.linspace(0.75, 1.0, 6):
        d = np.linalg.norm(px - palette[None] * shade, axis=-1)
        k = d.argmin(1)
        better = d[np.arange(len(k)), k] < best
        best = np.where(better, d[np.arange(len(k)), k], best)
        cls = np.where(better, k, cls)
    sky = np.linalg.norm(px[:, 0] - np.array([135.0, 190.0, 235.0]), axis=-1) < best
    return np.where(sky, -1, cls).reshape(rgb.shape[:2])


def test_labels_agree_with_images(scenes):
    from PIL import Image

    root, summary = scenes
    ds = _dataset(root)
    lo, vs = PC_RANGE[:3], (PC_RANGE[3:] - PC_RANGE[:3]) / np.array(OCC)
    agree = total = shuffled_agree = 0
    rng = np.random.default_rng(0)
    classes_seen = set()
    for index, frame in enumerate(ds.frames):
        item = ds[index]
        sem = item["voxel_semantics"].numpy()
        visible = item["mask_camera"].numpy() & (sem != FREE_LABEL)
        assert visible.any() and (item["mask_lidar"].numpy() & (sem != FREE_LABEL)).any()
        idx = np.argwhere(visible)
        labels = sem[visible]
        centres = lo + (idx + 0.5) * vs
        l2i = item["lidar2img"][0].double().numpy() @ item["ego2lidar"][0].double().numpy()
        for c in range(6):
            pixel_cls = _pixel_classes(np.asarray(Image.open(frame.image_paths[c]).convert("RGB")))
            pts = np.c_[centres, np.ones(len(centres))] @ l2i[c].T
            front = pts[:, 2] > 0.5
            u = np.floor(pts[:, 0] / np.where(front, pts[:, 2], 1)).astype(int)
            v = np.floor(pts[:, 1] / np.where(front, pts[:, 2], 1)).astype(int)
            ok = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
            seen = pixel_cls[v[ok], u[ok]]
            agree += int((seen == labels[ok]).sum())
            shuffled_agree += int((seen == rng.permutation(labels[ok])).sum())
            total += int(ok.sum())
            classes_seen |= set(labels[ok].tolist())
    # Visible voxel centres mostly land on pixels of their own colour; shuffling the labels breaks that.
    assert total > 500
    assert agree / total > 0.6, agree / total
    assert shuffled_agree / total < 0.5 * agree / total
    for name in ("car", "driveable_surface", "sidewalk", "manmade"):
        assert occ_class_index(name) in classes_seen


def test_generator_is_deterministic(tmp_path):
    a = generate_scenes(tmp_path / "a", num_scenes=1, frames_per_scene=1, image_size=(32, 18), occ_size=(20, 20, 8),
                        seed=7, image_format="png", lidar_azimuths=90)  # fmt: skip
    b = generate_scenes(tmp_path / "b", num_scenes=1, frames_per_scene=1, image_size=(32, 18), occ_size=(20, 20, 8),
                        seed=7, image_format="png", lidar_azimuths=90)  # fmt: skip
    assert a["scenes"][0]["samples"] == b["scenes"][0]["samples"]
    for rel in ("v1.0-synthetic/sample_data.json", "can_bus/scene-0001_pose.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    tok = a["scenes"][0]["samples"][0]
    la = np.load(tmp_path / "a" / "gts" / "scene-0001" / tok / "labels.npz")
    lb = np.load(tmp_path / "b" / "gts" / "scene-0001" / tok / "labels.npz")
    assert la["semantics"].shape == (20, 20, 8)
    for key in ("semantics", "mask_lidar", "mask_camera"):
        np.testing.assert_array_equal(la[key], lb[key])
    with pytest.raises(ValueError, match="image_format"):
        generate_scenes(tmp_path / "c", image_format="bmp")


# ----------------------------------------------------------------------------------------------------- bad input


def test_missing_camera_image_names_the_sample(scenes, tmp_path):
    root, _ = scenes
    copy = _copy(root, tmp_path)
    ds = _dataset(copy)
    Path(ds.frames[2].image_paths[4]).unlink()
    with pytest.raises(FileNotFoundError, match=f"sample {ds.frames[2].token}: CAM_BACK_LEFT image"):
        ds[2]


def test_absent_calibration_record_names_the_sample(scenes, tmp_path):
    root, summary = scenes
    copy = _copy(root, tmp_path)
    table = copy / "v1.0-synthetic" / "calibrated_sensor.json"
    records = json.loads(table.read_text())
    sensors = {s["token"]: s["channel"] for s in json.loads((copy / "v1.0-synthetic" / "sensor.json").read_text())}
    records = [r for r in records if sensors[r["sensor_token"]] != "CAM_FRONT_LEFT"]
    table.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=f"sample {summary['scenes'][0]['samples'][0]}: calibrated_sensor record"):
        _dataset(copy)


@pytest.mark.parametrize("defect", ["shape", "key"])
def test_bad_labels_name_the_sample(scenes, tmp_path, defect):
    root, summary = scenes
    copy = _copy(root, tmp_path)
    token = summary["scenes"][0]["samples"][1]
    path = copy / "gts" / "scene-0001" / token / "labels.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if defect == "shape":
        arrays["semantics"] = arrays["semantics"][:, :, :8]
        expected = "semantics has shape"
    else:
        del arrays["mask_camera"]
        expected = "lacks mask_camera"
    np.savez(path, **arrays)
    ds = _dataset(copy)
    with pytest.raises(ValueError, match=f"sample {token}: .*{expected}"):
        ds[1]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"sample {token}: occupancy labels"):
        ds[1]


def test_missing_table_and_bad_options(scenes, tmp_path):
    root, _ = scenes
    copy = _copy(root, tmp_path)
    (copy / "v1.0-synthetic" / "ego_pose.json").unlink()
    with pytest.raises(FileNotFoundError, match="ego_pose.json is missing"):
        _dataset(copy)
    with pytest.raises(FileNotFoundError, match="v1.0-nope"):
        OccupancyDataset(root, root, version="v1.0-nope", scenes="all", train=False)
    with pytest.raises(ValueError, match="occ_root is None"):
        OccupancyDataset(root, None, version="v1.0-synthetic", scenes="all", train=True)
    with pytest.raises(ValueError, match="unknown scene split"):
        OccupancyDataset(root, root, "v1.0-synthetic", "bogus")
