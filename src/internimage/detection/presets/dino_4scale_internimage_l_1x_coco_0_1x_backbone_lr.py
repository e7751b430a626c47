"""Official ``dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr``: DINO-4scale, InternImage-L (22k), 12 epochs.

Instead of layer-wise decay, the backbone trains at 0.1x the lr (mmcv ``custom_keys={'backbone': lr_mult 0.1}``)
with AdamW weight decay 0.05 on every parameter (mmcv's default constructor exempts none); gradient clipping 0.1.
"""

from ._dino import dino

NAME = "dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr"  # the official name is no module name

PRESET = dino(
    "internimage_l_22k_384", drop_path_rate=0.4, model_kwargs=dict(max_per_img=300),
    layer_decay=1.0, weight_decay=0.05, backbone_lr_mult=0.1, layer_decay_rule="mmcv_default",
)  # fmt: skip
