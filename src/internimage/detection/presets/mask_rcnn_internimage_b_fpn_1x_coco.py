"""Official ``mask_rcnn_internimage_b_fpn_1x_coco``.

InternImage-B + FPN + Mask R-CNN, 1x schedule, lr 1e-4, drop path 0.4; box/mask AP 48.8/44.0.
"""

from . import mask_rcnn

PRESET = mask_rcnn("1x", model="internimage_b_1k_224", drop_path_rate=0.4)
