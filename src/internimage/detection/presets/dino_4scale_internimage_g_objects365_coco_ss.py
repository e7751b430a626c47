"""Official ``dino_4scale_internimage_g_objects365_coco_ss``: DINO-4scale InternImage-G, Objects365 -> COCO; 64.2 AP."""

from ._dino import objects365_to_coco

PRESET = objects365_to_coco("internimage_g_jointto22k_384")
