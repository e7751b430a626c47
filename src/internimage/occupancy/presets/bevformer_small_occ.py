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

NAME = "bevformer_small_occ"

PRESET = {
    "model": "resnet50",
    "backbone_overrides": {
        "style": "caffe",
        "frozen_stages": 1,
        "norm_eval": True,
        "norm_requires_grad": False,
        "stage_with_dcn": [False, False, True, True],
        "deform_groups": 1,
    },
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
    "num_classes": 18,
    "pc_range": [-40.0, -40.0, -1.0, 40.0, 40.0, 5.4],
    "use_mask": False,
    "version": "v1.0-trainval",
    "train_scenes": "train",
    "val_scenes": "val",
    "queue_length": 4,
    "image_scale": 0.8,
    "train_image_scale": 0.2,
    "img_mean": [103.530, 116.280, 123.675],
    "img_std": [1.0, 1.0, 1.0],
    "to_rgb": False,
    "photometric": True,
    "epochs": 24,
    "batch_size": 1,
    "lr": 2e-4,
    "lr_base_batch": 0,
    "min_lr": 2e-7,
    "warmup_iters": 500,
    "warmup_ratio": 1.0 / 3,
    "sched": "cosine",
    "optimizer": "adamw",
    "weight_decay": 0.01,
    "layer_decay": 1.0,
    "layer_decay_rule": "mmcv_default",
    "backbone_lr_mult": 0.1,
    "clip_grad": 35.0,
    "eval_every": 1,
}
