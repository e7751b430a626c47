"""Box utilities, the Hungarian assignment and the losses of DINO (mmdet 2.x numerics).

* Costs (``HungarianAssigner`` with ``FocalLossCost(2.0)``, ``BBoxL1Cost(5.0, box_format='xywh')``,
  ``IoUCost('giou', 2.0)``): focal cost ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` at the
  target class (eps 1e-12), L1 distance between normalised (cx, cy, w, h) boxes, and ``-GIoU`` in pixels.
* Losses: sigmoid focal loss (gamma 2, alpha 0.25) averaged over the number of matched queries, L1 (weight 5) on
  normalised (cx, cy, w, h) and GIoU (weight 2) on pixel boxes of the matched queries, both averaged over the number
  of matched queries (clamped at 1), as ``DETRHead.loss_single`` computes them.

The assignment uses ``scipy.optimize.linear_sum_assignment`` (imported lazily), as mmdet does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "generalized_iou",
    "hungarian_assign",
    "inverse_sigmoid",
    "match_cost",
    "sample_fed_loss_classes",
    "sigmoid_focal_loss",
]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with both terms clamped at ``eps`` (mmdet ``inverse_sigmoid``)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre/size -> corners."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1)


def box_xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) corners -> centre/size."""
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), -1)


def generalized_iou(a: torch.Tensor, b: torch.Tensor, pairwise: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GIoU of xyxy boxes, mmdet ``bbox_overlaps(mode='giou')`` (union and hull clamped at ``eps``).

    Args:
        a: (M, 4). b: (K, 4) (or (M, 4) when ``pairwise`` is False).

    Returns:
        (M, K) when ``pairwise``, else (M,) for aligned pairs.
    """
    if pairwise:
        a, b = a[:, None], b[None]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (area_a + area_b - inter).clamp(min=eps)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    hull = hull.clamp(min=eps)
    iou = inter / union
    return iou - (hull - union) / hull


def match_cost(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    image_size: tuple[int, int],
    weights: Sequence[float] = (2.0, 5.0, 2.0),
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Matching cost of every query against every ground-truth box of one image.

    Args:
        logits: (Q, K) class logits.
        boxes: (Q, 4) predicted (cx, cy, w, h) normalised to the image size.
        gt_labels: (G,) classes in 0..K-1.
        gt_boxes: (G, 4) xyxy pixel boxes.
        image_size: (h, w) of the unpadded image.
        weights: Focal, L1 and GIoU cost weights.

    Returns:
        (Q, G) cost.
    """
    h, w = image_size
    factor = boxes.new_tensor([w, h, w, h])
    p = logits.sigmoid()
    eps = 1e-12
    neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
    pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
    cost_cls = pos[:, gt_labels] - neg[:, gt_labels]
    cost_l1 = torch.cdist(boxes, box_xyxy_to_cxcywh(gt_boxes / factor), p=1)
    cost_giou = -generalized_iou(box_cxcywh_to_xyxy(boxes) * factor, gt_boxes)
    return weights[0] * cost_cls + weights[1] * cost_l1 + weights[2] * cost_giou


@torch.no_grad()
def hungarian_assign(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment (``scipy.optimize.linear_sum_assignment``).

    Args:
        cost: (Q, G).

    Returns:
        ``(query indices, gt indices)``, each (min(Q, G),), sorted by query.
    """
    from scipy.optimize import linear_sum_assignment

    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty
    if not torch.isfinite(cost).all():
        raise ValueError("hungarian_assign: the cost matrix holds NaN or inf (non-finite predictions?)")
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(rows, device=cost.device), torch.as_tensor(cols, device=cost.device)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    avg_factor: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
    classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """mmdet ``FocalLoss(use_sigmoid=True)`` summed and divided by ``avg_factor``.

    Args:
        logits: (M, K).
        labels: (M,) classes in 0..K-1, or K for background (all-zero target).
        avg_factor: Normaliser (unchanged by ``classes``).
        classes: (F,) distinct class indices: sum only their columns (the federated loss); None: all K.
    """
    k = logits.shape[-1]
    target = F.one_hot(labels, k + 1)[:, :k].to(logits.dtype)
    if classes is not None:
        # Selecting the columns (rather than multiplying by a 0/1 mask) leaves the other classes out of the graph,
        # so their logits get exactly zero gradient.
        logits, target = logits[:, classes], target[:, classes]
    p = logits.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    return loss.sum() / avg_factor


def sample_fed_loss_classes(
    gt_labels: torch.Tensor, weight: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Classes of a federated loss (Detectron2's / Detic's ``get_fed_loss_classes``): GT classes + sampled negatives.

    Every class present in ``gt_labels`` is kept; when fewer than ``num_classes``, the rest are drawn without
    replacement with probability proportional to ``weight`` (``image_count ** freq_weight_power``), GT classes
    excluded. Sampling runs on the CPU (``generator`` must be a CPU generator, or None for the global RNG).

    Args:
        gt_labels: (G,) ground-truth classes of the whole batch in 0..K-1; the background index K is ignored.
        weight: (K,) non-negative sampling weights; zero-weight classes are never drawn.
        num_classes: Classes to keep (50 in the LVIS configs).
        generator: Random generator of the draw.

    Returns:
        (F,) int64 sorted distinct class indices on ``gt_labels``' device, F = max(#GT classes, min(num_classes,
        #GT classes + #drawable classes)).
    """
    k = weight.shape[0]
    gt = torch.unique(gt_labels.detach().cpu().long())
    gt = gt[(gt >= 0) & (gt < k)]
    need = num_classes - len(gt)
    picked = gt
    if need > 0:
        prob = weight.detach().cpu().double().clone()
        prob[gt] = 0
        need = min(need, int((prob > 0).sum()))
        if need > 0:
            drawn = torch.multinomial(prob, need, replacement=False, generator=generator)
            picked = torch.cat((gt, drawn))
    return picked.sort().values.to(gt_labels.device)
