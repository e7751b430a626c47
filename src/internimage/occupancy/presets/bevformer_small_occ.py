"""Official ``bevformer_small_occ`` (the BEVFormer-small occupancy baseline on ResNet-50-DCN).

ResNet-50 (mmdet, caffe style; DCNv2 with 1 deform group in stages 3-4; stem and stage 1 frozen; BatchNorm frozen
and in eval mode; levels 2..3) + FPN ([1024, 2048] -> 256, 2 outputs, no extra level) + BEVFormer encoder (ONE
layer, 200 x 200 BEV, 8 points per pillar, spatial cross-attention over 6 cameras and 2 levels) + ``TransformerOcc``
3D decoder (pillar height 16, 18 classes), cross-entropy over all voxels; grid mask; temporal queue of 4 frames.
Images are caffe-normalised: BGR, mean (103.53, 116.28, 123.675), std 1.

Image scale: the official file resizes training images by 0.2 (``RandomScaleImageMultiViewImage(scales=[0.2])``,
320 x 180) but test images by 0.8 (1280 x 720), in every version of the file; the preset does the same
(``train_image_scale=0.2``, ``image_scale=0.8``).

Optimiser as ``bevformer_base_occ``: AdamW lr 2e-4, weight decay 0.01 on every parameter
(``layer_decay_rule='mmcv_default'``), backbone lr x 0.1, grad clip 35, cosine to 1e-3 x lr after 500 linear
warm-up iterations from lr / 3, 24 epochs at 1 sample per GPU. The config loads no weights at all (its
``load_from`` is commented out and the backbone has no ``pretrained``), so the ResNet starts from mmdet's random
init, with its stem, stage 1 and BatchNorms frozen at that init; pass ``--pretrained`` to start from a checkpoint.
The original's README lists no result for it.
"""

from . import OCC3D, RESNET_CAFFE

NAME = "bevformer_small_occ"

PRESET = {
    **OCC3D,
    **RESNET_CAFFE,
    "model": "resnet50",
    "model_kwargs": {
        "backbone_indices": [2, 3],
        "num_levels": 2,
        "num_layers": 1,
        "bev_h": 200,
        "bev_w": 200,
        "embed_dims": 256,
        "ffn_dims": 512,
        "pillar_h": 16,
        "num_points_in_pillar": 8,
        "num_points": 8,
    },
    "image_scale": 0.8,
    "train_image_scale": 0.2,
}
