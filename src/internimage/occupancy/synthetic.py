"""Tiny synthetic driving scenes in the real nuScenes + Occ3D formats, for tests and smoke training.

:func:`generate_scenes` writes, under ``root``:

* ``v1.0-<version>/{scene,sample,sample_data,calibrated_sensor,ego_pose,sensor,log}.json`` with consistent tokens;
* ``samples/CAM_*/<name>.jpg|png``: six cameras in the nuScenes ring layout (intrinsics of the real 1600x900 cameras
  scaled to the requested size), each rendered by vectorised ray casting at its own timestamp and ego pose;
* ``gts/<scene_name>/<sample_token>/labels.npz``: Occ3D labels (``semantics``, ``mask_lidar``, ``mask_camera``) in
  the ego frame of the keyframe (the ``LIDAR_TOP`` sample_data's ego pose), over ``pc_range``;
* ``can_bus/<scene_name>_pose.json``: CAN bus pose messages at 50 Hz (optional).

The world is a flat ground (``driveable_surface`` road along the layout's x axis, ``sidewalk`` beside it,
``terrain`` beyond) with boxes of a few classes (car, truck, pedestrian, barrier, traffic_cone, manmade, vegetation)
and a sky. Every class is drawn in its :data:`~internimage.occupancy.classes.OCC_PALETTE` colour with mild face
shading, so the labels are learnable from colour. The ego drives along the road, turning slowly.

``mask_camera`` marks the voxels that camera rays (one per pixel) pass through up to and including the first occupied
voxel; ``mask_lidar`` does the same for rays of a 32-beam spinning lidar at the ``LIDAR_TOP`` origin.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write
from .classes import FREE_LABEL, OCC_PALETTE, occ_class_index
from .data import CAMERA_NAMES, LIDAR_NAME, quaternion_to_matrix

__all__ = [
    "DEFAULT_PC_RANGE",
    "SceneBox",
    "generate_scenes",
    "render_view",
    "visible_voxels",
    "voxelize_scene",
]

logger = logging.getLogger(__name__)

DEFAULT_PC_RANGE: tuple[float, ...] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
SKY_COLOUR = np.array([135.0, 190.0, 235.0])
# Layout of the ground across the road (|y| in the scene's layout frame).
ROAD_HALF_WIDTH = 7.0
SIDEWALK_OUTER = 11.0
# The ground is the plane z = 0 of the global (and ego) frame; a voxel is ground when it contains this height.
GROUND_PROBE_Z = -1e-3

# Real nuScenes 1600x900 rig, rounded: (yaw of the optical axis in degrees, mounting position in the ego frame, focal
# length in pixels). CAM_BACK has the wider lens.
_RIG: dict[str, tuple[float, tuple[float, float, float], float]] = {
    "CAM_FRONT": (0.0, (1.70, 0.02, 1.51), 1266.0),
    "CAM_FRONT_RIGHT": (-55.0, (1.55, -0.49, 1.50), 1260.0),
    "CAM_FRONT_LEFT": (55.0, (1.52, 0.49, 1.51), 1272.0),
    "CAM_BACK": (180.0, (0.03, 0.01, 1.58), 809.0),
    "CAM_BACK_LEFT": (110.0, (1.04, 0.48, 1.56), 1256.0),
    "CAM_BACK_RIGHT": (-110.0, (1.03, -0.48, 1.57), 1259.0),
}
# Camera exposure offsets after the lidar keyframe (microseconds): the cameras fire as the lidar sweeps past them.
_CAM_OFFSET_US = {
    "CAM_FRONT": 12_000,
    "CAM_FRONT_RIGHT": 20_000,
    "CAM_FRONT_LEFT": 4_000,
    "CAM_BACK": 37_000,
    "CAM_BACK_LEFT": 29_000,
    "CAM_BACK_RIGHT": 45_000,
}
# nuScenes LIDAR_TOP: 0.94 m ahead of the rear axle, 1.84 m up, x axis pointing to the ego's right (yaw -90 degrees).
_LIDAR_NUSCENES = ((0.943713, 0.0, 1.84023), -90.0)
# (class, size (length, width, height) in metres, count, where): where is "road", "edge", "sidewalk" or "outside".
_OBJECTS: tuple[tuple[str, tuple[float, float, float], int, str], ...] = (
    ("car", (4.5, 1.9, 1.6), 8, "road"),
    ("truck", (8.0, 2.6, 3.2), 2, "road"),
    ("pedestrian", (0.7, 0.7, 1.75), 8, "sidewalk"),
    ("barrier", (2.0, 0.5, 1.0), 6, "edge"),
    ("traffic_cone", (0.45, 0.45, 0.8), 4, "edge"),
    ("vegetation", (2.6, 2.6, 4.0), 6, "verge"),
    ("manmade", (10.0, 7.0, 6.0), 6, "outside"),
)
_LIGHT = np.array([0.35, 0.55, 0.76])


@dataclass
class SceneBox:
    """An upright box of one class in the global frame.

    Attributes:
        label: Occ3D class index.
        center: (3,) centre (x, y, z) in metres.
        size: (3,) length (along ``yaw``), width, height.
        yaw: Heading around +z in radians.
    """

    label: int
    center: np.ndarray
    size: np.ndarray
    yaw: float

    def corners(self) -> np.ndarray:
        """float64 (8, 3) corners in the global frame."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        local = signs * (self.size / 2)
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return local @ rot.T + self.center


# ----------------------------------------------------------------------------------------------------- geometry


def _yaw_quaternion(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _pose(translation: Sequence[float], rotation: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    return m


def _rz(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Camera axes (x right, y down, z forward) in an ego frame (x forward, y left, z up), for a camera looking along +x.
_CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _matrix_to_quaternion(r: np.ndarray) -> list[float]:
    # Shepperd's method: pick the largest diagonal term for a stable square root.
    tr = np.trace(r)
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q = q if q[0] >= 0 else -q
    return [float(v) for v in q / np.linalg.norm(q)]


# ----------------------------------------------------------------------------------------------------- rendering


def _ground_label(layout_y: np.ndarray) -> np.ndarray:
    ay = np.abs(layout_y)
    out = np.full(ay.shape, occ_class_index("terrain"), dtype=np.int64)
    out[ay < SIDEWALK_OUTER] = occ_class_index("sidewalk")
    out[ay < ROAD_HALF_WIDTH] = occ_class_index("driveable_surface")
    return out


def _ray_boxes(origin: np.ndarray, dirs: np.ndarray, boxes: Sequence[SceneBox]) -> tuple[np.ndarray, ...]:
    """Nearest box hit of every ray: distance (inf for none), box index (-1), unit face normal (global)."""
    n = dirs.shape[0]
    best_t = np.full(n, np.inf)
    best_box = np.full(n, -1, dtype=np.int64)
    best_normal = np.zeros((n, 3))
    for b, box in enumerate(boxes):
        rot = _rz(box.yaw)
        o = rot.T @ (origin - box.center)
        d = dirs @ rot  # rows rotated into the box frame (d @ R == (R^T d^T)^T)
        half = box.size / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t1 = (-half - o) * inv
            t2 = (half - o) * inv
        t1 = np.where(np.isnan(t1), -np.inf, t1)
        t2 = np.where(np.isnan(t2), np.inf, t2)
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        near = tmin.max(1)
        far = tmax.min(1)
        hit = (near <= far) & (near > 1e-6) & (near < best_t)
        if not hit.any():
            continue
        axis = tmin.argmax(1)
        normal_local = np.zeros((n, 3))
        normal_local[np.arange(n), axis] = -np.sign(d[np.arange(n), axis])
        best_t = np.where(hit, near, best_t)
        best_box = np.where(hit, b, best_box)
        best_normal = np.where(hit[:, None], normal_local @ rot.T, best_normal)
    return best_t, best_box, best_normal


def render_view(
    cam2global: np.ndarray,
    intrinsic: np.ndarray,
    image_size: tuple[int, int],
    boxes: Sequence[SceneBox],
    layout2global: np.ndarray,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Ray cast one camera image of the scene (one ray through every pixel centre ``(u + 0.5, v + 0.5)``).

    Args:
        cam2global: (4, 4) camera (x right, y down, z forward) -> global.
        intrinsic: (3, 3) camera matrix.
        image_size: (width, height) in pixels.
        boxes: Scene boxes (global frame).
        layout2global: (4, 4) the scene layout frame (road along x) -> global.
        rng: Source of the mild pixel noise; None renders without noise.

    Returns:
        ``rgb`` uint8 (H, W, 3); ``label`` int64 (H, W) class per pixel (-1 sky); ``instance`` int64 (H, W) box
        index (-1 ground or sky); ``depth`` float64 (H, W) distance along the ray (inf for sky).
    """
    w, h = image_size
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
    rays_cam = pix @ np.linalg.inv(intrinsic).T
    dirs = rays_cam @ cam2global[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origin = cam2global[:3, 3]

    # Only boxes whose bounding sphere reaches into the view frustum can be hit (most of them are off to the side).
    corners = np.array([[0.0, 0.0, 1.0], [w, 0.0, 1.0], [w, h, 1.0], [0.0, h, 1.0]]) @ np.linalg.inv(intrinsic).T
    inward = np.cross(corners, np.roll(corners, -1, axis=0))
    inward /= np.linalg.norm(inward, axis=1, keepdims=True)
    global2cam = np.linalg.inv(cam2global)
    candidates = [
        i
        for i, b in enumerate(boxes)
        if np.all(inward @ (global2cam[:3, :3] @ b.center + global2cam[:3, 3]) > -np.linalg.norm(b.size) / 2)
    ]
    t_box, sub_idx, normal = _ray_boxes(origin, dirs, [boxes[i] for i in candidates])
    box_idx = np.where(sub_idx >= 0, np.asarray(candidates + [-1], dtype=np.int64)[sub_idx], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[:, 2] < -1e-9, -origin[2] / dirs[:, 2], np.inf)
    ground_pts = origin + dirs * np.where(np.isfinite(t_ground), t_ground, 0.0)[:, None]
    layout_y = (ground_pts - layout2global[:3, 3]) @ layout2global[:3, 1]
    ground_cls = _ground_label(layout_y)

    palette = np.asarray(OCC_PALETTE, dtype=np.float64)
    box_labels = np.array([b.label for b in boxes] + [0], dtype=np.int64)
    use_box = t_box < t_ground
    use_ground = ~use_box & np.isfinite(t_ground)
    label = np.full(dirs.shape[0], -1, dtype=np.int64)
    label[use_box] = box_labels[box_idx[use_box]]
    label[use_ground] = ground_cls[use_ground]
    rgb = np.tile(SKY_COLOUR, (dirs.shape[0], 1))
    # Lambert-like shading kept mild (0.75..1.0) so the class colour stays recognisable on every face.
    shade = 0.75 + 0.25 * np.clip(normal @ _LIGHT, 0.0, 1.0)
    rgb[use_box] = palette[label[use_box]] * shade[use_box, None]
    rgb[use_ground] = palette[label[use_ground]] * 0.95
    if rng is not None:
        rgb += rng.normal(0.0, 2.0, size=rgb.shape)
    depth = np.where(use_box, t_box, t_ground)
    instance = np.where(use_box, box_idx, -1)
    return {
        "rgb": np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(h, w, 3),
        "label": label.reshape(h, w),
        "instance": instance.reshape(h, w),
        "depth": depth.reshape(h, w),
    }


# ----------------------------------------------------------------------------------------------------- voxels


def _grid(pc_range: Sequence[float], occ_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    lo = np.asarray(pc_range[:3], dtype=np.float64)
    hi = np.asarray(pc_range[3:], dtype=np.float64)
    size = tuple(int(s) for s in occ_size)
    return lo, (hi - lo) / np.asarray(size), size  # type: ignore[return-value]


def voxelize_scene(
    ego2global: np.ndarray,
    boxes: Sequence[SceneBox],
    layout2global: np.ndarray,
    pc_range: Sequence[float] = DEFAULT_PC_RANGE,
    occ_size: Sequence[int] = (200, 200, 16),
    subsamples: int = 3,
) -> np.ndarray:
    """Occ3D ``semantics`` of the scene in an ego frame: ground layer, then boxes over it, free elsewhere.

    A voxel belongs to a box when any of ``subsamples**3`` points spread inside it lies in the box (so objects
    smaller than a voxel still occupy one); the ground layer is the voxel layer holding the plane z = 0.

    Args:
        ego2global: (4, 4) of the keyframe.
        boxes: Scene boxes (global frame).
        layout2global: (4, 4) layout frame -> global (gives the road / sidewalk / terrain bands).
        pc_range: (x0, y0, z0, x1, y1, z1) of the grid in the ego frame.
        occ_size: (X, Y, Z) voxels.
        subsamples: Points per voxel edge for the box test.

    Returns:
        uint8 (X, Y, Z), :data:`~internimage.occupancy.classes.FREE_LABEL` where empty.
    """
    lo, vs, size = _grid(pc_range, occ_size)
    sem = np.full(size, FREE_LABEL, dtype=np.uint8)
    global2ego = np.linalg.inv(ego2global)
    # Ground: in each voxel column, the layer holding the plane z = 0 (global). The synthetic ego only turns about
    # z, so that plane sits at the same ego height everywhere.
    ix, iy = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    cx = lo[0] + (ix + 0.5) * vs[0]
    cy = lo[1] + (iy + 0.5) * vs[1]
    ground_ego = np.stack([cx, cy, np.zeros_like(cx), np.ones_like(cx)], -1) @ ego2global.T
    ground_k = np.full(cx.shape, int(math.floor((GROUND_PROBE_Z - ego2global[2, 3] - lo[2]) / vs[2])))
    layout_y = (ground_ego[..., :3] - layout2global[:3, 3]) @ layout2global[:3, 1]
    cls = _ground_label(layout_y)
    ok = (ground_k >= 0) & (ground_k < size[2])
    sem[ix[ok], iy[ok], ground_k[ok]] = cls[ok]

    offsets = (np.arange(subsamples) + 0.5) / subsamples
    sub = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    for box in boxes:
        corners = np.c_[box.corners(), np.ones(8)] @ global2ego.T
        first = np.clip(np.floor((corners[:, :3].min(0) - lo) / vs).astype(int), 0, np.asarray(size))
        last = np.clip(np.floor((corners[:, :3].max(0) - lo) / vs).astype(int) + 1, 0, np.asarray(size))
        if np.any(last <= first):
            continue
        idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(first, last)], indexing="ij"), -1).reshape(-1, 3)
        pts = lo + (idx[:, None, :] + sub[None]) * vs  # (V, S, 3) ego
        pts_g = pts @ ego2global[:3, :3].T + ego2global[:3, 3]
        local = (pts_g - box.center) @ _rz(box.yaw)
        inside = np.all(np.abs(local) <= box.size / 2, axis=-1).any(1)
        sel = idx[inside]
        sem[sel[:, 0], sel[:, 1], sel[:, 2]] = box.label
    return sem


def visible_voxels(
    semantics: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    pc_range: Sequence[float] = DEFAULT_PC_RANGE,
    chunk: int = 32,
) -> np.ndarray:
    """Voxels that rays pass through up to and including the first occupied one.

    Each ray is marched from its origin in steps of half a voxel along its fastest-moving axis, until it hits a
    non-free voxel (which is marked too) or leaves the grid.

    Args:
        semantics: (X, Y, Z) labels; :data:`FREE_LABEL` is empty.
        origins: (R, 3) or (3,) ray origins in the grid's frame.
        dirs: (R, 3) ray directions (any length).
        pc_range: Extent of the grid.
        chunk: Steps evaluated at once per ray.

    Returns:
        bool (X, Y, Z).
    """
    lo, vs, size = _grid(pc_range, semantics.shape)
    hi = lo + vs * np.asarray(size)
    dirs = np.asarray(dirs, dtype=np.float64)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.broadcast_to(np.asarray(origins, dtype=np.float64), dirs.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axis = np.where(dirs > 0, (hi - origins) / dirs, np.where(dirs < 0, (lo - origins) / dirs, np.inf))
    t_exit = t_axis.min(1)
    step = 0.5 / np.max(np.abs(dirs) / vs, axis=1)
    occupied = (semantics != FREE_LABEL).reshape(-1)
    seen = np.zeros(occupied.shape, dtype=bool)
    strides = np.array([size[1] * size[2], size[2], 1])
    active = np.flatnonzero(t_exit > 0)
    k = np.arange(chunk)
    start = np.zeros(dirs.shape[0])
    while active.size:
        ts = start[active, None] + step[active, None] * (k + 0.5)  # (A, K)
        pts = origins[active, None, :] + dirs[active, None, :] * ts[..., None]
        # The origin is inside the grid and the grid is convex, so before t_exit every point is inside (the clip
        # only guards the last float ulp at the boundary).
        cell = np.clip(np.floor((pts - lo) / vs).astype(np.int64), 0, np.asarray(size) - 1)
        inside = ts < t_exit[active, None]
        flat = cell @ strides
        hit = inside & occupied[flat]
        any_hit = hit.any(1)
        upto = np.where(any_hit, hit.argmax(1), chunk - 1)
        seen[flat[inside & (k <= upto[:, None])]] = True
        start[active] += step[active] * chunk
        done = any_hit | (start[active] >= t_exit[active])
        active = active[~done]
    return seen.reshape(size)


# ----------------------------------------------------------------------------------------------------- scenes


def _token(rng: np.random.Generator) -> str:
    return rng.bytes(16).hex()


def _place_boxes(rng: np.random.Generator, ego_xy: np.ndarray, x_range: tuple[float, float]) -> list[SceneBox]:
    """Boxes in the layout frame (road along x), kept off the ego's path and off each other."""
    boxes: list[SceneBox] = []
    for name, size, count, where in _OBJECTS:
        label = occ_class_index(name)
        for _ in range(count):
            for _attempt in range(40):
                dims = np.asarray(size) * rng.uniform(0.9, 1.1, 3)
                x = rng.uniform(*x_range)
                side = rng.choice([-1.0, 1.0])
                yaw = rng.uniform(-0.15, 0.15)
                if where == "road":
                    y = side * rng.uniform(2.5, ROAD_HALF_WIDTH - 1.5)
                    yaw += math.pi * (side < 0)
                elif where == "edge":
                    y = side * (ROAD_HALF_WIDTH - 0.5)
                elif where == "sidewalk":
                    y = side * rng.uniform(ROAD_HALF_WIDTH + 0.8, SIDEWALK_OUTER - 0.8)
                elif where == "verge":
                    y = side * rng.uniform(SIDEWALK_OUTER + 1.5, SIDEWALK_OUTER + 3.0)
                else:
                    y = side * rng.uniform(SIDEWALK_OUTER + 6.0, SIDEWALK_OUTER + 16.0)
                    yaw = rng.uniform(-0.3, 0.3)
                centre = np.array([x, y, dims[2] / 2])
                radius = float(np.hypot(dims[0], dims[1]) / 2)
                if np.min(np.hypot(*(ego_xy - centre[:2]).T)) < radius + 3.0:
                    continue
                if any(
                    np.hypot(*(b.center[:2] - centre[:2])) < radius + float(np.hypot(b.size[0], b.size[1]) / 2) + 0.3
                    for b in boxes
                ):
                    continue
                boxes.append(SceneBox(label, centre, dims, float(yaw)))
                break
    return boxes


def _trajectory(t: np.ndarray, start: np.ndarray, yaw0: float, speed: float, yaw_rate: float) -> tuple[np.ndarray, ...]:
    """Ego (x, y, yaw) in the layout frame at times ``t`` (seconds) for a constant speed and turn rate."""
    yaw = yaw0 + yaw_rate * t
    if abs(yaw_rate) < 1e-9:
        x = start[0] + speed * t * math.cos(yaw0)
        y = start[1] + speed * t * math.sin(yaw0)
    else:
        x = start[0] + speed / yaw_rate * (np.sin(yaw) - math.sin(yaw0))
        y = start[1] - speed / yaw_rate * (np.cos(yaw) - math.cos(yaw0))
    return x, y, yaw


def generate_scenes(
    root: str | os.PathLike,
    num_scenes: int = 2,
    frames_per_scene: int = 4,
    image_size: tuple[int, int] = (128, 72),
    occ_size: Sequence[int] = (50, 50, 16),
    seed: int = 0,
    version: str = "v1.0-synthetic",
    pc_range: Sequence[float] = DEFAULT_PC_RANGE,
    image_format: str = "jpg",
    lidar_extrinsics: str = "nuscenes",
    can_bus: bool = True,
    occ_root: str | os.PathLike | None = None,
    keep_renders: bool = False,
    lidar_azimuths: int = 720,
) -> dict[str, Any]:
    """Write ``num_scenes`` synthetic scenes in the nuScenes + Occ3D formats (deterministic for a seed).

    Args:
        root: Dataset root (the ``data_root`` of :class:`~internimage.occupancy.data.OccupancyDataset`).
        num_scenes: Scenes (named ``scene-0001``, ``scene-0002``, ...).
        frames_per_scene: Keyframes per scene, 0.5 s apart.
        image_size: (width, height) of every camera image.
        occ_size: Label grid (X, Y, Z) over ``pc_range``.
        seed: Random seed; the same seed writes the same files.
        version: Table folder name (``v1.0-`` is prefixed when missing).
        pc_range: Label extent in the ego frame, (x0, y0, z0, x1, y1, z1).
        image_format: ``"jpg"`` (as nuScenes; quality 95) or ``"png"`` (lossless).
        lidar_extrinsics: ``"nuscenes"``: LIDAR_TOP mounted as on the real car (1.84 m up, x to the right), so
            ``ego2lidar`` matters; ``"identity"``: the lidar frame is the ego frame.
        can_bus: Also write ``can_bus/<scene>_pose.json``.
        occ_root: Where ``gts/`` goes; default ``root``.
        keep_renders: Put every view's ``label``/``instance``/``depth`` maps in the summary (tests).
        lidar_azimuths: Azimuth steps of the 32-beam lidar that casts ``mask_lidar``.

    Returns:
        Summary dict: ``root``, ``occ_root``, ``version``, ``scenes`` (list of ``name``, ``token``, ``samples``
        (tokens in time order), ``boxes`` (list of :class:`SceneBox`), ``layout2global``), ``ego2global``
        (sample token -> (4, 4)), ``cameras`` (sample token -> channel -> dict of ``cam2global``, ``intrinsic``,
        ``filename``) and, with ``keep_renders``, ``renders`` (sample token -> channel -> render maps).

    Raises:
        ValueError: Bad sizes or options.
    """
    if num_scenes < 1 or frames_per_scene < 1:
        raise ValueError(f"need at least one scene and one frame, got {num_scenes} scenes x {frames_per_scene}")
    width, height = (int(s) for s in image_size)
    if width < 8 or height < 8:
        raise ValueError(f"image_size must be at least 8x8 pixels, got {image_size}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if lidar_extrinsics not in ("nuscenes", "identity"):
        raise ValueError(f"lidar_extrinsics must be 'nuscenes' or 'identity', got {lidar_extrinsics!r}")
    if len(occ_size) != 3 or min(occ_size) < 1 or len(pc_range) != 6:
        raise ValueError(f"occ_size must be 3 positive ints and pc_range 6 numbers, got {occ_size}, {pc_range}")

    from PIL import Image

    root = Path(root)
    occ_root = Path(occ_root) if occ_root is not None else root
    version = version if version.startswith("v1.0-") else f"v1.0-{version}"
    rng = np.random.default_rng(seed)
    token_rng = np.random.default_rng([seed, 1])
    tables: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor", "log")
    }
    sensor_tokens = {}
    for channel in (*CAMERA_NAMES, LIDAR_NAME):
        sensor_tokens[channel] = _token(token_rng)
        modality = "lidar" if channel == LIDAR_NAME else "camera"
        tables["sensor"].append({"token": sensor_tokens[channel], "channel": channel, "modality": modality})
    scale = width / 1600.0
    summary: dict[str, Any] = {
        "root": str(root),
        "occ_root": str(occ_root),
        "version": version,
        "scenes": [],
        "ego2global": {},
        "cameras": {},
    }
    if keep_renders:
        summary["renders"] = {}
    ext = "jpg" if image_format == "jpg" else "png"
    pil_format = "JPEG" if image_format == "jpg" else "PNG"

    # LIDAR_TOP beams: 32 elevations of the real sensor, a full turn of azimuths.
    elev = np.deg2rad(np.linspace(-30.67, 10.67, 32))
    azim = np.linspace(0, 2 * np.pi, lidar_azimuths, endpoint=False)
    ee, aa = np.meshgrid(elev, azim, indexing="ij")
    lidar_dirs_local = np.stack([np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], -1).reshape(-1, 3)

    for s in range(num_scenes):
        name = f"scene-{s + 1:04d}"
        scene_token, log_token = _token(token_rng), _token(token_rng)
        t0_us = 1_533_000_000_000_000 + s * 3_600_000_000  # an hour apart, so a global time sort keeps scenes whole
        # Layout frame (road along its x axis) placed somewhere in the global frame, in any direction.
        layout_yaw = rng.uniform(-math.pi, math.pi)
        layout2global = _pose([rng.uniform(300, 1500), rng.uniform(300, 1500), 0.0], _rz(layout_yaw))
        start = np.array([0.0, rng.uniform(-3.0, 3.0)])
        yaw0, speed, yaw_rate = rng.uniform(-0.15, 0.15), rng.uniform(4.0, 8.0), rng.uniform(-0.12, 0.12)
        key_times = np.arange(frames_per_scene) * 0.5
        ex, ey, _ = _trajectory(np.linspace(0, key_times[-1] + 0.1, 20), start, yaw0, speed, yaw_rate)
        boxes_layout = _place_boxes(rng, np.stack([ex, ey], 1), (-45.0, float(ex.max()) + 45.0))
        boxes = [
            SceneBox(b.label, (layout2global @ np.r_[b.center, 1.0])[:3], b.size, b.yaw + layout_yaw)
            for b in boxes_layout
        ]

        def ego_pose_at(t: float, _start=start, _yaw0=yaw0, _speed=speed, _rate=yaw_rate, _l2g=layout2global):
            x, y, yaw = _trajectory(np.array([t]), _start, _yaw0, _speed, _rate)
            return _l2g @ _pose([float(x[0]), float(y[0]), 0.0], _rz(float(yaw[0])))

        calib = {}
        for cam in CAMERA_NAMES:
            yaw_deg, pos, focal = _RIG[cam]
            k = np.array([[focal * scale, 0.0, width / 2], [0.0, focal * scale, height / 2], [0.0, 0.0, 1.0]])
            rot = _rz(math.radians(yaw_deg)) @ _CAM_AXES
            calib[cam] = {"token": _token(token_rng), "k": k, "pose": _pose(pos, rot)}
            tables["calibrated_sensor"].append(
                {
                    "token": calib[cam]["token"],
                    "sensor_token": sensor_tokens[cam],
                    "translation": list(pos),
                    "rotation": _matrix_to_quaternion(rot),
                    "camera_intrinsic": k.tolist(),
                }
            )
        lidar_pos, lidar_yaw = _LIDAR_NUSCENES if lidar_extrinsics == "nuscenes" else ((0.0, 0.0, 0.0), 0.0)
        lidar_q = _yaw_quaternion(math.radians(lidar_yaw))
        lidar2ego = _pose(lidar_pos, quaternion_to_matrix(lidar_q))
        lidar_cs = _token(token_rng)
        tables["calibrated_sensor"].append(
            {
                "token": lidar_cs,
                "sensor_token": sensor_tokens[LIDAR_NAME],
                "translation": list(lidar_pos),
                "rotation": lidar_q,
                "camera_intrinsic": [],
            }
        )
        tables["log"].append(
            {"token": log_token, "logfile": f"synthetic-{name}", "vehicle": "synthetic", "location": "synthetic"}
        )

        sample_tokens = [_token(token_rng) for _ in range(frames_per_scene)]
        prev_sd: dict[str, str] = {}
        sd_records: dict[str, list[dict[str, Any]]] = {c: [] for c in (*CAMERA_NAMES, LIDAR_NAME)}
        for f, sample_token in enumerate(sample_tokens):
            t_us = t0_us + int(round(key_times[f] * 1e6))
            tables["sample"].append(
                {
                    "token": sample_token,
                    "timestamp": t_us,
                    "prev": sample_tokens[f - 1] if f > 0 else "",
                    "next": sample_tokens[f + 1] if f + 1 < frames_per_scene else "",
                    "scene_token": scene_token,
                }
            )
            ego2global = ego_pose_at(float(key_times[f]))
            summary["ego2global"][sample_token] = ego2global
            summary["cameras"][sample_token] = {}
            channels = [(LIDAR_NAME, 0)] + [(c, _CAM_OFFSET_US[c]) for c in CAMERA_NAMES]
            origins, dirs = [], []
            for channel, offset in channels:
                sd_time = t_us + offset
                pose = ego2global if channel == LIDAR_NAME else ego_pose_at(key_times[f] + offset / 1e6)
                pose_token = _token(token_rng)
                tables["ego_pose"].append(
                    {
                        "token": pose_token,
                        "timestamp": sd_time,
                        "rotation": _matrix_to_quaternion(pose[:3, :3]),
                        "translation": pose[:3, 3].tolist(),
                    }
                )
                sd_token = _token(token_rng)
                if channel == LIDAR_NAME:
                    filename = f"samples/{channel}/{name}__{channel}__{sd_time}.pcd.bin"
                    record_size = {"height": 0, "width": 0, "fileformat": "pcd"}
                    cs_token = lidar_cs
                else:
                    filename = f"samples/{channel}/{name}__{channel}__{sd_time}.{ext}"
                    record_size = {"height": height, "width": width, "fileformat": ext}
                    cs_token = calib[channel]["token"]
                    cam2global = pose @ calib[channel]["pose"]
                    render = render_view(cam2global, calib[channel]["k"], (width, height), boxes, layout2global, rng)
                    rgb = render.pop("rgb")
                    quality = {"quality": 95} if pil_format == "JPEG" else {}
                    atomic_write(
                        root / filename,
                        lambda p, _rgb=rgb, _q=quality: Image.fromarray(_rgb).save(p, format=pil_format, **_q),
                    )
                    summary["cameras"][sample_token][channel] = {
                        "cam2global": cam2global,
                        "intrinsic": calib[channel]["k"],
                        "filename": filename,
                    }
                    if keep_renders:
                        summary.setdefault("renders", {}).setdefault(sample_token, {})[channel] = render
                    # Camera rays for mask_camera, expressed in the keyframe's ego frame.
                    cam2ego = np.linalg.inv(ego2global) @ cam2global
                    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
                    pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
                    d = pix @ np.linalg.inv(calib[channel]["k"]).T @ cam2ego[:3, :3].T
                    dirs.append(d)
                    origins.append(np.broadcast_to(cam2ego[:3, 3], d.shape))
                record = {
                    "token": sd_token,
                    "sample_token": sample_token,
                    "ego_pose_token": pose_token,
                    "calibrated_sensor_token": cs_token,
                    "timestamp": sd_time,
                    "is_key_frame": True,
                    "filename": filename,
                    "prev": prev_sd.get(channel, ""),
                    "next": "",
                    **record_size,
                }
                if sd_records[channel]:
                    sd_records[channel][-1]["next"] = sd_token
                sd_records[channel].append(record)
                prev_sd[channel] = sd_token

            semantics = voxelize_scene(ego2global, boxes, layout2global, pc_range, occ_size)
            mask_camera = visible_voxels(semantics, np.concatenate(origins), np.concatenate(dirs), pc_range)
            lidar_dirs = lidar_dirs_local @ lidar2ego[:3, :3].T
            mask_lidar = visible_voxels(semantics, lidar2ego[:3, 3], lidar_dirs, pc_range)
            buf = io.BytesIO()
            np.savez_compressed(
                buf,
                semantics=semantics,
                mask_lidar=mask_lidar.astype(np.uint8),
                mask_camera=mask_camera.astype(np.uint8),
            )
            atomic_write(occ_root / "gts" / name / sample_token / "labels.npz", buf.getvalue())
        for channel in sd_records:
            tables["sample_data"].extend(sd_records[channel])
        tables["scene"].append(
            {
                "token": scene_token,
                "log_token": log_token,
                "nbr_samples": frames_per_scene,
                "first_sample_token": sample_tokens[0],
                "last_sample_token": sample_tokens[-1],
                "name": name,
                "description": "synthetic road scene",
            }
        )
        if can_bus:
            _write_can_bus(root, name, t0_us, key_times[-1] + 0.2, start, yaw0, speed, yaw_rate, layout2global)
        summary["scenes"].append(
            {
                "name": name,
                "token": scene_token,
                "samples": sample_tokens,
                "boxes": boxes,
                "layout2global": layout2global,
            }
        )

    for table, records in tables.items():
        atomic_write(root / version / f"{table}.json", json.dumps(records, indent=0))
    logger.info(
        "wrote %d synthetic scenes x %d frames (%dx%d images, %s labels) to %s",
        num_scenes,
        frames_per_scene,
        width,
        height,
        "x".join(str(int(v)) for v in occ_size),
        root,
    )
    return summary


def _write_can_bus(
    root: Path,
    name: str,
    t0_us: int,
    duration: float,
    start: np.ndarray,
    yaw0: float,
    speed: float,
    yaw_rate: float,
    layout2global: np.ndarray,
) -> None:
    """CAN bus pose messages at 50 Hz, keys in the expansion's (alphabetical) order."""
    times = np.arange(-0.1, duration, 0.02)
    x, y, yaw = _trajectory(times, start, yaw0, speed, yaw_rate)
    messages = []
    for t, xi, yi, yi_aw in zip(times, x, y, yaw):
        pose = layout2global @ _pose([xi, yi, 0.0], _rz(yi_aw))
        messages.append(
            {
                "accel": [0.0, speed * yaw_rate, 9.81],
                "orientation": _matrix_to_quaternion(pose[:3, :3]),
                "pos": pose[:3, 3].tolist(),
                "rotation_rate": [0.0, 0.0, yaw_rate],
                "utime": int(t0_us + round(t * 1e6)),
                "vel": [speed, 0.0, 0.0],
            }
        )
    atomic_write(root / "can_bus" / f"{name}_pose.json", json.dumps(messages))
