"""Mask R-CNN with an InternImage-FPN backbone, on torchvision's ``MaskRCNN``.

Settings follow the official mmdet 2.x ``mask_rcnn_internimage_*_fpn`` configs where torchvision exposes them:
anchors 32-512 over strides 4-64 with ratios 0.5/1/2, RPN 2000 pre-NMS per level and 1000 post-NMS proposals in
training (1000/1000 at test), NMS 0.7; 512 RoIs per image at 25% positives, IoU 0.5; RoI sizes 7 (boxes) and 14
(masks); test score 0.05, NMS 0.5, 100 detections, 28x28 masks. ``num_classes`` counts foreground classes (80 for
COCO); labels are 1..num_classes and 0 is background, torchvision's convention.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from .backbone import InternImageFPN, build_internimage_body
from .common import PassThroughTransform, build_roi_pool, detector_forward

__all__ = ["InternImageMaskRCNN", "build_mask_rcnn"]

_LEVELS = ("0", "1", "2", "3")


class InternImageMaskRCNN(MaskRCNN):
    """torchvision ``MaskRCNN`` whose data pipeline resizes (see :func:`detector_forward`)."""

    def forward(  # type: ignore[override]
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        orig_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """See :func:`~internimage.models.detection.common.detector_forward`."""
        return detector_forward(self, images, targets, orig_sizes)


def build_mask_rcnn(
    backbone: str,
    num_classes: int,
    *,
    fpn_channels: int = 256,
    box_fc_dim: int = 1024,
    mask_channels: int = 256,
    mask_convs: int = 4,
    roi_align: str = "mmdet",
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 1000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    backbone_checkpoint: str | None = None,
    backbone_overrides: dict[str, Any] | None = None,
) -> InternImageMaskRCNN:
    """Build Mask R-CNN with InternImage-FPN.

    Args:
        backbone: Registered InternImage name (e.g. ``'internimage_t_1k_224'``).
        num_classes: Foreground classes (80 for COCO).
        fpn_channels: FPN and RPN width.
        box_fc_dim: Width of the two shared box FCs.
        mask_channels: Width of the mask head convs.
        mask_convs: Number of 3x3 convs in the mask head.
        roi_align: ``'mmdet'`` (aligned, adaptive sampling, mmdet level rule) or ``'torchvision'``.
        rpn_pre_nms_top_n_train: Proposals per level kept before NMS in training.
        rpn_post_nms_top_n_train: Proposals per image after NMS in training.
        rpn_pre_nms_top_n_test: As above, at test time.
        rpn_post_nms_top_n_test: As above, at test time.
        rpn_batch_size_per_image: Anchors sampled per image for the RPN loss.
        box_batch_size_per_image: RoIs sampled per image for the box and mask losses.
        box_detections_per_img: Detections kept per image.
        box_score_thresh: Minimum score of a kept detection.
        backbone_checkpoint: Classification or mmdet checkpoint for the backbone.
        backbone_overrides: InternImage arguments (the presets set ``layer_scale``, ``drop_path_rate``).

    Returns:
        The detector, in train mode.
    """
    body = build_internimage_body(backbone, backbone_checkpoint, **(backbone_overrides or {}))
    fpn = InternImageFPN(body, fpn_channels)
    box_pool = build_roi_pool(_LEVELS, 7, roi_align, strides=fpn.strides[:4])
    mask_pool = build_roi_pool(_LEVELS, 14, roi_align, strides=fpn.strides[:4])
    model = InternImageMaskRCNN(
        fpn,
        num_classes=None,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_fc_dim),
        box_predictor=FastRCNNPredictor(box_fc_dim, num_classes + 1),
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * mask_convs, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes + 1),
    )
    # torchvision type-checks the poolers against MultiScaleRoIAlign, so ours go in after construction.
    model.roi_heads.box_roi_pool = box_pool
    model.roi_heads.mask_roi_pool = mask_pool
    model.transform = PassThroughTransform()
    model.num_classes = num_classes
    return model
