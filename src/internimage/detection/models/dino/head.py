"""DINO head: class/box branches, label embedding for denoising, losses and test-time decoding.

As the official ``DINOHead`` (``detection/mmdet_custom/models/dense_heads/dino_head.py``) on its
``DeformableDETRHead``/``DETRHead``: ``dec_layers + 1`` independent class branches (Linear) and box branches
(Linear-ReLU-Linear-ReLU-Linear), the last pair scoring the encoder proposals; the box of layer l is
``sigmoid(reg_branches[l](hs[l]) + inverse_sigmoid(reference[l], 1e-3))`` where ``reference[l]`` is the refined,
undetached box of layer l - 1 (look forward twice). Losses: the encoder top-k (``interm_*``, multi-class), every
decoder layer's matching queries (``loss_*``, ``d{i}.loss_*``) and denoising queries (``dn_loss_*``,
``d{i}.dn_loss_*``). Test: sigmoid scores, top ``max_per_img`` over queries x classes, no NMS.

Federated loss (optional, ``fed_loss_num_classes > 0``; Detectron2 / Detic style): per batch, the GT classes plus
classes drawn by ``image_count ** fed_loss_freq_weight_power`` up to ``fed_loss_num_classes``; every focal loss
(encoder top-k, decoder layers, denoising) then sums only those classes' columns, with the normaliser unchanged.
The matching costs still use all classes. The LVIS configs ask for it (``train_cfg.fed_loss_cfg``) but the released
heads never read that field (``DETRHead.get_fed_loss_classes`` is defined and never called), so it is off unless set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .denoising import CdnQueryGenerator, DenoisingMeta
from .matching import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_iou,
    hungarian_assign,
    inverse_sigmoid,
    match_cost,
    sample_fed_loss_classes,
    sigmoid_focal_loss,
)
from .transformer import DinoTransformer, sine_positional_encoding

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """Transformer + prediction branches + set losses.

    Args:
        num_classes: K (80 for COCO).
        dim: Transformer width (256).
        num_queries: Matching queries (900).
        enc_layers, dec_layers: Transformer layers (6, 6).
        heads, levels, points, hidden: Attention heads, levels, deformable points, FFN width (8, 4, 4, 2048).
        num_dn_queries: Denoising queries budget of the dynamic groups (100; 1000 for H and CB-H).
        label_noise, box_noise: Denoising noise scales (0.5, 1.0).
        max_per_img: Detections kept per image at test (100; 300 in the L/H/CB-H configs).
        cost_weights: Focal, L1, GIoU matching cost weights (2, 5, 2).
        loss_weights: Focal, L1, GIoU loss weights (1, 5, 2).
        fed_loss_num_classes: Classes kept by the federated loss (50 for LVIS); 0 disables it. When enabled, give
            the per-class training image counts with :meth:`set_class_frequencies` before the first loss.
        fed_loss_freq_weight_power: Exponent of the image counts in the sampling weights (0.5).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int = 256,
        num_queries: int = 900,
        enc_layers: int = 6,
        dec_layers: int = 6,
        heads: int = 8,
        levels: int = 4,
        points: int = 4,
        hidden: int = 2048,
        num_dn_queries: int = 100,
        label_noise: float = 0.5,
        box_noise: float = 1.0,
        max_per_img: int = 100,
        cost_weights: Sequence[float] = (2.0, 5.0, 2.0),
        loss_weights: Sequence[float] = (1.0, 5.0, 2.0),
        fed_loss_num_classes: int = 0,
        fed_loss_freq_weight_power: float = 0.5,
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"DINOHead: dim must be even (sine encoding), got {dim}")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.max_per_img = max_per_img
        self.cost_weights = tuple(cost_weights)
        self.loss_weights = tuple(loss_weights)
        self.fed_loss_num_classes = int(fed_loss_num_classes)
        self.fed_loss_freq_weight_power = float(fed_loss_freq_weight_power)
        # (K,) federated-loss sampling weights. Not persistent: released checkpoints have no such entry (they load
        # strictly) and the weights come from the training set, so the task sets them on every run.
        self.register_buffer("fed_loss_weight", torch.zeros(num_classes), persistent=False)
        self._fed_weight_set = False
        self.transformer = DinoTransformer(dim, heads, levels, points, enc_layers, dec_layers, hidden, num_queries)
        self.cls_branches = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(dec_layers + 1))
        self.reg_branches = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 4))
            for _ in range(dec_layers + 1)
        )
        self.label_embedding = nn.Embedding(num_classes, dim)
        self.dn_generator = CdnQueryGenerator(num_classes, num_queries, label_noise, box_noise, num_dn_queries)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DeformableDETRHead.init_weights (two-stage): focal prior 0.01 on the class biases, zero last box layers.
        bias = -math.log((1 - 0.01) / 0.01)
        for m in self.cls_branches:
            nn.init.constant_(m.bias, bias)
        for m in self.reg_branches:
            nn.init.zeros_(m[-1].weight)
            nn.init.zeros_(m[-1].bias)

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        feats: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor] | None = None,
        dn_label_query: torch.Tensor | None = None,
        dn_box_query: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        query_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            feats: L neck maps (N, C, H_l, W_l). masks: (N, H_l, W_l) padding masks, or None (nothing padded).
            query_index: (N, Q) encoder tokens to select instead of the top-Q (see ``DinoTransformer.forward``).

        Returns:
            ``(class logits (layers, N, pad + Q, K), boxes (layers, N, pad + Q, 4) normalised cx cy w h,
            encoder top-k logits (N, Q, K), encoder top-k boxes (N, Q, 4))``.
        """
        if masks is None:
            ref = feats[0]
            pos = [
                sine_positional_encoding(ref.new_zeros((f.shape[0], *f.shape[-2:]), dtype=torch.bool), self.dim // 2)
                for f in feats
            ]
        else:
            pos = [sine_positional_encoding(m, self.dim // 2) for m in masks]
        pos = [p.to(feats[0].dtype) for p in pos]
        branches = (self.cls_branches, self.reg_branches)
        hs, refs, topk_score, topk_anchor, topk = self.transformer(
            feats, masks, pos, *branches, dn_label_query, dn_box_query, attn_mask, query_index
        )
        classes, boxes = [], []
        for lvl in range(hs.shape[0]):
            classes.append(self.cls_branches[lvl](hs[lvl]))
            boxes.append((self.reg_branches[lvl](hs[lvl]) + inverse_sigmoid(refs[lvl], eps=1e-3)).sigmoid())
        return torch.stack(classes), torch.stack(boxes), topk_score, topk_anchor, topk

    @property
    def dim(self) -> int:
        return self.transformer.dim

    # ------------------------------------------------------------------------------------------------ federated loss
    def set_class_frequencies(self, image_counts: Sequence[int] | torch.Tensor) -> None:
        """Federated-loss sampling weights ``image_counts ** fed_loss_freq_weight_power``.

        Args:
            image_counts: (K,) training images per class (LVIS ``image_count``; label l at index l - 1).
        """
        counts = torch.as_tensor(image_counts, dtype=torch.float64).reshape(-1)
        if counts.shape[0] != self.num_classes or (counts < 0).any():
            raise ValueError(f"DINOHead: need {self.num_classes} non-negative image counts, got {tuple(counts.shape)}")
        # In place: the buffer may already live on the device (or inside a DDP / FSDP wrapper).
        self.fed_loss_weight.copy_(counts.pow(self.fed_loss_freq_weight_power).to(self.fed_loss_weight.dtype))
        self._fed_weight_set = True

    def sample_fed_classes(
        self, gt_labels: Sequence[torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """The federated loss's classes for a batch (see :func:`sample_fed_loss_classes`), or None when disabled.

        Args:
            gt_labels: Per image (G_i,) classes in 0..K-1.
            generator: CPU random generator of the draw (None: the global RNG).

        Returns:
            (F,) sorted class indices, or None.
        """
        if self.fed_loss_num_classes <= 0:
            return None
        if not self._fed_weight_set:
            raise RuntimeError("DINOHead: fed_loss_num_classes > 0 needs set_class_frequencies(image_counts) first")
        device = self.fed_loss_weight.device
        flat = [t.reshape(-1).long() for t in gt_labels]
        labels = torch.cat(flat).to(device) if flat else torch.zeros(0, dtype=torch.long, device=device)
        return sample_fed_loss_classes(labels, self.fed_loss_weight, self.fed_loss_num_classes, generator)

    # ------------------------------------------------------------------------------------------------ losses
    def loss(
        self,
        feats: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor] | None,
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        generator: torch.Generator | None = None,
        fed_classes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training losses of one batch.

        Args:
            feats, masks: As :meth:`forward`.
            gt_boxes: Per image (G_i, 4) xyxy pixel boxes. gt_labels: (G_i,) classes in 0..K-1.
            image_sizes: (h, w) of every unpadded image.
            generator: Random generator of the denoising noise.
            fed_classes: (F,) federated-loss classes (:meth:`sample_fed_classes`); None: drawn here when the
                federated loss is enabled (with the global RNG), all classes otherwise.

        Returns:
            The official loss dict (``interm_loss_*``, ``loss_*``, ``d{i}.loss_*``, ``dn_loss_*``, ``d{i}.dn_loss_*``).
        """
        norm_boxes = []
        for b, (h, w) in zip(gt_boxes, image_sizes):
            norm_boxes.append(box_xyxy_to_cxcywh(b) / b.new_tensor([w, h, w, h]))
        dn_label, dn_box, attn_mask, meta = self.dn_generator(norm_boxes, gt_labels, self.label_embedding, generator)
        classes, boxes, enc_scores, enc_boxes, _ = self(feats, masks, dn_label, dn_box, attn_mask)
        if fed_classes is None:
            fed_classes = self.sample_fed_classes(gt_labels)
        return self.losses(classes, boxes, enc_scores, enc_boxes, gt_boxes, gt_labels, image_sizes, meta, fed_classes)

    def losses(
        self,
        classes,
        boxes,
        enc_scores,
        enc_boxes,
        gt_boxes,
        gt_labels,
        image_sizes,
        meta: DenoisingMeta,
        fed_classes: torch.Tensor | None = None,
    ):
        """Loss dict from the head outputs (see :meth:`loss`); ``classes``/``boxes`` include the denoising part.

        ``fed_classes`` (F,): the federated loss's classes, shared by every classification term (encoder, decoder
        layers, denoising) so they all see the same negatives; None: all classes.
        """
        pad = meta.pad_size
        out: dict[str, torch.Tensor] = {}
        fed = fed_classes
        enc = self.matched_loss(enc_scores, enc_boxes, gt_boxes, gt_labels, image_sizes, fed)
        for key, value in zip(("cls", "bbox", "iou"), enc):
            out[f"interm_loss_{key}"] = value
        layers = classes.shape[0]
        for lvl in range(layers):
            prefix = "" if lvl == layers - 1 else f"d{lvl}."
            values = self.matched_loss(
                classes[lvl, :, pad:], boxes[lvl, :, pad:], gt_boxes, gt_labels, image_sizes, fed
            )
            for key, value in zip(("cls", "bbox", "iou"), values):
                out[f"{prefix}loss_{key}"] = value
        for lvl in range(layers):
            prefix = "" if lvl == layers - 1 else f"d{lvl}."
            values = self.denoising_loss(
                classes[lvl, :, :pad], boxes[lvl, :, :pad], gt_boxes, gt_labels, image_sizes, meta, fed
            )
            for key, value in zip(("cls", "bbox", "iou"), values):
                out[f"{prefix}dn_loss_{key}"] = value
        return out

    def _box_losses(self, pred, target, sizes, num_pos):
        """L1 on normalised cxcywh and GIoU on pixel xyxy of matched pairs (pred, target (M, 4); sizes (M, 2))."""
        wl1, wgiou = self.loss_weights[1], self.loss_weights[2]
        if pred.shape[0] == 0:
            zero = pred.sum() * 0.0
            return zero, zero
        factor = torch.stack((sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]), -1).to(pred.dtype)
        l1 = (pred - target).abs().sum() / num_pos
        giou = generalized_iou(box_cxcywh_to_xyxy(pred) * factor, box_cxcywh_to_xyxy(target) * factor, pairwise=False)
        return wl1 * l1, wgiou * (1 - giou).sum() / num_pos

    def matched_loss(self, classes, boxes, gt_boxes, gt_labels, image_sizes, fed_classes=None):
        """``loss_single``: Hungarian matching per image, then focal / L1 / GIoU losses.

        Args:
            classes: (N, Q, K). boxes: (N, Q, 4) normalised cxcywh.
            fed_classes: (F,) classes the focal loss sums over (federated loss); None: all.

        Returns:
            ``(loss_cls, loss_bbox, loss_iou)``.
        """
        labels = torch.full(classes.shape[:2], self.num_classes, dtype=torch.long, device=classes.device)
        preds, targets, sizes = [], [], []
        for b, (gtb, gtl, (h, w)) in enumerate(zip(gt_boxes, gt_labels, image_sizes)):
            if len(gtb) == 0:
                continue
            with torch.no_grad():
                cost = match_cost(classes[b].float(), boxes[b].float(), gtl, gtb.float(), (h, w), self.cost_weights)
            qi, gi = hungarian_assign(cost)
            labels[b, qi] = gtl[gi]
            preds.append(boxes[b, qi])
            targets.append(box_xyxy_to_cxcywh(gtb[gi] / gtb.new_tensor([w, h, w, h])).to(boxes.dtype))
            sizes.append(boxes.new_tensor([h, w]).expand(len(qi), 2))
        num_pos = max(sum(len(p) for p in preds), 1)
        loss_cls = self.loss_weights[0] * sigmoid_focal_loss(
            classes.flatten(0, 1).float(), labels.flatten(), num_pos, classes=fed_classes
        )
        if preds:
            l1, giou = self._box_losses(torch.cat(preds).float(), torch.cat(targets).float(), torch.cat(sizes), num_pos)
        else:
            l1 = giou = boxes.sum() * 0.0
        return loss_cls, l1, giou

    def denoising_loss(self, classes, boxes, gt_boxes, gt_labels, image_sizes, meta: DenoisingMeta, fed_classes=None):
        """``loss_dn_single``: positives of every group regress and classify their box; negatives are background.

        Args:
            classes: (N, pad, K). boxes: (N, pad, 4).
            fed_classes: (F,) classes the focal loss sums over (federated loss); None: all.

        Returns:
            ``(dn_loss_cls, dn_loss_bbox, dn_loss_iou)``.
        """
        sp, groups = meta.single_pad, meta.num_groups
        labels = torch.full(classes.shape[:2], self.num_classes, dtype=torch.long, device=classes.device)
        preds, targets, sizes = [], [], []
        for b, (gtb, gtl, (h, w)) in enumerate(zip(gt_boxes, gt_labels, image_sizes)):
            g = len(gtl)
            if g == 0:
                continue
            pos = (
                torch.arange(groups, device=classes.device)[:, None] * 2 * sp + torch.arange(g, device=classes.device)
            ).flatten()
            idx = torch.arange(g, device=classes.device).repeat(groups)
            labels[b, pos] = gtl[idx]
            preds.append(boxes[b, pos])
            targets.append(box_xyxy_to_cxcywh(gtb / gtb.new_tensor([w, h, w, h]))[idx].to(boxes.dtype))
            sizes.append(boxes.new_tensor([h, w]).expand(len(pos), 2))
        num_pos = max(sum(len(p) for p in preds), 1)
        if classes.shape[1] == 0:
            zero = classes.sum() * 0.0
            return zero, zero, zero
        loss_cls = self.loss_weights[0] * sigmoid_focal_loss(
            classes.flatten(0, 1).float(), labels.flatten(), num_pos, classes=fed_classes
        )
        if preds:
            l1, giou = self._box_losses(torch.cat(preds).float(), torch.cat(targets).float(), torch.cat(sizes), num_pos)
        else:
            l1 = giou = boxes.sum() * 0.0
        return loss_cls, l1, giou

    # ------------------------------------------------------------------------------------------------ test
    def decode(
        self, classes: torch.Tensor, boxes: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top ``max_per_img`` (query, class) pairs of the last layer (``_get_bboxes_single``).

        Args:
            classes: (N, Q, K) logits. boxes: (N, Q, 4) normalised cxcywh. image_sizes: (N, 2) (h, w) float.

        Returns:
            ``(scores (N, D), labels (N, D) in 0..K-1, boxes (N, D, 4) xyxy pixels clipped to the image)``.
        """
        n, q, k = classes.shape
        scores, idx = classes.sigmoid().flatten(1).topk(min(self.max_per_img, q * k), dim=1)
        labels = idx % k
        picked = torch.gather(boxes, 1, torch.div(idx, k, rounding_mode="floor")[..., None].expand(-1, -1, 4))
        h, w = image_sizes[:, 0].view(n, 1), image_sizes[:, 1].view(n, 1)
        xyxy = box_cxcywh_to_xyxy(picked)
        x0 = torch.minimum(torch.clamp(xyxy[..., 0] * w, min=0), w)
        y0 = torch.minimum(torch.clamp(xyxy[..., 1] * h, min=0), h)
        x1 = torch.minimum(torch.clamp(xyxy[..., 2] * w, min=0), w)
        y1 = torch.minimum(torch.clamp(xyxy[..., 3] * h, min=0), h)
        return scores, labels, torch.stack((x0, y0, x1, y1), -1)
