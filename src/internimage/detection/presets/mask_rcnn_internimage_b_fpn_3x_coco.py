"""Official ``mask_rcnn_internimage_b_fpn_3x_coco``.

InternImage-B + FPN + Mask R-CNN, 3x schedule, lr 1e-4, drop path 0.4; box/mask AP 50.3/44.8.
"""

from . import mask_rcnn

PRESET = mask_rcnn("3x", model="internimage_b_1k_224", drop_path_rate=0.4)
