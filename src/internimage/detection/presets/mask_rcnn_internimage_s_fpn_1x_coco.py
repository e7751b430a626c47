"""Official ``mask_rcnn_internimage_s_fpn_1x_coco``.

InternImage-S + FPN + Mask R-CNN, 1x schedule, lr 1e-4, drop path 0.3; box/mask AP 47.8/43.3.
"""

from . import mask_rcnn

PRESET = mask_rcnn("1x", model="internimage_s_1k_224", drop_path_rate=0.3)
