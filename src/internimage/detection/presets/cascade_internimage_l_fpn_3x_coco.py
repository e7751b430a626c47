"""Official ``cascade_internimage_l_fpn_3x_coco``.

InternImage-L (22k) + FPN + Cascade Mask R-CNN, 3x, lr 2e-4 at global batch 64 (16 GPUs x 4 here: set
``batch_size`` to 64 / world size), layer decay 0.90, drop path 0.4, EMA (momentum 1e-4); box/mask AP 56.1/48.5.
"""

from . import cascade

PRESET = cascade(
    "3x", model="internimage_l_22k_384", drop_path_rate=0.4, lr=2e-4, layer_decay=0.9, batch_size=4,
    ema=True, ema_decay=0.9999,
)  # fmt: skip
