"""Mask R-CNN with an InternImage-FPN backbone, on torchvision's ``MaskRCNN``.

Settings follow the official mmdet 2.x ``mask_rcnn_internimage_*_fpn`` configs (``_base_/models/mask_rcnn_r50_fpn``):
mmdet anchors (scale 8 over strides 4-64, ratios 0.5/1/2, see
:class:`~internimage.models.detection.common.MMDetAnchorGenerator`), RPN 2000 pre-NMS per level and 1000 post-NMS
proposals in training (1000/1000 at test), NMS 0.7, L1 box loss; 512 RoIs per image at 25% positives, IoU 0.5 with
``match_low_quality``, L1 box loss on the gt class's deltas, binarised ``aligned`` mask targets; RoI sizes 7 (boxes)
and 14 (masks); test score > 0.05, per-class NMS 0.5, 100 detections, 28x28 masks pasted as mmdet does.
``num_classes`` counts foreground classes (80 for COCO); labels are 1..num_classes and 0 is background,
torchvision's convention.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms

from .backbone import InternImageFPN, build_internimage_body
from .common import (
    DeltaXYWHCoder,
    MaxIoUMatcher,
    PassThroughTransform,
    build_roi_pool,
    build_rpn,
    detector_forward,
    mask_targets,
)

__all__ = ["InternImageMaskRCNN", "MMDetRoIHeads", "build_mask_rcnn"]


class MMDetRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` (same modules and names) with mmdet's ``StandardRoIHead`` rules.

    Training: ``MaxIoUAssigner`` (0.5, ``match_low_quality``), L1 loss on the gt class's deltas divided by the
    sampled RoIs (torchvision: smooth-L1, beta 1/9), mask targets binarised from ``roi_align(aligned=True)``
    (torchvision: soft targets, ``aligned=False``). Test: per-class boxes clipped to the image, scores > 0.05,
    per-class NMS, no small-box filter (mmdet's ``multiclass_nms``). Boxes and masks only (no keypoints).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proposal_matcher = MaxIoUMatcher(0.5, 0.5, min_pos_iou=0.5, match_low_quality=True)
        self.box_coder = DeltaXYWHCoder((0.1, 0.1, 0.2, 0.2))

    def forward(  # type: ignore[override]
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Args as torchvision's ``RoIHeads``. Returns: (detections with ``masks`` (D, 1, 28, 28), losses)."""
        if self.training:
            if targets is None:
                raise ValueError("MMDetRoIHeads needs targets in training mode")
            return [], self._losses(features, proposals, image_shapes, targets)
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        result = self._detections(logits, deltas, proposals, image_shapes)
        if self.has_mask():
            boxes = [r["boxes"] for r in result]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
            labels = torch.cat([r["labels"] for r in result])
            probs = mask_logits[torch.arange(len(labels), device=labels.device), labels].sigmoid()[:, None]
            for r, m in zip(result, probs.split([len(b) for b in boxes])):
                r["masks"] = m
        return result, {}

    def _losses(self, features, proposals, image_shapes, targets) -> dict[str, torch.Tensor]:
        proposals, matched, labels, _ = self.select_training_samples(proposals, targets)
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        gt = torch.cat([t["boxes"][m] if len(t["boxes"]) else torch.zeros_like(p) for t, m, p in
                        zip(targets, matched, proposals)])  # fmt: skip
        rois, labels_all = torch.cat(proposals), torch.cat(labels)
        pos = torch.where(labels_all > 0)[0]
        cols = labels_all[pos, None] * 4 + torch.arange(4, device=pos.device)
        pred = deltas[pos].gather(1, cols)
        target = self.box_coder.encode_single(gt[pos].to(rois.dtype), rois[pos])
        losses = {
            "loss_classifier": F.cross_entropy(logits, labels_all),
            "loss_box_reg": F.l1_loss(pred, target, reduction="sum") / max(labels_all.numel(), 1),
        }
        if self.has_mask():
            keep = [torch.where(lab > 0)[0] for lab in labels]
            pos_rois = [p[k] for p, k in zip(proposals, keep)]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, pos_rois, image_shapes)))
            if sum(len(k) for k in keep) == 0:
                losses["loss_mask"] = mask_logits.sum() * 0.0
            else:
                size = mask_logits.shape[-1]
                tgt = torch.cat([mask_targets(t["masks"], r, m[k], size) for t, r, m, k in
                                 zip(targets, pos_rois, matched, keep)])  # fmt: skip
                pos_labels = torch.cat([lab[k] for lab, k in zip(labels, keep)])
                picked = mask_logits[torch.arange(len(pos_labels), device=pos_labels.device), pos_labels]
                losses["loss_mask"] = F.binary_cross_entropy_with_logits(picked, tgt.to(picked.dtype))
        return losses

    def _detections(self, logits, deltas, proposals, image_shapes) -> list[dict[str, torch.Tensor]]:
        """mmdet's ``BBoxHead.get_bboxes`` + ``multiclass_nms`` per image."""
        counts = [len(p) for p in proposals]
        scores = F.softmax(logits, -1)
        out = []
        for d, s, p, shape in zip(deltas.split(counts), scores.split(counts), proposals, image_shapes):
            boxes = self.box_coder.decode_single(d[:, 4:], p, shape).reshape(-1, 4)  # foreground classes
            num_classes = s.shape[1] - 1
            sc = s[:, 1:].reshape(-1)
            labels = torch.arange(1, num_classes + 1, device=sc.device).repeat(len(p))
            keep = torch.where(sc > self.score_thresh)[0]
            boxes, sc, labels = boxes[keep], sc[keep], labels[keep]
            keep = batched_nms(boxes, sc, labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": boxes[keep], "labels": labels[keep], "scores": sc[keep]})
        return out


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
    old = model.roi_heads
    # torchvision type-checks the poolers against MultiScaleRoIAlign, so ours go in after construction.
    model.roi_heads = MMDetRoIHeads(
        box_pool, old.box_head, old.box_predictor, 0.5, 0.5, box_batch_size_per_image, 0.25, None,
        box_score_thresh, 0.5, box_detections_per_img, mask_pool, old.mask_head, old.mask_predictor,
    )  # fmt: skip
    model.rpn = build_rpn(
        fpn_channels,
        fpn.strides,
        box_loss="l1",  # mask_rcnn_r50_fpn: L1Loss, allowed_border=-1
        allowed_border=-1,
        pre_nms_top_n=dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
        post_nms_top_n=dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
        batch_size_per_image=rpn_batch_size_per_image,
    )
    model.transform = PassThroughTransform()
    model.num_classes = num_classes
    return model
