"""The 18 Occ3D-nuScenes occupancy classes and the colours the CVPR 2023 occupancy challenge draws them with.

Class order is the one of the original's ``occ_metrics.py`` (``Metric_mIoU.class_names``) and of the Occ3D
``labels.npz`` files: 0 ``others`` ... 16 ``vegetation``, 17 ``free``. The mIoU averages the first 17 (``free`` is
left out).
"""

from __future__ import annotations

__all__ = [
    "FREE_LABEL",
    "NUM_OCC_CLASSES",
    "OCC_CLASSES",
    "OCC_PALETTE",
    "SEMANTIC_CLASSES",
    "occ_class_index",
]

OCC_CLASSES: tuple[str, ...] = (
    "others",
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
    "free",
)

NUM_OCC_CLASSES = len(OCC_CLASSES)
#: Label of empty space in ``semantics``.
FREE_LABEL = OCC_CLASSES.index("free")
#: The 17 classes the mIoU averages.
SEMANTIC_CLASSES: tuple[str, ...] = OCC_CLASSES[:FREE_LABEL]

# RGB per class, in OCC_CLASSES order. These are the colours of the occupancy visualisation shipped with the CVPR 2023
# 3D Occupancy Prediction challenge (the Occ3D-nuScenes toolkit, its ``color_map``), which the challenge's
# follow-ups (FlashOcc, SparseOcc, ...) reuse. Free space is white there and is normally not drawn at all.
OCC_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # others
    (255, 120, 50),  # barrier
    (255, 192, 203),  # bicycle
    (255, 255, 0),  # bus
    (0, 150, 245),  # car
    (0, 255, 255),  # construction_vehicle
    (255, 127, 0),  # motorcycle
    (255, 0, 0),  # pedestrian
    (255, 240, 150),  # traffic_cone
    (135, 60, 0),  # trailer
    (160, 32, 240),  # truck
    (255, 0, 255),  # driveable_surface
    (139, 137, 137),  # other_flat
    (75, 0, 75),  # sidewalk
    (150, 240, 80),  # terrain
    (230, 230, 250),  # manmade
    (0, 175, 0),  # vegetation
    (255, 255, 255),  # free
)


def occ_class_index(name: str) -> int:
    """Index of an Occ3D class name.

    Raises:
        ValueError: ``name`` is not one of :data:`OCC_CLASSES`.
    """
    try:
        return OCC_CLASSES.index(name)
    except ValueError:
        raise ValueError(f"unknown occupancy class {name!r}; expected one of {', '.join(OCC_CLASSES)}") from None
