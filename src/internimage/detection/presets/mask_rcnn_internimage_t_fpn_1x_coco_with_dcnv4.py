"""Official ``mask_rcnn_internimage_t_fpn_1x_coco_with_dcnv4``.

InternImage-T + FPN + Mask R-CNN, 1x, with ``use_dcn_v4_op=True``: the DCNv3 modules run through the DCNv4 op
(same weights and outputs as ``mask_rcnn_internimage_t_fpn_1x_coco``, faster kernels).
"""

from . import mask_rcnn

PRESET = mask_rcnn(
    "1x", model="internimage_t_1k_224", drop_path_rate=0.2,
    model_kwargs=dict(backbone_overrides=dict(use_dcn_v4_op=True)),
)  # fmt: skip
