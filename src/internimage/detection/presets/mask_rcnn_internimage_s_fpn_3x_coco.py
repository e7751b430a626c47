"""Official ``mask_rcnn_internimage_s_fpn_3x_coco``.

InternImage-S + FPN + Mask R-CNN, 3x schedule, lr 1e-4, drop path 0.3; box/mask AP 49.7/44.5.
"""

from . import mask_rcnn

PRESET = mask_rcnn("3x", model="internimage_s_1k_224", drop_path_rate=0.3)
