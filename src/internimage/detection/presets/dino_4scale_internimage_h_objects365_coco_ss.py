"""Official ``dino_4scale_internimage_h_objects365_coco_ss``: DINO-4scale InternImage-H, Objects365 -> COCO; 63.4 AP."""

from ._dino import objects365_to_coco

PRESET = objects365_to_coco("internimage_h_jointto22k_384")
