"""The Mask R-CNN RoI heads with mmdet 2.x's ``StandardRoIHead`` rules, and mask pasting / mask targets.

:class:`MMDetRoIHeads` is called as torchvision's ``RoIHeads``: ``(FPN maps, per image (P_i, 4) proposals, per
image (H, W), targets) -> (detections, losses)``; detections (eval) hold ``boxes`` (D, 4), ``labels`` (D,) in
1..K, ``scores`` (D,) and ``masks`` (D, 1, 28, 28) RoI probabilities, losses (train) ``loss_classifier``,
``loss_box_reg`` and ``loss_mask``. Its modules and their names are torchvision's (``box_head.fc6``,
``box_predictor.cls_score``, ``mask_head``, ``mask_predictor``), which official checkpoints map onto.

Shared with the Cascade heads and the transform, as mmdet computes them: :func:`mask_targets`
(``BitmapMasks.crop_and_resize``) and :func:`paste_masks` (``FCNMaskHead._do_paste_mask``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms, box_iou, roi_align

from .box_coding import DeltaXYWHCoder, MaxIoUMatcher, ignored_candidates

__all__ = ["MMDetRoIHeads", "mask_targets", "paste_masks"]


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Paste RoI masks into the image as mmdet's ``FCNMaskHead._do_paste_mask`` (its CPU path) does.

    Each image pixel centre ``(x + 0.5, y + 0.5)`` inside a box's 1-pixel margin samples the RoI mask bilinearly
    (``grid_sample``, ``align_corners=False``, zero padding) at its position in the float box; pixels further out
    are 0. Thresholding the result at ``>= 0.5`` gives mmdet's masks (its GPU path samples every pixel, but
    outside the box the values stay below 0.5). torchvision's ``paste_masks_in_image`` instead pads the mask by
    one pixel and resizes it into the box rounded to integers.

    Args:
        masks: (N, 1, M, M) probabilities.
        boxes: (N, 4) xyxy in output pixels.
        image_size: (H, W) of the output.

    Returns:
        (N, 1, H, W) probabilities (float32 or the input's float dtype).
    """
    h, w = image_size
    dtype = masks.dtype if masks.dtype == torch.float64 else torch.float32
    out = masks.new_zeros((len(masks), 1, h, w), dtype=dtype)
    boxes = boxes.to(dtype)
    for i, (bx0, by0, bx1, by1) in enumerate(boxes.tolist()):  # one device sync for all the regions
        x0, y0, x1, y1 = boxes[i].unbind()
        xa, ya = max(math.floor(bx0) - 1, 0), max(math.floor(by0) - 1, 0)
        xb, yb = min(math.ceil(bx1) + 1, w), min(math.ceil(by1) + 1, h)
        if xb <= xa or yb <= ya:
            continue
        gx = (torch.arange(xa, xb, device=masks.device, dtype=dtype) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(ya, yb, device=masks.device, dtype=dtype) + 0.5 - y0) / (y1 - y0) * 2 - 1
        gx, gy = gx.masked_fill(torch.isinf(gx), 0), gy.masked_fill(torch.isinf(gy), 0)  # degenerate box, as mmdet
        grid = torch.stack([gx[None, :].expand(len(gy), -1), gy[:, None].expand(-1, len(gx))], -1)
        out[i, 0, ya:yb, xa:xb] = F.grid_sample(masks[i : i + 1].to(dtype), grid[None], align_corners=False)[0, 0]
    return out


def mask_targets(gt_masks: torch.Tensor, rois: torch.Tensor, gt_index: torch.Tensor, size: int) -> torch.Tensor:
    """Mask R-CNN training targets as mmdet's ``BitmapMasks.crop_and_resize`` (binarised ``roi_align``).

    Args:
        gt_masks: (G, H, W) instance masks of one image.
        rois: (P, 4) xyxy positive RoIs.
        gt_index: (P,) the gt each RoI is assigned to.
        size: Side of the target (28).

    Returns:
        (P, size, size) float 0/1: RoIAlign (``aligned=True``, adaptive sampling) of the gt mask, ``>= 0.5``.
    """
    if len(rois) == 0:
        return rois.new_zeros((0, size, size))
    batch = torch.cat([gt_index.to(rois.dtype)[:, None], rois], 1)
    crops = roi_align(gt_masks[:, None].to(rois.dtype), batch, (size, size), 1.0, 0, True)[:, 0]
    return (crops >= 0.5).to(rois.dtype)


class MMDetRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` (same modules and names) with mmdet's ``StandardRoIHead`` rules.

    Training: ``MaxIoUAssigner`` (0.5, ``match_low_quality``), L1 loss on the gt class's deltas divided by the
    sampled RoIs (torchvision: smooth-L1, beta 1/9), mask targets binarised from ``roi_align(aligned=True)``
    (torchvision: soft targets, ``aligned=False``). Test: per-class boxes clipped to the image, scores > 0.05,
    per-class NMS, no small-box filter (mmdet's ``multiclass_nms``). Boxes and masks only (no keypoints).

    Args:
        *args, **kwargs: ``RoIHeads`` arguments.
        ignore_iof_thr: mmdet's ``MaxIoUAssigner(ignore_iof_thr)``: proposals whose IoF with a region of
            ``target["ignore_boxes"]`` exceeds it are neither positive nor negative (the gt boxes added as proposals
            never are, as mmdet adds them after assigning); -1 (the official configs) ignores nothing.
    """

    def __init__(self, *args: Any, ignore_iof_thr: float = -1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_iof_thr = ignore_iof_thr
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

    def select_training_samples(self, proposals, targets):
        """torchvision's ``select_training_samples`` with mmdet's ignore regions (``target["ignore_boxes"]``).

        Args:
            proposals: Per image (P_i, 4) RPN boxes.
            targets: Per image ``boxes``, ``labels`` (``masks``), optionally ``ignore_boxes`` (M_i, 4).

        Returns:
            Per image the sampled RoIs (gt boxes included), their gt index, labels (0 background) and box targets.
        """
        self.check_targets(targets)
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        # Flagged before the gt boxes are appended: mmdet assigns the proposals alone and adds the gts as positives.
        thr = self.ignore_iof_thr
        ignores = [ignored_candidates(p, t.get("ignore_boxes"), thr) for p, t in zip(proposals, targets)]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = [], []
        for props, gts, gt_lab, ignore in zip(proposals, gt_boxes, gt_labels, ignores):
            if gts.numel() == 0:  # background image: all negatives (mmdet ignores nothing without gts)
                matched_idxs.append(torch.zeros((len(props),), dtype=torch.int64, device=props.device))
                labels.append(torch.zeros((len(props),), dtype=torch.int64, device=props.device))
                continue
            if ignore is not None:
                ignore = torch.cat([ignore, ignore.new_zeros(len(gts))])
            idx = self.proposal_matcher(box_iou(gts, props), ignore)
            lab = gt_lab[idx.clamp(min=0)].to(torch.int64)
            lab[idx == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
            lab[idx == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1  # the sampler skips -1
            matched_idxs.append(idx.clamp(min=0))
            labels.append(lab)
        sampled = self.subsample(labels)
        matched_gt_boxes = []
        for i, keep in enumerate(sampled):
            proposals[i], labels[i], matched_idxs[i] = proposals[i][keep], labels[i][keep], matched_idxs[i][keep]
            gts = gt_boxes[i] if gt_boxes[i].numel() else proposals[i].new_zeros((1, 4))
            matched_gt_boxes.append(gts[matched_idxs[i]])
        return proposals, matched_idxs, labels, self.box_coder.encode(matched_gt_boxes, proposals)

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
