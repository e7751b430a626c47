"""Official ``cascade_internimage_l_fpn_1x_coco``.

InternImage-L (22k) + FPN + Cascade Mask R-CNN, 1x, lr 1e-4, layer decay 0.94, drop path 0.4; box/mask AP
54.9/47.7.
"""

from . import cascade

PRESET = cascade("1x", model="internimage_l_22k_384", drop_path_rate=0.4, lr=1e-4, layer_decay=0.94)
