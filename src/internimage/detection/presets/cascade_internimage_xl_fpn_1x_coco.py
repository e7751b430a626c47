"""Official ``cascade_internimage_xl_fpn_1x_coco``.

InternImage-XL (22k) + FPN + Cascade Mask R-CNN, 1x, lr 1e-4, layer decay 0.94, drop path 0.4; box/mask AP
55.3/48.1.
"""

from . import cascade

PRESET = cascade("1x", model="internimage_xl_22k_384", drop_path_rate=0.4, lr=1e-4, layer_decay=0.94)
