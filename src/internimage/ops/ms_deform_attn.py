"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021).

One operator serves every transformer in the package: the Mask2Former pixel decoder and the DINO encoder/decoder.
The backend is pure PyTorch: every level is sampled with ``grid_sample`` (bilinear, zero padding,
``align_corners=False``), which is what mmcv's ``multi_scale_deformable_attn_pytorch`` computes and what its CUDA
kernel computes too. It runs on CPU and GPU, has autograd, and exports to standard ONNX ops (``GridSample``).

The module keeps mmcv 1.x ``MultiScaleDeformableAttention``'s parameter names (``sampling_offsets``,
``attention_weights``, ``value_proj``, ``output_proj``) and initialisation, so official checkpoints load into it
key for key. Unlike mmcv's module it returns the attention output only: callers add the residual.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiScaleDeformableAttention", "ms_deform_attn"]


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples of every level at the given locations.

    Args:
        value: (N, S, M, D) per-head values of all levels flattened, ``S = sum(h * w)``, levels in the order of
            ``spatial_shapes``.
        spatial_shapes: (h, w) of each level.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1] (0 and 1 are the outer pixel edges;
            samples outside read zeros).
        attention_weights: (N, Lq, M, L, P) weights (softmaxed over L * P by the caller).

    Returns:
        (N, Lq, M * D).
    """
    n, s, m, d = value.shape
    _, lq, m2, levels, points, _ = sampling_locations.shape
    if m2 != m or levels != len(spatial_shapes):
        raise ValueError(
            f"ms_deform_attn: locations have {m2} heads and {levels} levels, value has {m} heads and "
            f"{len(spatial_shapes)} shapes"
        )
    if s != sum(h * w for h, w in spatial_shapes):
        raise ValueError(f"ms_deform_attn: value has {s} tokens, shapes {list(spatial_shapes)} give another count")
    grids = 2 * sampling_locations - 1
    out = value.new_zeros(n * m, d, lq)
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        start += h * w
        grid = grids[:, :, :, level].transpose(1, 2).reshape(n * m, lq, points, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (NM,D,Lq,P)
        weight = attention_weights[:, :, :, level].transpose(1, 2).reshape(n * m, 1, lq, points)
        out = out + (sampled * weight).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over several feature levels, named and initialised like mmcv's module.

    Args:
        dim: Embedding width (``embed_dims``).
        heads: Attention heads.
        levels: Feature levels attended.
        points: Sampling points per head and level.
    """

    def __init__(self, dim: int = 256, heads: int = 8, levels: int = 4, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MultiScaleDeformableAttention: dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start at zero weight with a bias fanning each head out in its own direction, k steps for point k
        # (mmcv ``MultiScaleDeformableAttention.init_weights``).
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            query: (N, Lq, C) queries, positional encoding already added.
            reference_points: (N, Lq, 2) points (x, y) in [0, 1] shared by all levels, (N, Lq, L, 2) per level, or
                (N, Lq, L, 4) boxes (cx, cy, w, h): offsets are then in units of half the box size / points.
            value: (N, S, C) flattened maps of all levels, in the order of ``spatial_shapes``.
            spatial_shapes: (h, w) per level.
            key_padding_mask: (N, S) True where ``value`` is padding (its values are zeroed).

        Returns:
            (N, Lq, C), before any residual.
        """
        n, lq, c = query.shape
        h, lv, p = self.heads, self.levels, self.points
        if len(spatial_shapes) != lv:
            raise ValueError(f"MultiScaleDeformableAttention: {len(spatial_shapes)} levels given, built for {lv}")
        v = self.value_proj(value)
        if key_padding_mask is not None:
            v = v.masked_fill(key_padding_mask[..., None], 0.0)
        v = v.view(n, -1, h, c // h)
        offsets = self.sampling_offsets(query).view(n, lq, h, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, h, lv * p).softmax(-1).view(n, lq, h, lv, p)
        if reference_points.dim() == 3:
            reference_points = reference_points[:, :, None].expand(-1, -1, lv, -1)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (w, h).
            # Built from tensor arithmetic, not torch.tensor(), so symbolic sizes stay symbolic under torch.export.
            one = query.new_ones(())
            norm = torch.stack([torch.stack((one * w, one * hh)) for hh, w in spatial_shapes])
            loc = reference_points[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            ref = reference_points[:, :, None, :, None]
            loc = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got shape {tuple(reference_points.shape)}")
        return self.output_proj(ms_deform_attn(v, spatial_shapes, loc, weights))
