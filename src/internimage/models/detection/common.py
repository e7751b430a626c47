"""Pieces shared by the Mask R-CNN and Cascade Mask R-CNN detectors.

* :class:`LevelRoIAlign`: mmdet's ``SingleRoIExtractor`` semantics (RoIAlign ``aligned=True``, adaptive sampling,
  level = floor(log2(sqrt(area) / 56)) clamped to the levels), so official weights see the features they were
  trained on. torchvision's ``MultiScaleRoIAlign`` maps RoIs to the same levels but samples with
  ``aligned=False`` and ``sampling_ratio=2``; it remains available with ``roi_align='torchvision'``.
* :class:`PassThroughTransform`: normalise and batch only; resizing and flipping are the data pipeline's job
  (mmdet order), which is what the 3x multi-scale + crop recipe needs.
* mmdet 2.x numerics the official checkpoints were trained and evaluated with (``mmdet/core``):
  :class:`DeltaXYWHCoder` (``DeltaXYWHBBoxCoder``: per-stage stds, dw/dh clamped both ways, decode clipped to the
  image), :class:`MMDetAnchorGenerator` (``AnchorGenerator``: fixed strides 4..64, unrounded base anchors centred
  at ``stride * i``), :class:`MaxIoUMatcher` (``MaxIoUAssigner`` with ``match_low_quality``), :class:`MMDetRPN`
  (L1 or smooth-L1 box loss, ``allowed_border``), :func:`paste_masks` (``FCNMaskHead._do_paste_mask``) and
  :func:`mask_targets` (``BitmapMasks.crop_and_resize``).
* :func:`detector_forward`: torchvision's two-stage forward, with predictions returned at the original image
  size given by the data pipeline.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align

__all__ = [
    "DeltaXYWHCoder",
    "LevelRoIAlign",
    "MMDetAnchorGenerator",
    "MMDetRPN",
    "MaxIoUMatcher",
    "mask_targets",
    "paste_masks",
    "PassThroughTransform",
    "build_roi_pool",
    "build_rpn",
    "detector_forward",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_WH_RATIO_CLIP = 16 / 1000  # mmdet's default: |dw|, |dh| <= log(1000 / 16)


class DeltaXYWHCoder(BoxCoder):
    """mmdet's ``DeltaXYWHBBoxCoder`` (zero means) behind torchvision's ``BoxCoder`` interface.

    ``encode``: ``d = ((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph)) / stds``; ``decode`` inverts it
    with ``dw, dh`` clamped to ``[-log(1000 / 16), log(1000 / 16)]`` (torchvision clamps only from above) and, given
    ``max_shape``, clips x to ``[0, W]`` and y to ``[0, H]``. Deltas may hold one box per class (``(R, 4K)``).

    Args:
        stds: mmdet's ``target_stds`` (torchvision's weights are their inverses).
    """

    def __init__(self, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> None:
        if len(stds) != 4 or min(stds) <= 0:
            raise ValueError(f"DeltaXYWHCoder needs 4 positive stds, got {tuple(stds)}")
        super().__init__(tuple(1.0 / s for s in stds), bbox_xform_clip=abs(math.log(_WH_RATIO_CLIP)))
        self.stds = tuple(float(s) for s in stds)

    def encode_single(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """Args: reference_boxes: (R, 4) targets; proposals: (R, 4) sources. Returns: (R, 4) normalised deltas."""
        p = proposals.to(reference_boxes.dtype)
        pxy, pwh = (p[:, :2] + p[:, 2:]) * 0.5, p[:, 2:] - p[:, :2]
        gxy, gwh = (
            (reference_boxes[:, :2] + reference_boxes[:, 2:]) * 0.5,
            reference_boxes[:, 2:] - reference_boxes[:, :2],
        )
        deltas = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], 1)
        return deltas / deltas.new_tensor(self.stds)

    def decode_single(
        self, rel_codes: torch.Tensor, boxes: torch.Tensor, max_shape: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Args:
            rel_codes: (R, 4K) normalised deltas (K boxes per RoI, e.g. one per class).
            boxes: (R, 4) xyxy sources.
            max_shape: (H, W) to clip to, or None.

        Returns:
            (R, 4K) xyxy boxes.
        """
        n = rel_codes.shape[0]
        d = rel_codes.reshape(n, rel_codes.shape[1] // 4, 4) * rel_codes.new_tensor(self.stds)
        b = boxes.to(rel_codes.dtype)[:, None]
        pxy, pwh = (b[..., :2] + b[..., 2:]) * 0.5, b[..., 2:] - b[..., :2]
        gxy = pxy + pwh * d[..., :2]
        gwh = pwh * d[..., 2:].clamp(-self.bbox_xform_clip, self.bbox_xform_clip).exp()
        out = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], -1)
        if max_shape is not None:
            h, w = max_shape
            out = torch.stack([out[..., 0].clamp(0, w), out[..., 1].clamp(0, h), out[..., 2].clamp(0, w),
                               out[..., 3].clamp(0, h)], -1)  # fmt: skip
        return out.reshape(n, rel_codes.shape[1])


class MMDetAnchorGenerator(nn.Module):
    """mmdet's ``AnchorGenerator`` (``center_offset=0``) behind torchvision's ``AnchorGenerator`` interface.

    Level l has a fixed stride s_l whatever the padded image size (torchvision derives it as
    ``image_size // map_size``, 61 instead of 64 on the stride-64 level of most COCO images), base anchors of
    side ``s_l * scale`` with ratios h/w = r (w = s_l * scale / sqrt(r), h = s_l * scale * sqrt(r)), not rounded,
    centred at ``(s_l * j, s_l * i)``. Order: position-major, then ratio (mmdet's and torchvision's).

    Args:
        strides: Stride of each feature level.
        scales: Anchor side in strides (``octave_base_scale``), one entry in the official configs.
        ratios: Height / width ratios.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        scales: Sequence[float] = (8.0,),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__()
        self.strides = list(strides)
        self.scales = list(scales)
        self.ratios = list(ratios)

    def num_anchors_per_location(self) -> list[int]:
        return [len(self.scales) * len(self.ratios)] * len(self.strides)

    def base_anchors(self, stride: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Returns: (A, 4) anchors centred at the origin, ratio-major."""
        ratios = torch.tensor(self.ratios, dtype=dtype, device=device)
        scales = torch.tensor(self.scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], 1)

    def grid_anchors(self, sizes: Sequence[tuple[int, int]], dtype: torch.dtype, device: torch.device):
        """Args: sizes: (H_l, W_l) per level. Returns: per level (H_l * W_l * A, 4)."""
        if len(sizes) != len(self.strides):
            raise ValueError(f"MMDetAnchorGenerator: {len(sizes)} feature maps for {len(self.strides)} strides")
        out = []
        for (h, w), stride in zip(sizes, self.strides):
            xs = torch.arange(w, device=device).to(dtype) * stride
            ys = torch.arange(h, device=device).to(dtype) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
            out.append((shifts + self.base_anchors(stride, dtype, device)[None]).reshape(-1, 4))
        return out

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Returns: per image the (sum_l H_l W_l A, 4) anchors of all levels (the same for every image)."""
        sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        anchors = torch.cat(self.grid_anchors(sizes, feature_maps[0].dtype, feature_maps[0].device))
        return [anchors for _ in range(len(image_list.image_sizes))]


class MaxIoUMatcher(Matcher):
    """mmdet's ``MaxIoUAssigner`` (``gt_max_assign_all=True``) behind torchvision's ``Matcher`` interface.

    A prediction is negative (-1) if its best IoU is below ``neg_iou_thr``, positive (its best gt) from
    ``pos_iou_thr``, ignored (-2) in between. With ``match_low_quality``, every prediction whose IoU with gt i equals
    that gt's best IoU (if at least ``min_pos_iou``) is given to gt i, later gts overriding earlier ones
    (torchvision instead keeps each such prediction's own best gt and has no ``min_pos_iou``).
    """

    def __init__(
        self, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float = 0.0, match_low_quality: bool = True
    ) -> None:
        super().__init__(pos_iou_thr, min(neg_iou_thr, pos_iou_thr), allow_low_quality_matches=match_low_quality)
        self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou = pos_iou_thr, neg_iou_thr, min_pos_iou

    def __call__(self, match_quality_matrix: torch.Tensor) -> torch.Tensor:
        """Args: match_quality_matrix: (G, P) IoUs. Returns: (P,) gt index, -1 (negative) or -2 (ignored)."""
        iou = match_quality_matrix
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
        best, best_gt = iou.max(0)
        matches = torch.full_like(best_gt, self.BETWEEN_THRESHOLDS)
        matches[(best >= 0) & (best < self.neg_iou_thr)] = self.BELOW_LOW_THRESHOLD
        pos = best >= self.pos_iou_thr
        matches[pos] = best_gt[pos]
        if self.allow_low_quality_matches and iou.shape[1]:
            gt_best = iou.max(1).values
            hit = (iou == gt_best[:, None]) & (gt_best[:, None] >= self.min_pos_iou)  # (G, P)
            last = iou.shape[0] - 1 - hit.flip(0).to(torch.uint8).argmax(0)  # the loop's last writer wins
            anyhit = hit.any(0)
            matches[anyhit] = last[anyhit]
        return matches


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
    """

    def __init__(
        self,
        *args: Any,
        box_loss: str = "l1",
        allowed_border: float = -1,
        size_divisible: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if box_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"RPN box_loss must be 'l1' or 'smooth_l1', got {box_loss!r}")
        self.box_loss = box_loss
        self.allowed_border = allowed_border
        self.size_divisible = size_divisible
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
        """Match only the valid anchors (as mmdet, so a gt's best anchor is its best valid one); the rest get -1."""
        labels, matched = [], []
        for a, t, size in zip(anchors, targets, self._image_sizes):
            valid = self.valid_anchors(a, size)
            sub_labels, sub_matched = super().assign_targets_to_anchors([a[valid]], [t])
            lab = a.new_full((len(a),), -1.0)
            lab[valid] = sub_labels[0].to(lab.dtype)
            boxes = a.clone()  # left-out anchors regress to themselves (never used: never sampled)
            boxes[valid] = sub_matched[0].to(boxes.dtype)
            labels.append(lab)
            matched.append(boxes)
        return labels, matched

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
    )
    rpn.proposal_matcher = MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3, match_low_quality=True)
    rpn.box_coder = DeltaXYWHCoder()
    # mmdet's min_bbox_size=0 drops only empty proposals (w or h <= 0); torchvision drops w or h < min_size (1e-3).
    rpn.min_size = torch.finfo(torch.float32).tiny
    return rpn


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


class LevelRoIAlign(nn.Module):
    """Multi-level RoIAlign with mmdet's level rule and ``aligned=True`` sampling.

    Args:
        featmap_names: Feature maps to pool from, finest first.
        output_size: Side of the pooled square (7 for boxes, 14 for masks).
        sampling_ratio: Samples per bin side; 0 means adaptive (mmdet's default).
        aligned: Half-pixel shift of the RoI corners (mmcv's default, ``True``).
        finest_scale: RoIs with sqrt(area) below ``2 * finest_scale`` go to the finest level.
        strides: Stride of each map; inferred from the map and image sizes (as torchvision does) if None.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int,
        sampling_ratio: int = 0,
        aligned: bool = True,
        finest_scale: float = 56.0,
        strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.finest_scale = finest_scale
        self.strides = list(strides) if strides is not None else None
        if self.strides is not None and len(self.strides) != len(self.featmap_names):
            raise ValueError(f"LevelRoIAlign: {len(self.strides)} strides for {len(self.featmap_names)} maps")

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """Args: boxes: (K, 4) xyxy. Returns: (K,) level index per box."""
        scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.featmap_names) - 1).long()

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Args:
            x: Feature maps by name, (N, C, H_l, W_l).
            boxes: Per image (K_i, 4) xyxy boxes in input-image pixels.
            image_shapes: Per image (H, W) before padding (used to infer each map's stride).

        Returns:
            (sum K_i, C, S, S) pooled features, in the order of the concatenated boxes.
        """
        feats = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        if rois.shape[0] == 0:
            return out
        max_h = max(s[0] for s in image_shapes)
        levels = self.levels(rois[:, 1:])
        for level, feat in enumerate(feats):
            if self.strides is not None:
                scale = 1.0 / self.strides[level]
            else:  # maps are at power-of-two strides of the padded batch: round the padding away
                scale = 2.0 ** round(math.log2(feat.shape[-2] / max_h))
            idx = torch.where(levels == level)[0]
            if idx.numel():
                pooled = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, self.aligned)
                out[idx] = pooled.to(out.dtype)
        return out


def build_roi_pool(
    featmap_names: Sequence[str], output_size: int, kind: str = "mmdet", strides: Sequence[int] | None = None
) -> nn.Module:
    """``'mmdet'``: :class:`LevelRoIAlign` (official numerics); ``'torchvision'``: ``MultiScaleRoIAlign``."""
    if kind == "mmdet":
        return LevelRoIAlign(featmap_names, output_size, strides=strides)
    if kind == "torchvision":
        return MultiScaleRoIAlign(list(featmap_names), output_size, sampling_ratio=2)
    raise ValueError(f"roi_align must be 'mmdet' or 'torchvision', got {kind!r}")


class PassThroughTransform(GeneralizedRCNNTransform):
    """Normalise (ImageNet mean/std; uint8 or [0, 1] float input) and pad-batch to a multiple of 32; never resize."""

    def __init__(
        self,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        size_divisible: int = 32,
    ) -> None:
        super().__init__(
            min_size=800, max_size=1333, image_mean=list(image_mean), image_std=list(image_std),
            size_divisible=size_divisible,
        )  # fmt: skip

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Args: image: (3, H, W) uint8 in [0, 255] or float in [0, 1]. Returns: the normalised float image."""
        if not image.is_floating_point():
            image = image.float().div_(255.0)
        return super().normalize(image)

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Map detections back to the original sizes as mmdet's ``rescale=True`` does.

        Boxes are divided by the resize factors (``new / original`` per axis); masks (RoI probabilities,
        (D, 1, M, M)) are pasted into the original image with :func:`paste_masks`.
        """
        if self.training:
            return result
        for pred, (h, w), (oh, ow) in zip(result, image_shapes, original_image_sizes):
            boxes = pred["boxes"]
            scale = boxes.new_tensor([w / ow, h / oh, w / ow, h / oh])
            pred["boxes"] = boxes / scale
            if "masks" in pred:
                pred["masks"] = paste_masks(pred["masks"], pred["boxes"], (oh, ow))
        return result


def detector_forward(
    model: nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]] | None = None,
    orig_sizes: list[tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
    """Two-stage forward over ``model.transform/backbone/rpn/roi_heads``.

    Args:
        images: (3, H_i, W_i) uint8 images (or float in [0, 1]), already resized by the data pipeline.
        targets: Training targets per image: ``boxes`` (K, 4) xyxy float, ``labels`` (K,) int64 in 1..num_classes,
            ``masks`` (K, H_i, W_i) uint8.
        orig_sizes: (H, W) to map predictions back to (the size before the pipeline's resize); default: input size.

    Returns:
        Training: a dict of scalar losses. Eval: per image ``boxes`` (D, 4), ``labels`` (D,), ``scores`` (D,),
        ``masks`` (D, 1, H, W) probabilities at ``orig_sizes``.
    """
    if model.training and targets is None:
        raise ValueError("targets are required in training mode")
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    batch, targets = model.transform(images, targets)
    features = model.backbone(batch.tensors)
    device_type = batch.tensors.device.type
    amp = torch.is_autocast_enabled(device_type)
    if amp:
        # Box decoding, losses and NMS in bf16/fp16 lose whole pixels on large images (mmdet's force_fp32 does the
        # same): under autocast only the backbone and FPN run in low precision.
        features = OrderedDict((k, v.float()) for k, v in features.items())
    with torch.autocast(device_type, enabled=False) if amp else contextlib.nullcontext():
        proposals, rpn_losses = model.rpn(batch, features, targets)
        detections, roi_losses = model.roi_heads(features, proposals, batch.image_sizes, targets)
    if model.training:
        return {**rpn_losses, **roi_losses}
    return model.transform.postprocess(detections, batch.image_sizes, orig_sizes or sizes)
