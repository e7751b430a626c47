"""The region proposal network of the official configs: torchvision's ``RegionProposalNetwork`` with mmdet rules.

:class:`MMDetRPN` is called as torchvision's: ``(ImageList, FPN maps, targets) -> (per image (P_i, 4) xyxy
proposals, losses)`` with losses ``loss_objectness`` and ``loss_rpn_box_reg`` in training. It differs in what
mmdet's ``RPNHead`` trains on: anchors outside the image (``allowed_border``) or the image's own padding are left
out, anchors mostly inside an ignore region (``target["ignore_boxes"]``, with ``ignore_iof_thr``) are neither
positive nor negative, and the box loss is L1 or smooth-L1 (beta 1/9). :func:`build_rpn` wires it with mmdet's anchors
(:mod:`.anchor_utils`), matcher and box coder (:mod:`.box_coding`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from .anchor_utils import MMDetAnchorGenerator
from .box_coding import DeltaXYWHCoder, MaxIoUMatcher, ignored_candidates

__all__ = ["MMDetRPN", "build_rpn"]


class MMDetRPN(RegionProposalNetwork):
    """torchvision's RPN with the mmdet ``RPNHead`` training rules that differ.

    Args:
        *args, **kwargs: ``RegionProposalNetwork`` arguments.
        box_loss: ``'l1'`` (Mask R-CNN configs) or ``'smooth_l1'`` (beta 1/9, Cascade configs), on the deltas of the
            sampled positives, divided by the number of sampled anchors.
        allowed_border: Anchors reaching further than this outside the (unpadded) image are left out of matching
            and of the loss (mmdet's ``anchor_inside_flags``); -1 keeps them.
        size_divisible: Each image's own padding (mmdet's ``pad_shape``): anchors at map positions beyond it (the
            extra padding of a batch of unequal images) are left out too (mmdet's ``valid_flags``).
        ignore_iof_thr: mmdet's ``MaxIoUAssigner(ignore_iof_thr)``: valid anchors whose IoF with a region of
            ``target["ignore_boxes"]`` exceeds it are ignored (see :class:`MaxIoUMatcher`); -1 (the official
            configs) ignores nothing.
    """

    def __init__(
        self,
        *args: Any,
        box_loss: str = "l1",
        allowed_border: float = -1,
        size_divisible: int = 32,
        ignore_iof_thr: float = -1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if box_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"RPN box_loss must be 'l1' or 'smooth_l1', got {box_loss!r}")
        self.box_loss = box_loss
        self.allowed_border = allowed_border
        self.size_divisible = size_divisible
        self.ignore_iof_thr = ignore_iof_thr
        self._image_sizes: list[tuple[int, int]] = []
        self._map_sizes: list[tuple[int, int]] = []

    def forward(self, images: ImageList, features: dict[str, torch.Tensor], targets: Any = None):
        self._image_sizes = [tuple(s) for s in images.image_sizes]
        self._map_sizes = [tuple(f.shape[-2:]) for f in features.values()]
        return super().forward(images, features, targets)

    def valid_anchors(self, anchors: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Args: anchors: (N, 4) of all levels; image_size: (H, W) unpadded. Returns: (N,) bool, mmdet's flags."""
        h, w = image_size
        ph, pw = (math.ceil(v / self.size_divisible) * self.size_divisible for v in (h, w))
        per_loc = self.anchor_generator.num_anchors_per_location()
        flags = []
        for (fh, fw), stride, a in zip(self._map_sizes, self.anchor_generator.strides, per_loc):
            rows = torch.arange(fh, device=anchors.device) < min(math.ceil(ph / stride), fh)
            cols = torch.arange(fw, device=anchors.device) < min(math.ceil(pw / stride), fw)
            flags.append((rows[:, None] & cols[None, :]).reshape(-1).repeat_interleave(a))
        valid = torch.cat(flags)
        if valid.shape[0] != anchors.shape[0]:
            raise ValueError(f"MMDetRPN: {anchors.shape[0]} anchors for maps {self._map_sizes}")
        if self.allowed_border >= 0:
            b = self.allowed_border
            valid &= (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b) & (anchors[:, 3] < h + b)
        return valid

    def assign_targets_to_anchors(self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]):
        """Match only the valid anchors (as mmdet, so a gt's best anchor is its best valid one); the rest get -1.

        Returns, per image, labels (1 positive, 0 negative, -1 left out or ignored) and the matched gt boxes.
        """
        labels, matched = [], []
        for a, t, size in zip(anchors, targets, self._image_sizes):
            valid = self.valid_anchors(a, size)
            sub_labels, sub_matched = self._match(a[valid], t)
            lab = a.new_full((len(a),), -1.0)
            lab[valid] = sub_labels.to(lab.dtype)
            boxes = a.clone()  # left-out anchors regress to themselves (never used: never sampled)
            boxes[valid] = sub_matched.to(boxes.dtype)
            labels.append(lab)
            matched.append(boxes)
        return labels, matched

    def _match(self, anchors: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's per-image ``assign_targets_to_anchors``, with mmdet's ignore regions given to the matcher.

        Args:
            anchors: (N, 4) the valid anchors.
            target: ``boxes`` (G, 4) and optionally ``ignore_boxes`` (M, 4).

        Returns:
            (N,) float labels (1, 0, or -1 between thresholds / ignored) and (N, 4) matched gt boxes.
        """
        gt_boxes = target["boxes"]
        if gt_boxes.numel() == 0:  # background image: every anchor negative (mmdet ignores nothing without gts)
            zeros = torch.zeros(anchors.shape, dtype=torch.float32, device=anchors.device)
            return zeros[:, 0].clone(), zeros
        ignore = ignored_candidates(anchors, target.get("ignore_boxes"), self.ignore_iof_thr)
        matched_idxs = self.proposal_matcher(self.box_similarity(gt_boxes, anchors), ignore)
        matched_gt_boxes = gt_boxes[matched_idxs.clamp(min=0)]
        labels = (matched_idxs >= 0).to(dtype=torch.float32)
        labels[matched_idxs == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
        labels[matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
        return labels, matched_gt_boxes

    def compute_loss(
        self,
        objectness: torch.Tensor,
        pred_bbox_deltas: torch.Tensor,
        labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid BCE over the sampled anchors and the box loss over the sampled positives, both per sample."""
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos_masks))[0]
        sampled = torch.where(torch.cat(pos_masks) | torch.cat(neg_masks))[0]
        objectness = objectness.flatten()
        labels_all = torch.cat(labels)
        targets = torch.cat(regression_targets)
        num = max(sampled.numel(), 1)
        if self.box_loss == "l1":
            box = F.l1_loss(pred_bbox_deltas[pos], targets[pos], reduction="sum") / num
        else:
            box = F.smooth_l1_loss(pred_bbox_deltas[pos], targets[pos], beta=1 / 9, reduction="sum") / num
        cls = F.binary_cross_entropy_with_logits(objectness[sampled], labels_all[sampled])
        return cls, box


def build_rpn(
    channels: int,
    strides: Sequence[int],
    *,
    box_loss: str,
    allowed_border: float,
    pre_nms_top_n: dict[str, int],
    post_nms_top_n: dict[str, int],
    batch_size_per_image: int = 256,
    ignore_iof_thr: float = -1.0,
) -> MMDetRPN:
    """The RPN of the official configs: 3 anchors (scale 8, ratios 0.5/1/2) per location, one sigmoid logit each,
    IoU 0.7/0.3 with low-quality matches from 0.3, 256 anchors at 50% positives, NMS 0.7 per level.

    Args:
        channels: FPN width.
        strides: Stride of each FPN level (4..64).
        box_loss: ``'l1'`` (Mask R-CNN) or ``'smooth_l1'`` (Cascade).
        allowed_border: -1 (Mask R-CNN) or 0 (Cascade), see :class:`MMDetRPN`.
        pre_nms_top_n: Per level ``{'training': n, 'testing': n}`` kept before NMS.
        post_nms_top_n: Per image, after NMS.
        batch_size_per_image: Anchors sampled per image for the loss.
        ignore_iof_thr: Anchors lying more than this (IoF) inside a ``target["ignore_boxes"]`` region are neither
            positive nor negative (mmdet's ``MaxIoUAssigner(ignore_iof_thr)``); -1 (official configs) turns it off.
    """
    anchors = MMDetAnchorGenerator(strides)
    rpn = MMDetRPN(
        anchors,
        RPNHead(channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_top_n=pre_nms_top_n,
        post_nms_top_n=post_nms_top_n,
        nms_thresh=0.7,
        box_loss=box_loss,
        allowed_border=allowed_border,
        ignore_iof_thr=ignore_iof_thr,
    )
    rpn.proposal_matcher = MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3, match_low_quality=True)
    rpn.box_coder = DeltaXYWHCoder()
    # mmdet's min_bbox_size=0 drops only empty proposals (w or h <= 0); torchvision drops w or h < min_size (1e-3).
    rpn.min_size = torch.finfo(torch.float32).tiny
    return rpn
