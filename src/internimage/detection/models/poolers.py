"""RoI feature pooling from the FPN maps.

A pooler is called as torchvision's ``MultiScaleRoIAlign``: ``(maps by name, per image (K_i, 4) xyxy boxes, per
image (H, W)) -> (sum K_i, C, S, S)``. :class:`LevelRoIAlign` has mmdet's ``SingleRoIExtractor`` semantics
(RoIAlign ``aligned=True``, adaptive sampling, level = floor(log2(sqrt(area) / 56)) clamped to the levels), so
official weights see the features they were trained on. torchvision's ``MultiScaleRoIAlign`` maps RoIs to the same
levels but samples with ``aligned=False`` and ``sampling_ratio=2``; :func:`build_roi_pool` gives either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, roi_align

__all__ = ["LevelRoIAlign", "build_roi_pool"]


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
