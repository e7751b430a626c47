"""Official ``mask_rcnn_internimage_t_fpn_1x_coco``.

InternImage-T + FPN + Mask R-CNN, 1x schedule, lr 1e-4, drop path 0.2; box/mask AP 47.2/42.5.
"""

from . import mask_rcnn

PRESET = mask_rcnn("1x", model="internimage_t_1k_224", drop_path_rate=0.2)
