"""Official ``dino_4scale_internimage_t_1x_coco_layer_wise_lr``: DINO-4scale, InternImage-T, 12 epochs; 53.9 box AP."""

from ._dino import dino

PRESET = dino("internimage_t_1k_224", drop_path_rate=0.2)
