"""Occ3D-nuScenes for BEVFormer-Occ, read straight from the nuScenes json tables (no info pickles, no devkit).

What the original builds in two steps (``tools/data_converter/nuscenes_occ_converter.py`` writes
``occ_infos_temporal_*.pkl``, then ``NuSceneOcc.get_data_info`` / ``prepare_train_data`` / ``union2one`` read them)
is done here from ``<data_root>/v1.0-<version>/{scene,sample,sample_data,calibrated_sensor,ego_pose,sensor}.json``:

* one :class:`OccFrame` per keyframe sample of the selected scenes, all frames sorted by timestamp (the original sorts
  its info list by timestamp, which puts each scene's samples in time order and scenes in recording order);
* the ego pose of a frame is the one of its ``LIDAR_TOP`` keyframe; each of the six cameras (in the original's order
  :data:`CAMERA_NAMES`) gives its image path, intrinsics and ``lidar2img = K @ lidar2cam``, with ``cam -> lidar``
  composed through both ego poses and both calibrations (camera -> ego(t_cam) -> global -> ego(t_lidar) -> lidar),
  which is what the converter's ``obtain_sensor2top`` computes;
* ``can_bus`` (18,) as ``get_data_info`` leaves it: absolute, ``[:3]`` ego translation, ``[3:7]`` ego rotation
  quaternion (w, x, y, z), ``[7:16]`` the CAN bus expansion's pose message (accel, rotation_rate, vel; zeros without
  the expansion), ``[16]`` the yaw in radians and ``[17]`` in degrees, both in [0, 360) degrees. The model turns
  positions and angle into deltas between consecutive frames (``union2one`` did that in the original);
* Occ3D labels from ``<occ_root>/gts/<scene_name>/<sample_token>/labels.npz`` (``semantics``, ``mask_lidar``,
  ``mask_camera``, in the ego frame of the keyframe; the model maps its ego-frame reference points with
  ``lidar2img @ ego2lidar``, so :class:`OccupancyDataset` also returns ``ego2lidar``).

Images go through the config's pipeline: float RGB, photometric distortion when training (as
``PhotoMetricDistortionMultiViewImage``), normalisation by ``img_norm_cfg``, zero padding to a multiple of 32.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.transforms import hsv_to_rgb, rgb_to_hsv
from .classes import NUM_OCC_CLASSES

__all__ = [
    "CAMERA_NAMES",
    "IMG_NORM_MEAN",
    "IMG_NORM_STD",
    "NUSCENES_MINI_TRAIN_SCENES",
    "NUSCENES_MINI_VAL_SCENES",
    "NUSCENES_VAL_SCENES",
    "OccFrame",
    "OccupancyDataset",
    "can_bus_vector",
    "collate_occupancy",
    "load_frames",
    "load_occ_labels",
    "photometric_distortion",
    "prev_exists_flags",
    "quaternion_to_matrix",
    "quaternion_yaw",
    "queue_indices",
    "read_can_bus_pose",
    "resolve_scenes",
    "transform_matrix",
]

logger = logging.getLogger(__name__)

#: Camera order of the original's converter (and so of every ``lidar2img`` list the model sees).
CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
LIDAR_NAME = "LIDAR_TOP"

#: ``img_norm_cfg`` of the config (RGB order, 0..255 scale).
IMG_NORM_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMG_NORM_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

TABLES = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor")


def _scene_names(*ranges: tuple[int, int]) -> tuple[str, ...]:
    return tuple(f"scene-{i:04d}" for lo, hi in ranges for i in range(lo, hi + 1))


# The standard nuScenes validation scenes (150 of v1.0-trainval); the training split is every other trainval scene
# (the devkit's ``splits.train`` is exactly the complement: 700 of 850). Written as inclusive number ranges.
NUSCENES_VAL_SCENES: tuple[str, ...] = _scene_names(
    (3, 3), (12, 18), (35, 36), (38, 39), (92, 110), (221, 221), (268, 278), (329, 332), (344, 346), (519, 524),
    (552, 565), (625, 627), (629, 630), (632, 638), (770, 771), (775, 775), (777, 778), (780, 784), (794, 800),
    (802, 802), (904, 917), (919, 931), (962, 963), (966, 969), (971, 972), (1059, 1073),
)  # fmt: skip
NUSCENES_MINI_TRAIN_SCENES: tuple[str, ...] = _scene_names(
    (61, 61), (553, 553), (655, 655), (757, 757), (796, 796), (1077, 1077), (1094, 1094), (1100, 1100)
)
NUSCENES_MINI_VAL_SCENES: tuple[str, ...] = _scene_names((103, 103), (916, 916))


# ----------------------------------------------------------------------------------------------------- geometry


def quaternion_to_matrix(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix of a (w, x, y, z) quaternion (normalised first, as pyquaternion does).

    Returns:
        float64 (3, 3).
    """
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(np.asarray(q, dtype=np.float64))
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def quaternion_yaw(q: Sequence[float]) -> float:
    """Yaw (radians, in (-pi, pi]) of a (w, x, y, z) quaternion: the heading of the rotated x axis in the xy plane."""
    v = quaternion_to_matrix(q) @ np.array([1.0, 0.0, 0.0])
    return float(np.arctan2(v[1], v[0]))


def transform_matrix(translation: Sequence[float], rotation: Sequence[float], inverse: bool = False) -> np.ndarray:
    """Homogeneous (4, 4) float64 transform from a translation and a (w, x, y, z) quaternion, or its inverse."""
    r = quaternion_to_matrix(rotation)
    t = np.asarray(translation, dtype=np.float64)
    m = np.eye(4)
    if inverse:
        m[:3, :3] = r.T
        m[:3, 3] = -r.T @ t
    else:
        m[:3, :3] = r
        m[:3, 3] = t
    return m


# ----------------------------------------------------------------------------------------------------- tables


@dataclass
class OccFrame:
    """One keyframe sample, everything the dataset needs from the tables.

    Attributes:
        token: Sample token.
        scene_token: Scene token.
        scene_name: Scene name (``scene-0001``).
        timestamp: Sample timestamp in microseconds.
        image_paths: Six absolute image paths in :data:`CAMERA_NAMES` order.
        image_sizes: Six (H, W) as the tables give them (0 where absent).
        intrinsics: float64 (6, 3, 3) camera matrices.
        lidar2img: float64 (6, 4, 4) LIDAR_TOP -> pixel (``K @ lidar2cam``, ``K`` padded to 4x4).
        lidar2cam: float64 (6, 4, 4).
        ego2lidar: float64 (4, 4) ego (of the LIDAR_TOP keyframe) -> LIDAR_TOP.
        ego2global_translation: (3,) of the LIDAR_TOP keyframe's ego pose.
        ego2global_rotation: (4,) quaternion (w, x, y, z) of that pose.
        can_bus_raw: float64 (18,) the converter's CAN bus vector (zeros without the expansion).
        has_can_bus: Whether the CAN bus expansion had this scene.
        occ_path: ``labels.npz`` path, or None without an Occ3D root.
    """

    token: str
    scene_token: str
    scene_name: str
    timestamp: int
    image_paths: tuple[str, ...]
    image_sizes: tuple[tuple[int, int], ...]
    intrinsics: np.ndarray
    lidar2img: np.ndarray
    lidar2cam: np.ndarray
    ego2lidar: np.ndarray
    ego2global_translation: np.ndarray
    ego2global_rotation: np.ndarray
    can_bus_raw: np.ndarray
    has_can_bus: bool
    occ_path: str | None


def _version_dir(data_root: Path, version: str) -> Path:
    name = version if version.startswith("v1.0-") else f"v1.0-{version}"
    return data_root / name


def _load_table(folder: Path, name: str) -> list[dict[str, Any]]:
    path = folder / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"nuScenes table {path} is missing (needed: {', '.join(t + '.json' for t in TABLES)})")
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"nuScenes table {path} is not valid json: {err}") from None
    if not isinstance(table, list):
        raise ValueError(f"nuScenes table {path} must hold a json list of records")
    return table


def resolve_scenes(scenes: str | Sequence[str], version: str, available: Sequence[str]) -> list[str]:
    """Scene names selected by ``scenes``.

    Args:
        scenes: ``"all"``; a standard split (``"train"``/``"val"`` of v1.0-trainval, ``"mini_train"``/``"mini_val"``
            of v1.0-mini), filtered to the scenes present as the original's converter does; or explicit names.
        version: Table version (for checking that a standard split fits it).
        available: Scene names present in the tables.

    Returns:
        The selected names (order irrelevant: frames are sorted by time).

    Raises:
        ValueError: Unknown split, split of another version, or explicit names that are not in the tables.
    """
    available_set = set(available)
    if isinstance(scenes, str):
        short = version.removeprefix("v1.0-")
        if scenes == "all":
            return list(available)
        if scenes in ("train", "val"):
            if short != "trainval":
                raise ValueError(f"split {scenes!r} belongs to v1.0-trainval, not {version}; pass scene names")
            val = set(NUSCENES_VAL_SCENES)
            return [s for s in available if (s in val) == (scenes == "val")]
        if scenes in ("mini_train", "mini_val"):
            if short != "mini":
                raise ValueError(f"split {scenes!r} belongs to v1.0-mini, not {version}; pass scene names")
            names = NUSCENES_MINI_TRAIN_SCENES if scenes == "mini_train" else NUSCENES_MINI_VAL_SCENES
            return [s for s in names if s in available_set]
        raise ValueError(
            f"unknown scene split {scenes!r}: use 'all', 'train', 'val', 'mini_train', 'mini_val' or a list of names"
        )
    names = list(scenes)
    missing = [s for s in names if s not in available_set]
    if missing:
        raise ValueError(
            f"scenes not in the {version} tables: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return names


def read_can_bus_pose(path: str | os.PathLike, timestamp: int) -> np.ndarray | None:
    """The converter's 18-vector from a CAN bus expansion ``<scene>_pose.json`` file.

    As the original's ``_get_can_bus_info``: the walk stops at the first message later than ``timestamp``; position
    and orientation come from the last message not later than it (``[0:7]``, overwritten by the ego pose later
    anyway), while the other fields (``[7:16]``: accel, rotation_rate, vel, in the file's key order) are read from
    the message the walk stopped on, i.e. the first later one (the last message when none is later). ``[16:18]``
    are zeros.

    Args:
        path: The scene's pose message file.
        timestamp: Sample timestamp in microseconds.

    Returns:
        float64 (18,), or None when the file is absent or holds no message.
    """
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        messages = json.load(f)
    if not messages:
        return None
    try:
        last, stop = messages[0], messages[0]
        for stop in messages:
            if stop["utime"] > timestamp:
                break
            last = stop
        vec = list(last["pos"]) + list(last["orientation"])
        for key in last:
            if key not in ("utime", "pos", "orientation"):
                vec.extend(stop[key])
    except (KeyError, TypeError) as err:
        raise ValueError(f"CAN bus pose messages in {path} are malformed ({type(err).__name__}: {err})") from None
    vec += [0.0, 0.0]
    if len(vec) != 18:
        raise ValueError(f"CAN bus pose messages in {path} give {len(vec)} values, expected 18")
    return np.asarray(vec, dtype=np.float64)


def load_frames(
    data_root: str | os.PathLike,
    version: str = "v1.0-trainval",
    scenes: str | Sequence[str] = "all",
    occ_root: str | os.PathLike | None = None,
    can_bus_root: str | os.PathLike | None = None,
) -> list[OccFrame]:
    """Every keyframe sample of the selected scenes, sorted by timestamp.

    Args:
        data_root: nuScenes root (holding ``v1.0-<version>/`` and ``samples/``).
        version: ``v1.0-trainval``, ``v1.0-mini``, ... (the ``v1.0-`` prefix may be left out).
        scenes: See :func:`resolve_scenes`.
        occ_root: Occ3D root holding ``gts/``; None: frames carry no label path.
        can_bus_root: Folder holding ``can_bus/<scene>_pose.json``; default ``data_root``.

    Returns:
        Frames in the original's order (global timestamp sort).

    Raises:
        FileNotFoundError: A table is missing.
        ValueError: A record a sample needs is absent (the message names the sample token), or bad scene names.
    """
    data_root = Path(data_root)
    folder = _version_dir(data_root, version)
    if not folder.is_dir():
        raise FileNotFoundError(f"nuScenes tables folder {folder} does not exist")
    tables = {name: _load_table(folder, name) for name in TABLES}
    by_token = {name: {r["token"]: r for r in tables[name]} for name in ("scene", "calibrated_sensor", "ego_pose")}
    sensors = {r["token"]: r for r in tables["sensor"]}
    scene_names = [s["name"] for s in tables["scene"]]
    selected = set(resolve_scenes(scenes, folder.name, scene_names))
    scene_tokens = {s["token"] for s in tables["scene"] if s["name"] in selected}

    # sample token -> channel -> keyframe sample_data, as the devkit's sample['data'] (sweeps are ignored).
    key_data: dict[str, dict[str, dict[str, Any]]] = {}
    # A keyframe whose calibration (or sensor) is missing cannot be given a channel; its sample fails when built.
    broken: dict[str, str] = {}
    for sd in tables["sample_data"]:
        if not sd.get("is_key_frame", False):
            continue
        cs = by_token["calibrated_sensor"].get(sd["calibrated_sensor_token"])
        sensor = sensors.get(cs["sensor_token"]) if cs is not None else None
        if sensor is None:
            what = "calibrated_sensor" if cs is None else "sensor"
            token = sd["calibrated_sensor_token"] if cs is None else cs["sensor_token"]
            broken.setdefault(sd["sample_token"], f"{what} record {token} of sample_data {sd['token']}")
            continue
        key_data.setdefault(sd["sample_token"], {})[sensor["channel"]] = sd

    can_root = Path(can_bus_root) if can_bus_root is not None else data_root
    can_cache: dict[str, Path] = {}
    frames: list[OccFrame] = []
    for sample in tables["sample"]:
        if sample["scene_token"] not in scene_tokens:
            continue
        scene = by_token["scene"][sample["scene_token"]]
        if sample["token"] in broken:
            raise ValueError(f"sample {sample['token']}: {broken[sample['token']]} is absent from the tables")
        frame = _build_frame(sample, scene, key_data.get(sample["token"], {}), by_token, data_root, occ_root)
        path = can_cache.setdefault(scene["name"], can_root / "can_bus" / f"{scene['name']}_pose.json")
        raw = read_can_bus_pose(path, sample["timestamp"])
        frame.has_can_bus = raw is not None
        frame.can_bus_raw = raw if raw is not None else np.zeros(18)
        frames.append(frame)
    frames.sort(key=lambda f: f.timestamp)
    missing_can = sorted({f.scene_name for f in frames if not f.has_can_bus})
    if missing_can:
        logger.warning(
            "no CAN bus expansion for %d of %d scenes (looked in %s): can_bus[7:16] is zero for them",
            len(missing_can),
            len({f.scene_name for f in frames}),
            can_root / "can_bus",
        )
    return frames


def _record(table: dict[str, dict[str, Any]], token: str, what: str, sample_token: str) -> dict[str, Any]:
    record = table.get(token)
    if record is None:
        raise ValueError(f"sample {sample_token}: {what} record {token} is absent from the tables")
    return record


def _build_frame(
    sample: dict[str, Any],
    scene: dict[str, Any],
    data: dict[str, dict[str, Any]],
    by_token: dict[str, dict[str, dict[str, Any]]],
    data_root: Path,
    occ_root: str | os.PathLike | None,
) -> OccFrame:
    token = sample["token"]
    if LIDAR_NAME not in data:
        raise ValueError(f"sample {token}: no {LIDAR_NAME} keyframe in sample_data")
    lidar_sd = data[LIDAR_NAME]
    lidar_cs = _record(by_token["calibrated_sensor"], lidar_sd["calibrated_sensor_token"], "calibrated_sensor", token)
    lidar_pose = _record(by_token["ego_pose"], lidar_sd["ego_pose_token"], "ego_pose", token)
    lidar2ego = transform_matrix(lidar_cs["translation"], lidar_cs["rotation"])
    ego2global = transform_matrix(lidar_pose["translation"], lidar_pose["rotation"])
    global2lidar = np.linalg.inv(ego2global @ lidar2ego)

    paths, sizes, intrinsics, lidar2cams, lidar2imgs = [], [], [], [], []
    for cam in CAMERA_NAMES:
        if cam not in data:
            raise ValueError(f"sample {token}: no {cam} keyframe in sample_data")
        sd = data[cam]
        cs = _record(by_token["calibrated_sensor"], sd["calibrated_sensor_token"], f"{cam} calibrated_sensor", token)
        pose = _record(by_token["ego_pose"], sd["ego_pose_token"], f"{cam} ego_pose", token)
        k = np.asarray(cs.get("camera_intrinsic") or [], dtype=np.float64)
        if k.shape != (3, 3):
            raise ValueError(f"sample {token}: {cam} calibrated_sensor has no 3x3 camera_intrinsic")
        # camera -> its ego pose -> global -> the lidar keyframe's ego pose -> lidar (the converter's sensor2lidar).
        cam2lidar = global2lidar @ transform_matrix(pose["translation"], pose["rotation"])
        cam2lidar = cam2lidar @ transform_matrix(cs["translation"], cs["rotation"])
        lidar2cam = np.linalg.inv(cam2lidar)
        viewpad = np.eye(4)
        viewpad[:3, :3] = k
        paths.append(str(data_root / sd["filename"]))
        sizes.append((int(sd.get("height") or 0), int(sd.get("width") or 0)))
        intrinsics.append(k)
        lidar2cams.append(lidar2cam)
        lidar2imgs.append(viewpad @ lidar2cam)

    occ_path = None
    if occ_root is not None:
        occ_path = str(Path(occ_root) / "gts" / scene["name"] / token / "labels.npz")
    return OccFrame(
        token=token,
        scene_token=sample["scene_token"],
        scene_name=scene["name"],
        timestamp=int(sample["timestamp"]),
        image_paths=tuple(paths),
        image_sizes=tuple(sizes),
        intrinsics=np.stack(intrinsics),
        lidar2img=np.stack(lidar2imgs),
        lidar2cam=np.stack(lidar2cams),
        ego2lidar=np.linalg.inv(lidar2ego),
        ego2global_translation=np.asarray(lidar_pose["translation"], dtype=np.float64),
        ego2global_rotation=np.asarray(lidar_pose["rotation"], dtype=np.float64),
        can_bus_raw=np.zeros(18),
        has_can_bus=False,
        occ_path=occ_path,
    )


def can_bus_vector(frame: OccFrame) -> np.ndarray:
    """The frame's absolute ``can_bus`` as the original's ``get_data_info`` fills it.

    Returns:
        float64 (18,): ``[:3]`` ego translation, ``[3:7]`` ego quaternion (w, x, y, z), ``[7:16]`` CAN bus fields,
        ``[16]`` yaw in radians and ``[17]`` in degrees, with the yaw taken into [0, 360) degrees.
    """
    can_bus = frame.can_bus_raw.astype(np.float64).copy()
    can_bus[:3] = frame.ego2global_translation
    can_bus[3:7] = frame.ego2global_rotation
    angle = quaternion_yaw(frame.ego2global_rotation) / np.pi * 180
    if angle < 0:
        angle += 360
    can_bus[-2] = angle / 180 * np.pi
    can_bus[-1] = angle
    return can_bus


def load_occ_labels(
    path: str | os.PathLike, occ_size: Sequence[int], sample_token: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read an Occ3D ``labels.npz`` (as the original's ``LoadOccGTFromFile``) and check it.

    Args:
        path: The file.
        occ_size: Expected (X, Y, Z).
        sample_token: For the error messages.

    Returns:
        ``semantics`` int64 (X, Y, Z), ``mask_camera`` bool, ``mask_lidar`` bool.

    Raises:
        FileNotFoundError: No file.
        ValueError: Unreadable, a key missing, a shape other than ``occ_size``, or labels outside [0, 18) and 255.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample {sample_token}: occupancy labels {path} not found")
    try:
        with np.load(path) as npz:
            missing = [k for k in ("semantics", "mask_lidar", "mask_camera") if k not in npz.files]
            if missing:
                raise ValueError(f"sample {sample_token}: {path} lacks {', '.join(missing)} (has {npz.files})")
            semantics, mask_lidar, mask_camera = npz["semantics"], npz["mask_lidar"], npz["mask_camera"]
    except ValueError:
        raise
    except Exception as err:  # a corrupt zip or pickle-only npz surfaces as many error types
        raise ValueError(f"sample {sample_token}: cannot read {path}: {err}") from None
    size = tuple(int(s) for s in occ_size)
    for name, arr in (("semantics", semantics), ("mask_lidar", mask_lidar), ("mask_camera", mask_camera)):
        if tuple(arr.shape) != size:
            raise ValueError(f"sample {sample_token}: {path} {name} has shape {tuple(arr.shape)}, expected {size}")
    if not np.issubdtype(semantics.dtype, np.integer):
        raise ValueError(f"sample {sample_token}: {path} semantics has dtype {semantics.dtype}, expected integers")
    bad = (semantics < 0) | ((semantics >= NUM_OCC_CLASSES) & (semantics != 255))
    if bad.any():
        raise ValueError(f"sample {sample_token}: {path} semantics holds labels outside [0, {NUM_OCC_CLASSES}) and 255")
    return semantics.astype(np.int64), mask_camera.astype(bool), mask_lidar.astype(bool)


# ----------------------------------------------------------------------------------------------------- temporal


def queue_indices(index: int, queue_length: int, rng: np.random.Generator) -> list[int]:
    """Frame indices of a training queue, as the original's ``prepare_train_data``.

    ``queue_length - 1`` of the ``queue_length`` preceding indices are drawn at random and sorted, the current index
    is appended, and negative indices are clamped to 0 (so the first frames repeat frame 0).

    Returns:
        ``queue_length`` indices, the last one ``index``.
    """
    previous = list(range(index - queue_length, index))
    kept = sorted(previous[i] for i in rng.permutation(len(previous))[1:])
    return [max(0, i) for i in kept] + [index]


def prev_exists_flags(scene_tokens: Sequence[str]) -> list[bool]:
    """``union2one``'s ``prev_bev_exists``: False where a frame's scene differs from the previous queue frame's."""
    flags, prev = [], None
    for token in scene_tokens:
        flags.append(token == prev)
        prev = token
    return flags


# ----------------------------------------------------------------------------------------------------- images


def photometric_distortion(
    img: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: float = 18,
) -> np.ndarray:
    """``PhotoMetricDistortionMultiViewImage`` on one float image, each step with probability 1/2.

    Brightness shift, contrast scale (before or after the HSV steps, at random), saturation scale, hue shift, and a
    random channel permutation. The original works on BGR images; HSV does not depend on the channel order and the
    permutation is uniform, so running it on RGB draws from the same distribution. No clipping, as the original.

    Args:
        img: float32 (H, W, 3) RGB in 0..255.
        rng: Random source.

    Returns:
        float32 (H, W, 3).
    """
    img = img.astype(np.float32, copy=True)
    if rng.integers(2):
        img += rng.uniform(-brightness_delta, brightness_delta)
    contrast_last = bool(rng.integers(2))
    if not contrast_last and rng.integers(2):
        img *= rng.uniform(*contrast_range)
    hsv = rgb_to_hsv(torch.from_numpy(img).permute(2, 0, 1))  # hue in turns: the original's degrees / 360
    if rng.integers(2):
        hsv[1] *= rng.uniform(*saturation_range)
    if rng.integers(2):
        hsv[0] = (hsv[0] + rng.uniform(-hue_delta, hue_delta) / 360.0) % 1.0
    img = hsv_to_rgb(hsv).permute(1, 2, 0).numpy()
    if contrast_last and rng.integers(2):
        img *= rng.uniform(*contrast_range)
    if rng.integers(2):
        img = img[..., rng.permutation(3)]
    return np.ascontiguousarray(img, dtype=np.float32)


def _read_rgb(path: str, sample_token: str, camera: str, scale: float) -> np.ndarray:
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"sample {sample_token}: {camera} image {path} not found")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if scale != 1.0:
                w, h = im.size
                # The original's RandomScaleImageMultiViewImage truncates the scaled size and resizes bilinearly.
                im = im.resize((int(w * scale), int(h * scale)), Image.BILINEAR)
            return np.asarray(im, dtype=np.float32)
    except OSError as err:
        raise ValueError(f"sample {sample_token}: cannot read {camera} image {path}: {err}") from None


# ----------------------------------------------------------------------------------------------------- dataset


class OccupancyDataset(Dataset):
    """Occ3D-nuScenes samples for BEVFormer-Occ: multi-view images, projections, CAN bus, occupancy labels.

    Args:
        data_root: nuScenes root (``v1.0-<version>/``, ``samples/``).
        occ_root: Occ3D root holding ``gts/``; None for evaluation without labels (not allowed for training).
        version: Table version, e.g. ``v1.0-trainval`` or ``v1.0-mini``.
        scenes: ``"all"``, a standard split (``"train"``, ``"val"``, ``"mini_train"``, ``"mini_val"``) or names.
        queue_length: Frames per training item (the config's 4); evaluation items hold one frame.
        train: Training mode (queue, photometric distortion) or evaluation.
        image_scale: Resize factor of every image (``lidar2img`` and intrinsics scaled to match).
        mean: Normalisation mean, RGB order, 0..255.
        std: Normalisation std.
        to_rgb: As ``img_norm_cfg``: True feeds RGB; False feeds BGR (normalised with ``mean``/``std`` as given).
        photometric: Photometric distortion in training (the config's ``PhotoMetricDistortionMultiViewImage``).
        size_divisor: Images are zero padded (bottom, right) to a multiple of this.
        occ_size: Expected label grid (X, Y, Z).
        can_bus_root: Folder holding ``can_bus/``; default ``data_root``.

    Items (``T`` = ``queue_length`` in training, 1 in evaluation; the current frame is the last)::

        img            float32 (T, 6, 3, Hp, Wp)  normalised, padded
        lidar2img      float32 (T, 6, 4, 4)       LIDAR_TOP -> pixels of the (scaled) image
        cam_intrinsic  float32 (T, 6, 4, 4)       K padded to 4x4 (scaled)
        ego2lidar      float32 (T, 4, 4)          ego -> LIDAR_TOP; ego-frame points project with lidar2img @ ego2lidar
        can_bus        float32 (T, 18)            absolute (see :func:`can_bus_vector`)
        prev_exists    bool (T,)                  False where a frame starts a new scene in the queue
        img_shape      int64 (2,)                 unpadded (H, W)
        scene_token, sample_token, scene_name  str (current frame)
        voxel_semantics int64 (X, Y, Z), mask_camera bool, mask_lidar bool   current frame, when occ_root is set
    """

    def __init__(
        self,
        data_root: str | os.PathLike,
        occ_root: str | os.PathLike | None,
        version: str = "v1.0-trainval",
        scenes: str | Sequence[str] = "all",
        queue_length: int = 4,
        train: bool = True,
        image_scale: float = 1.0,
        mean: Sequence[float] = IMG_NORM_MEAN,
        std: Sequence[float] = IMG_NORM_STD,
        to_rgb: bool = True,
        photometric: bool = True,
        size_divisor: int = 32,
        occ_size: Sequence[int] = (200, 200, 16),
        can_bus_root: str | os.PathLike | None = None,
    ) -> None:
        if queue_length < 1:
            raise ValueError(f"queue_length must be at least 1, got {queue_length}")
        if image_scale <= 0:
            raise ValueError(f"image_scale must be positive, got {image_scale}")
        if train and occ_root is None:
            raise ValueError("training needs occupancy labels: occ_root is None")
        self.frames = load_frames(data_root, version, scenes, occ_root, can_bus_root)
        if not self.frames:
            raise ValueError(f"no samples in the selected scenes ({scenes!r}) of {version} under {data_root}")
        self.queue_length = queue_length
        self.train = train
        self.image_scale = float(image_scale)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.to_rgb = to_rgb
        self.photometric = photometric
        self.size_divisor = int(size_divisor)
        self.occ_size = tuple(int(s) for s in occ_size)
        self.with_labels = occ_root is not None

    def __len__(self) -> int:
        return len(self.frames)

    def _images(self, frame: OccFrame, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
        imgs = []
        for cam, path in zip(CAMERA_NAMES, frame.image_paths):
            img = _read_rgb(path, frame.token, cam, self.image_scale)
            if self.train and self.photometric:
                img = photometric_distortion(img, rng)
            if not self.to_rgb:
                img = img[..., ::-1]
            imgs.append((img - self.mean) / self.std)
        shapes = {im.shape[:2] for im in imgs}
        if len(shapes) != 1:
            raise ValueError(f"sample {frame.token}: the six cameras have different image sizes {sorted(shapes)}")
        h, w = imgs[0].shape[:2]
        d = self.size_divisor
        hp, wp = -(-h // d) * d, -(-w // d) * d
        out = np.zeros((len(imgs), 3, hp, wp), dtype=np.float32)
        for i, img in enumerate(imgs):
            out[i, :, :h, :w] = img.transpose(2, 0, 1)
        return out, (h, w)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.frames):
            raise IndexError(f"index {index} out of range for {len(self.frames)} samples")
        # Draw from torch's generator so every DataLoader worker (seeded by torch) gets its own stream.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        indices = queue_indices(index, self.queue_length, rng) if self.train else [index]
        frames = [self.frames[i] for i in indices]
        scale = np.diag([self.image_scale, self.image_scale, 1.0, 1.0])
        imgs, shapes, lidar2img, intrinsic = [], set(), [], []
        for frame in frames:
            img, shape = self._images(frame, rng)
            imgs.append(img)
            shapes.add(shape)
            lidar2img.append(scale @ frame.lidar2img)
            viewpad = np.tile(np.eye(4), (len(CAMERA_NAMES), 1, 1))
            viewpad[:, :3, :3] = frame.intrinsics
            intrinsic.append(scale @ viewpad)
        if len(shapes) != 1:
            raise ValueError(f"sample {frames[-1].token}: queue frames have different image sizes {sorted(shapes)}")
        current = frames[-1]
        item: dict[str, Any] = {
            "img": torch.from_numpy(np.stack(imgs)),
            "lidar2img": torch.from_numpy(np.stack(lidar2img).astype(np.float32)),
            "cam_intrinsic": torch.from_numpy(np.stack(intrinsic).astype(np.float32)),
            "ego2lidar": torch.from_numpy(np.stack([f.ego2lidar for f in frames]).astype(np.float32)),
            "can_bus": torch.from_numpy(np.stack([can_bus_vector(f) for f in frames]).astype(np.float32)),
            "prev_exists": torch.tensor(prev_exists_flags([f.scene_token for f in frames]), dtype=torch.bool),
            "img_shape": torch.tensor(shapes.pop(), dtype=torch.int64),
            "scene_token": current.scene_token,
            "sample_token": current.token,
            "scene_name": current.scene_name,
        }
        if self.with_labels:
            semantics, mask_camera, mask_lidar = load_occ_labels(current.occ_path, self.occ_size, current.token)
            item["voxel_semantics"] = torch.from_numpy(semantics)
            item["mask_camera"] = torch.from_numpy(mask_camera)
            item["mask_lidar"] = torch.from_numpy(mask_lidar)
        return item


def collate_occupancy(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items of :class:`OccupancyDataset`: tensors to (N, ...), strings to lists.

    Raises:
        ValueError: Empty batch, items with different keys, or tensors of different shapes (e.g. queue lengths).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    keys = list(batch[0])
    for item in batch[1:]:
        if set(item) != set(keys):
            raise ValueError(
                f"items of sample {batch[0].get('sample_token')} and {item.get('sample_token')} have different keys"
            )
    out: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise ValueError(f"cannot stack {key!r} of shapes {sorted(shapes)}")
            out[key] = torch.stack(values)
        else:
            out[key] = list(values)
    return out
