"""Official ``cascade_internimage_xl_fpn_3x_coco``.

InternImage-XL (22k) + FPN + Cascade Mask R-CNN, 3x, lr 2e-4 at global batch 64 (16 GPUs x 4 here: set
``batch_size`` to 64 / world size), layer decay 0.90, drop path 0.6, EMA (momentum 1e-4); box/mask AP 56.2/48.8.
"""

from . import cascade

PRESET = cascade(
    "3x", model="internimage_xl_22k_384", drop_path_rate=0.6, lr=2e-4, layer_decay=0.9, batch_size=4,
    ema=True, ema_decay=0.9999,
)  # fmt: skip
