"""Mask R-CNN with an InternImage-FPN backbone: :class:`InternImageRCNN` with :class:`MMDetRoIHeads`.

Settings follow the official mmdet 2.x ``mask_rcnn_internimage_*_fpn`` configs (``_base_/models/mask_rcnn_r50_fpn``):
mmdet anchors (scale 8 over strides 4-64, ratios 0.5/1/2, see
:class:`~internimage.detection.models.anchor_utils.MMDetAnchorGenerator`), RPN 2000 pre-NMS per level and 1000
post-NMS proposals in training (1000/1000 at test), NMS 0.7, L1 box loss; 512 RoIs per image at 25% positives, IoU
0.5 with ``match_low_quality``, L1 box loss on the gt class's deltas, binarised ``aligned`` mask targets; RoI sizes 7
(boxes) and 14 (masks); test score > 0.05, per-class NMS 0.5, 100 detections, 28x28 masks pasted as mmdet does.
``num_classes`` counts foreground classes (80 for COCO); labels are 1..num_classes and 0 is background,
torchvision's convention. The RoI heads' modules are torchvision's ``MaskRCNN`` ones, under the same names.
"""

from __future__ import annotations

from typing import Any

from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from .generalized_rcnn import InternImageRCNN, build_detector_rpn, build_fpn, build_roi_pools
from .roi_heads import MMDetRoIHeads

__all__ = ["InternImageMaskRCNN", "build_mask_rcnn"]


class InternImageMaskRCNN(InternImageRCNN):
    """InternImage-FPN + :class:`~internimage.detection.models.rpn.MMDetRPN` + :class:`MMDetRoIHeads`."""


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
    ignore_iof_thr: float = -1.0,
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
        ignore_iof_thr: mmdet's ``MaxIoUAssigner(ignore_iof_thr)`` in the RPN and the RoI head: anchors and
            proposals whose IoF with a ``target["ignore_boxes"]`` region exceeds it are neither positive nor
            negative; -1 (every official config) ignores nothing.
        backbone_checkpoint: Classification or mmdet checkpoint for the backbone.
        backbone_overrides: InternImage arguments (the presets set ``layer_scale``, ``drop_path_rate``).

    Returns:
        The detector, in train mode.
    """
    fpn = build_fpn(backbone, fpn_channels, backbone_checkpoint, backbone_overrides)
    box_pool, mask_pool = build_roi_pools(fpn, roi_align)
    roi_heads = MMDetRoIHeads(
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_fc_dim),
        box_predictor=FastRCNNPredictor(box_fc_dim, num_classes + 1),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=box_batch_size_per_image,
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=box_score_thresh,
        nms_thresh=0.5,
        detections_per_img=box_detections_per_img,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * mask_convs, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes + 1),
        ignore_iof_thr=ignore_iof_thr,
    )
    # This builder used to go through torchvision's MaskRCNN, which initialised a default RPN head here that ours
    # then replaced: drawing the same random numbers keeps a seeded build's weights what they were.
    RPNHead(fpn_channels, 3)
    rpn = build_detector_rpn(
        fpn,
        box_loss="l1",  # mask_rcnn_r50_fpn: L1Loss, allowed_border=-1
        allowed_border=-1,
        pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        post_nms_top_n_train=rpn_post_nms_top_n_train,
        pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        post_nms_top_n_test=rpn_post_nms_top_n_test,
        batch_size_per_image=rpn_batch_size_per_image,
        ignore_iof_thr=ignore_iof_thr,
    )
    return InternImageMaskRCNN(fpn, rpn, roi_heads, num_classes)
