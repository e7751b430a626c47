"""Official ``bevformer_base_occ`` (the BEVFormer-base occupancy baseline on ResNet-101-DCN).

ResNet-101 (mmdet, caffe style: stride in the first 1x1 conv of a bottleneck; DCNv2 with 1 deform group in stages
3-4; stem and stage 1 frozen; BatchNorm frozen and in eval mode; levels 1..3) + FPN ([512, 1024, 2048] -> 256,
4 outputs: one ``on_output`` extra level) + BEVFormer encoder (4 layers, 200 x 200 BEV, 8 points per pillar,
temporal self-attention, spatial cross-attention over 6 cameras and 4 levels) + ``TransformerOcc`` 3D decoder
(pillar height 16, 18 classes), cross-entropy over all voxels; grid mask; temporal queue of 4 frames; full-size
1600 x 900 images padded to 32. Images are caffe-normalised: BGR, mean (103.53, 116.28, 123.675), std 1.

Optimiser: AdamW lr 2e-4, weight decay 0.01 on every parameter (mmcv's ``DefaultOptimizerConstructor``: no
no-decay rule, hence ``layer_decay_rule='mmcv_default'``), ``custom_keys={'img_backbone': dict(lr_mult=0.1)}``
(``backbone_lr_mult=0.1``); grad clip 35; cosine to 1e-3 x lr after 500 linear warm-up iterations from lr / 3;
24 epochs at 1 sample per GPU. The config starts the whole model from ``ckpts/r101_dcn_fcos3d_pretrain.pth``
(``load_from``): pass it as ``--pretrained`` (its ``img_backbone.*`` part is loaded; the original's non-strict
``load_from`` would also take its FPN weights, which are set aside here). Occ3D-nuScenes val mIoU 23.67 in the
original's README.
"""

from . import OCC3D, RESNET_CAFFE

NAME = "bevformer_base_occ"

PRESET = {
    **OCC3D,
    **RESNET_CAFFE,
    "model": "resnet101",
    "model_kwargs": {
        "backbone_indices": [1, 2, 3],
        "num_levels": 4,
        "num_layers": 4,
        "bev_h": 200,
        "bev_w": 200,
        "embed_dims": 256,
        "ffn_dims": 512,
        "pillar_h": 16,
        "num_points_in_pillar": 8,
        "num_points": 8,
    },
    "image_scale": 1.0,
}
