"""Official ``bevformer_intern-s_occ`` (the CVPR 2023 occupancy challenge baseline on InternImage-S).

InternImage-S (channels 80, depths 4/4/21/4, post-norm, layer scale 1.0, drop path 0.3, gradient checkpointing;
levels 1..3) + FPN (256, 4 outputs) + BEVFormer encoder (4 layers, 200 x 200 BEV, 8 points per pillar, temporal
self-attention over the previous BEV, spatial cross-attention over 6 cameras) + ``TransformerOcc`` 3D decoder
(pillar height 16, 18 classes), cross-entropy over all voxels; grid mask; temporal queue of 4 frames. AdamW lr 2e-4,
weight decay 0.05, layer decay 1.0 over the config's ``num_layers=33``, grad clip 35, cosine to 1e-3 x lr after 500
linear warm-up iterations from lr / 3, 24 epochs at 1 sample per GPU (8 GPUs). The backbone starts from
``mask_rcnn_internimage_s_fpn_3x_coco.pth`` (pass it as ``--pretrained``). Occ3D-nuScenes val mIoU 25.11 in the
original's README.
"""

from . import OCC3D

NAME = "bevformer_intern-s_occ"

PRESET = {
    **OCC3D,
    "model": "internimage_s_1k_224",
    "backbone_overrides": {
        "layer_scale": 1.0,
        "offset_scale": 1.0,
        "post_norm": True,
        "drop_path_rate": 0.3,
        "with_cp": True,
    },
    "model_kwargs": {},
    "image_scale": 1.0,
    "weight_decay": 0.05,
    "layer_decay": 1.0,
    "layer_decay_rule": "occupancy",
}
