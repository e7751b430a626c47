"""Cascade Mask R-CNN with an InternImage-FPN backbone: :class:`InternImageRCNN` with :class:`CascadeRoIHeads`.

Settings follow the official mmdet 2.x ``cascade_internimage_*_fpn`` configs (InternImage-L/XL): the RPN of
:mod:`.mask_rcnn` but with 2000 proposals per image in training, smooth-L1 (beta 1/9) and ``allowed_border=0``
(mmdet's ``cascade_rcnn`` defaults), and the three-stage heads of :mod:`.cascade_roi_heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .cascade_roi_heads import DEFAULT_STAGE_STDS, CascadeRoIHeads, ConvFCBoxHead, FCNMaskHead
from .generalized_rcnn import InternImageRCNN, build_detector_rpn, build_fpn, build_roi_pools

__all__ = ["InternImageCascadeMaskRCNN", "build_cascade_mask_rcnn"]


class InternImageCascadeMaskRCNN(InternImageRCNN):
    """InternImage-FPN + :class:`~internimage.detection.models.rpn.MMDetRPN` + :class:`CascadeRoIHeads`."""


def build_cascade_mask_rcnn(
    backbone: str,
    num_classes: int,
    *,
    fpn_channels: int = 256,
    head_convs: int = 4,
    head_conv_channels: int = 256,
    head_fcs: int = 1,
    head_fc_dim: int = 1024,
    head_norm: bool = True,
    mask_channels: int = 256,
    mask_convs: int = 4,
    with_mask: bool = True,
    roi_align: str = "mmdet",
    stage_iou: Sequence[float] = (0.5, 0.6, 0.7),
    stage_weights: Sequence[float] = (1.0, 0.5, 0.25),
    stage_stds: Sequence[Sequence[float]] = DEFAULT_STAGE_STDS,
    box_loss: str = "giou",
    box_loss_weight: float = 10.0,
    reg_class_agnostic: bool = False,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    ignore_iof_thr: float = -1.0,
    backbone_checkpoint: str | None = None,
    backbone_overrides: dict[str, Any] | None = None,
) -> InternImageCascadeMaskRCNN:
    """Build Cascade Mask R-CNN with InternImage-FPN (arguments as :func:`build_mask_rcnn`, plus the stages').

    Cascade configs keep 2000 RPN proposals per image in training (mmdet's ``cascade_rcnn`` default), and their RPN
    uses smooth-L1 (beta 1/9) with ``allowed_border=0``. ``reg_class_agnostic=True`` gives mmdet's R-50 Cascade head
    (4 deltas shared by all classes) instead of the official InternImage one. ``with_mask=False`` builds the
    box-only Cascade R-CNN (the CrowdHuman config: ``head_convs=0, head_fcs=2, head_norm=False``, smooth-L1).
    ``ignore_iof_thr`` > 0 (mmdet's ``MaxIoUAssigner(ignore_iof_thr)`` in the RPN and every stage) keeps anchors and
    RoIs lying mostly inside a ``target["ignore_boxes"]`` region out of the negatives (and positives); the default
    -1, every official config's, ignores nothing.
    """
    fpn = build_fpn(backbone, fpn_channels, backbone_checkpoint, backbone_overrides)
    rpn = build_detector_rpn(
        fpn,
        box_loss="smooth_l1",  # cascade_mask_rcnn_r50_fpn: SmoothL1Loss(beta=1/9), allowed_border=0
        allowed_border=0,
        pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        post_nms_top_n_train=rpn_post_nms_top_n_train,
        pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        post_nms_top_n_test=rpn_post_nms_top_n_test,
        batch_size_per_image=rpn_batch_size_per_image,
        ignore_iof_thr=ignore_iof_thr,
    )
    box_pool, mask_pool = build_roi_pools(fpn, roi_align)
    n = len(stage_iou)
    roi_heads = CascadeRoIHeads(
        box_pool,
        mask_pool,
        [
            ConvFCBoxHead(
                fpn_channels,
                7,
                num_classes,
                head_convs,
                head_conv_channels,
                head_fcs,
                head_fc_dim,
                head_norm,
                reg_class_agnostic,
            )
            for _ in range(n)
        ],
        [FCNMaskHead(fpn_channels, num_classes, mask_convs, mask_channels) for _ in range(n)] if with_mask else [],
        stage_iou=stage_iou,
        stage_weights=stage_weights,
        stage_stds=stage_stds,
        batch_size_per_image=box_batch_size_per_image,
        box_loss=box_loss,
        box_loss_weight=box_loss_weight,
        score_thresh=box_score_thresh,
        detections_per_img=box_detections_per_img,
        ignore_iof_thr=ignore_iof_thr,
    )
    return InternImageCascadeMaskRCNN(fpn, rpn, roi_heads, num_classes)
