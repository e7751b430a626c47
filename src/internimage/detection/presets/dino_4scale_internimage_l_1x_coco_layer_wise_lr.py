"""Official ``dino_4scale_internimage_l_1x_coco_layer_wise_lr``: DINO-4scale, InternImage-L (22k), 12 epochs.

Zoo: 57.5-57.6 box AP, 241M parameters.
"""

from ._dino import dino

PRESET = dino("internimage_l_22k_384", drop_path_rate=0.4, model_kwargs=dict(max_per_img=300))
