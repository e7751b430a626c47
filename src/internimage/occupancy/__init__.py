"""3D occupancy prediction for driving: BEVFormer-Occ on InternImage (Occ3D-nuScenes).

:mod:`.config` (the recipe and presets), :mod:`.data` (nuScenes json tables and Occ3D labels, no pickles),
:mod:`.synthetic` (scenes in the real formats for tests and demos), :mod:`.models` (the network), :mod:`.task`
(builder, weights, evaluation, the engine task), :mod:`.evaluation` (the challenge's mIoU), :mod:`.inference`
(bird's-eye-view drawings). See ``docs/occupancy.md``.
"""

from .classes import FREE_LABEL, NUM_OCC_CLASSES, OCC_CLASSES, OCC_PALETTE
from .config import OccupancyConfig
from .data import OccupancyDataset, collate_occupancy
from .evaluation import OccupancyMetric
from .inference import bev_image, render_bev, save_prediction
from .synthetic import generate_scenes
from .task import (
    OccupancyTask,
    build_dataset,
    build_occupancy_model,
    evaluate_occupancy,
    load_occupancy_model,
    load_occupancy_weights,
)

__all__ = [
    "FREE_LABEL",
    "NUM_OCC_CLASSES",
    "OCC_CLASSES",
    "OCC_PALETTE",
    "OccupancyConfig",
    "OccupancyDataset",
    "OccupancyMetric",
    "OccupancyTask",
    "bev_image",
    "build_dataset",
    "build_occupancy_model",
    "collate_occupancy",
    "evaluate_occupancy",
    "generate_scenes",
    "load_occupancy_model",
    "load_occupancy_weights",
    "render_bev",
    "save_prediction",
]
