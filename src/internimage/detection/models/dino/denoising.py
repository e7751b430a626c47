"""Contrastive denoising queries (DINO, Zhang et al. 2022), as the official ``CdnQueryGenerator``
(``detection/mmdet_custom/models/utils/query_denoising.py``) builds them.

Each image's G ground-truth boxes are repeated in ``num_groups`` groups; each group holds a positive copy and a
negative copy of every box, padded to ``single_pad = max_i G_i`` boxes per copy, so the denoising part has
``pad_size = 2 * single_pad * num_groups`` queries in front of the matching queries. With dynamic groups,
``num_groups = max(num_dn_queries // single_pad, 1)`` (1 when there are no boxes).

* Labels: each copy's label is replaced by a random class with probability ``label_noise / 2``; the query content
  is ``label_embedding(label)``.
* Boxes (normalised cx, cy, w, h): each corner moves by ``sign * r * (w/2, h/2) * box_noise`` with a random sign,
  ``r ~ U[0, 1)`` for positives and ``U[1, 2)`` for negatives, clamped to [0, 1]; the reference is
  ``inverse_sigmoid(box, eps=1e-3)``.
* Attention mask (True = blocked): matching queries cannot see the denoising queries, and each group sees only
  itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .matching import inverse_sigmoid

__all__ = ["CdnQueryGenerator", "DenoisingMeta"]


@dataclass
class DenoisingMeta:
    """Layout of the denoising queries: ``pad_size`` of them, in ``num_groups`` groups (positive then negative)."""

    pad_size: int
    num_groups: int

    @property
    def single_pad(self) -> int:
        """Boxes per copy (the largest box count of the batch)."""
        return self.pad_size // (2 * self.num_groups)


class CdnQueryGenerator:
    """Builds the noised label/box queries and the self-attention mask of one training batch.

    Args:
        num_classes: K.
        num_queries: Matching queries (900).
        label_noise: ``noise_scale['label']`` (0.5).
        box_noise: ``noise_scale['box']`` (1.0).
        num_dn_queries: ``group_cfg['num_dn_queries']`` of the dynamic groups (100; 1000 for H/CB-H).
    """

    def __init__(
        self,
        num_classes: int,
        num_queries: int,
        label_noise: float = 0.5,
        box_noise: float = 1.0,
        num_dn_queries: int = 100,
    ) -> None:
        if num_dn_queries < 1:
            raise ValueError(f"CdnQueryGenerator: num_dn_queries must be >= 1, got {num_dn_queries}")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.label_noise = label_noise
        self.box_noise = box_noise
        self.num_dn_queries = num_dn_queries

    def num_groups(self, single_pad: int) -> int:
        """Dynamic group count for ``single_pad`` boxes per copy."""
        return max(self.num_dn_queries // single_pad, 1) if single_pad else 1

    def __call__(
        self,
        boxes: list[torch.Tensor],
        labels: list[torch.Tensor],
        label_embedding: nn.Embedding,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DenoisingMeta]:
        """Args:
            boxes: Per image (G_i, 4) normalised (cx, cy, w, h) boxes.
            labels: Per image (G_i,) classes in 0..K-1.
            label_embedding: The head's (K, C) label embedding.
            generator: Random generator (default: the global one).

        Returns:
            ``(label queries (N, pad, C), box references (N, pad, 4) before sigmoid, attention mask
            (pad + Q, pad + Q) bool, meta)``.
        """
        device = label_embedding.weight.device
        counts = [len(b) for b in boxes]
        single_pad = max(counts, default=0)
        groups = self.num_groups(single_pad)
        pad_size = 2 * single_pad * groups
        n, dim = len(boxes), label_embedding.embedding_dim
        all_boxes = torch.cat(boxes).to(device)
        all_labels = torch.cat(labels).to(device)
        total = len(all_boxes)
        # Copy c (0..2*groups-1) of every box: even copies are positives, odd copies negatives.
        known_labels = all_labels.repeat(2 * groups)
        known_boxes = all_boxes.repeat(2 * groups, 1)
        if self.label_noise > 0:
            p = torch.rand(known_labels.shape, generator=generator, device=device)
            chosen = p < self.label_noise * 0.5
            random_labels = torch.randint(0, self.num_classes, known_labels.shape, generator=generator, device=device)
            known_labels = torch.where(chosen, random_labels, known_labels)
        if self.box_noise > 0:
            corners = torch.cat(
                (known_boxes[:, :2] - known_boxes[:, 2:] / 2, known_boxes[:, :2] + known_boxes[:, 2:] / 2), 1
            )
            half = known_boxes[:, 2:].repeat(1, 2) / 2
            sign = torch.randint(0, 2, known_boxes.shape, generator=generator, device=device).to(known_boxes.dtype)
            sign = sign * 2 - 1
            part = torch.rand(known_boxes.shape, generator=generator, device=device, dtype=known_boxes.dtype)
            negative = (torch.arange(len(known_boxes), device=device) // max(total, 1)) % 2 == 1
            part = part + negative[:, None].to(part.dtype)
            corners = (corners + part * sign * half * self.box_noise).clamp(0.0, 1.0)
            known_boxes = torch.cat(((corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]), 1)
        label_query = torch.zeros(n, pad_size, dim, device=device, dtype=label_embedding.weight.dtype)
        box_query = torch.zeros(n, pad_size, 4, device=device, dtype=known_boxes.dtype)
        if total:
            image = torch.cat([torch.full((c,), i, device=device) for i, c in enumerate(counts)]).repeat(2 * groups)
            within = torch.cat([torch.arange(c, device=device) for c in counts])
            slot = torch.cat([within + single_pad * c for c in range(2 * groups)])
            label_query[image, slot] = label_embedding(known_labels)
            box_query[image, slot] = inverse_sigmoid(known_boxes, eps=1e-3)
        size = pad_size + self.num_queries
        mask = torch.zeros(size, size, dtype=torch.bool, device=device)
        mask[pad_size:, :pad_size] = True
        block = 2 * single_pad
        for g in range(groups):
            mask[g * block : (g + 1) * block, : g * block] = True
            mask[g * block : (g + 1) * block, (g + 1) * block : pad_size] = True
        return label_query, box_query, mask, DenoisingMeta(pad_size, groups)
