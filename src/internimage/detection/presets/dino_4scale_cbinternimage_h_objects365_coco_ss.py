"""Official ``dino_4scale_cbinternimage_h_objects365_coco_ss``: CB-DINO, CB-InternImage-H (2.18B), Objects365 -> COCO;
64.5 box AP single-scale (65.0 with TTA)."""

from ._dino import objects365_to_coco

PRESET = objects365_to_coco("internimage_h_jointto22k_384", arch="cb_dino")
