"""Official ``mask_rcnn_internimage_t_fpn_3x_coco``.

InternImage-T + FPN + Mask R-CNN, 3x schedule, lr 1e-4, drop path 0.2; box/mask AP 49.1/43.7.
"""

from . import mask_rcnn

PRESET = mask_rcnn("3x", model="internimage_t_1k_224", drop_path_rate=0.2)
