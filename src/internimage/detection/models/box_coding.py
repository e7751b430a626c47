"""mmdet 2.x box targets behind torchvision's ``_utils`` interfaces: how boxes become regression targets.

* :class:`DeltaXYWHCoder` (a torchvision ``BoxCoder``): ``encode_single(gt (R, 4), sources (R, 4)) -> (R, 4)``
  deltas and ``decode_single(deltas (R, 4K), sources (R, 4), max_shape) -> (R, 4K)`` xyxy boxes, with
  mmdet's ``DeltaXYWHBBoxCoder`` numerics (per-stage stds, dw/dh clamped both ways, decode clipped to the image).
* :class:`MaxIoUMatcher` (a torchvision ``Matcher``): ``(G, P)`` IoUs -> ``(P,)`` gt index, -1 (negative) or
  -2 (ignored), with mmdet's ``MaxIoUAssigner`` rules (``min_pos_iou``, low-quality matches: last gt wins), and
  its ``ignore_iof_thr``: candidates flagged by :func:`ignored_candidates` (mostly inside an ignore region) are
  taken out of the matching before it starts.
* :func:`box_iof`: mmdet's ``bbox_overlaps(mode='iof')``, intersection over the first boxes' area.

Used by the RPN (:mod:`.rpn`) and the RoI heads (:mod:`.roi_heads`, :mod:`.cascade_roi_heads`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.models.detection._utils import BoxCoder, Matcher

__all__ = ["DeltaXYWHCoder", "MaxIoUMatcher", "box_iof", "ignored_candidates"]

_WH_RATIO_CLIP = 16 / 1000  # mmdet's default: |dw|, |dh| <= log(1000 / 16)
_IOF_EPS = 1e-6  # mmdet's bbox_overlaps: the area divided by is at least eps


def box_iof(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Intersection over the area of ``boxes`` (mmdet's ``bbox_overlaps(boxes, regions, mode='iof')``).

    As mmdet, the area is not clamped at 0 but the divisor is at least 1e-6, so an empty box has IoF 0.

    Args:
        boxes: (N, 4) xyxy.
        regions: (M, 4) xyxy.

    Returns:
        (N, M) the share of each box lying inside each region.
    """
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return wh[..., 0] * wh[..., 1] / area.clamp(min=_IOF_EPS)[:, None]


def ignored_candidates(
    candidates: torch.Tensor, ignore_boxes: torch.Tensor | None, ignore_iof_thr: float
) -> torch.Tensor | None:
    """Candidates mmdet's ``MaxIoUAssigner`` takes out of the matching (``ignore_wrt_candidates=True``).

    A candidate is ignored when its largest IoF with an ignore region exceeds ``ignore_iof_thr`` (strictly). As
    mmdet, nothing is ignored when the threshold is not positive, there are no ignore regions or no candidates.

    Args:
        candidates: (P, 4) xyxy anchors or proposals.
        ignore_boxes: (M, 4) xyxy ignore regions (``target["ignore_boxes"]``), or None.
        ignore_iof_thr: mmdet's ``ignore_iof_thr``; -1 (the default of every official config) switches it off.

    Returns:
        (P,) bool, or None when nothing can be ignored (the caller then runs exactly as without ignore regions).
    """
    if ignore_iof_thr <= 0 or ignore_boxes is None or ignore_boxes.numel() == 0 or candidates.numel() == 0:
        return None
    regions = ignore_boxes.to(device=candidates.device, dtype=candidates.dtype).reshape(-1, 4)
    return box_iof(candidates, regions).max(1).values > ignore_iof_thr


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


class MaxIoUMatcher(Matcher):
    """mmdet's ``MaxIoUAssigner`` (``gt_max_assign_all=True``) behind torchvision's ``Matcher`` interface.

    A prediction is negative (-1) if its best IoU is below ``neg_iou_thr``, positive (its best gt) from
    ``pos_iou_thr``, ignored (-2) in between. With ``match_low_quality``, every prediction whose IoU with gt i equals
    that gt's best IoU (if at least ``min_pos_iou``) is given to gt i, later gts overriding earlier ones
    (torchvision instead keeps each such prediction's own best gt and has no ``min_pos_iou``).

    ``ignore`` (mmdet's ``gt_bboxes_ignore`` with ``ignore_iof_thr``, see :func:`ignored_candidates`) sets the IoUs of
    the flagged predictions to -1 before any rule runs, as mmdet's ``assign`` does: their best IoU (-1) is below 0,
    so they are neither negative nor positive (-2), and no gt's best IoU (>= ``min_pos_iou`` >= 0) can equal -1,
    so low-quality matching cannot pick them either; each gt's low-quality match is its best prediction outside the
    ignore regions. Without gts every prediction stays negative, ignore regions or not (mmdet returns early).
    """

    def __init__(
        self, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float = 0.0, match_low_quality: bool = True
    ) -> None:
        super().__init__(pos_iou_thr, min(neg_iou_thr, pos_iou_thr), allow_low_quality_matches=match_low_quality)
        self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou = pos_iou_thr, neg_iou_thr, min_pos_iou

    def __call__(self, match_quality_matrix: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            match_quality_matrix: (G, P) IoUs.
            ignore: (P,) bool predictions to take out of the matching (:func:`ignored_candidates`), or None.

        Returns:
            (P,) gt index, -1 (negative) or -2 (ignored).
        """
        iou = match_quality_matrix
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
        if ignore is not None:
            iou = iou.masked_fill(ignore[None, :], -1.0)  # mmdet: overlaps[:, ignored] = -1, before every step
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
