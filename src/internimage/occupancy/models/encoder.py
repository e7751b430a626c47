"""The BEVFormer encoder: BEV queries attend to their own history and to the six camera views.

Li et al., "BEVFormer: Learning Bird's-Eye-View Representation from Multi-Camera Images via Spatiotemporal
Transformers", ECCV 2022. Each encoder layer runs temporal self-attention (TSA) over the previous and the current
BEV, then spatial cross-attention (SCA) from every BEV pillar into the image features of the cameras that see it,
then an FFN, each followed by a LayerNorm. Module and parameter names follow the official plugin
(``layers.i.attentions.0`` = TSA, ``layers.i.attentions.1.deformable_attention`` = the per-camera deformable
sampler, ``layers.i.ffns.0.layers``, ``layers.i.norms.j``) so official checkpoints load key for key.

Both attentions sample with the package's multi-scale deformable attention operator
(:func:`internimage.ops.ms_deform_attn.ms_deform_attn`), which computes what mmcv's kernel computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ...ops.ms_deform_attn import ms_deform_attn

__all__ = [
    "FFN",
    "BEVFormerEncoder",
    "BEVFormerLayer",
    "MSDeformableAttention3D",
    "SpatialCrossAttention",
    "TemporalSelfAttention",
    "bev_reference_points_2d",
    "bev_reference_points_3d",
    "point_sampling",
]

#: Smallest camera depth treated as "in front of the camera"; depths are clamped to it before the division.
DEPTH_EPS = 1e-5


def bev_reference_points_3d(
    bev_h: int,
    bev_w: int,
    height: float,
    num_points_in_pillar: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Normalised 3D anchors of every BEV pillar: cell centres in x/y, ``num_points_in_pillar`` heights.

    Heights are ``linspace(0.5, height - 0.5, D) / height`` (``height`` = the z extent of the point-cloud range),
    so the anchors sit half a metre inside the range's floor and ceiling, as the original does.

    Args:
        bev_h: BEV rows (y cells).
        bev_w: BEV columns (x cells).
        height: z extent of the point-cloud range (metres).
        num_points_in_pillar: Anchors per pillar (D).
        device: Device of the result.
        dtype: Dtype of the result.

    Returns:
        (D, bev_h * bev_w, 3) normalised (x, y, z) in [0, 1], query index ``row * bev_w + col``.
    """
    zs = torch.linspace(0.5, height - 0.5, num_points_in_pillar, dtype=dtype, device=device) / height
    xs = torch.linspace(0.5, bev_w - 0.5, bev_w, dtype=dtype, device=device) / bev_w
    ys = torch.linspace(0.5, bev_h - 0.5, bev_h, dtype=dtype, device=device) / bev_h
    d = num_points_in_pillar
    grid = torch.stack(
        (
            xs.view(1, 1, bev_w).expand(d, bev_h, bev_w),
            ys.view(1, bev_h, 1).expand(d, bev_h, bev_w),
            zs.view(d, 1, 1).expand(d, bev_h, bev_w),
        ),
        -1,
    )
    return grid.reshape(d, bev_h * bev_w, 3)


def bev_reference_points_2d(
    bev_h: int, bev_w: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised centres of the BEV cells, used by temporal self-attention.

    Returns:
        (bev_h * bev_w, 2) normalised (x, y), query index ``row * bev_w + col``.
    """
    ys = torch.linspace(0.5, bev_h - 0.5, bev_h, dtype=dtype, device=device) / bev_h
    xs = torch.linspace(0.5, bev_w - 0.5, bev_w, dtype=dtype, device=device) / bev_w
    return torch.stack((xs.view(1, bev_w).expand(bev_h, bev_w), ys.view(bev_h, 1).expand(bev_h, bev_w)), -1).view(-1, 2)


def point_sampling(
    reference_points: torch.Tensor,
    pc_range: Sequence[float],
    lidar2img: torch.Tensor,
    img_shape: tuple[int, int],
    ego2lidar: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the pillar anchors into every camera.

    Runs in float32 whatever the model dtype (the original forces fp32 here: projective division in half precision
    loses whole pixels at nuScenes resolutions).

    Args:
        reference_points: (D, Q, 3) normalised anchors from :func:`bev_reference_points_3d`.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the BEV volume in the ego frame (metres).
        lidar2img: (N, num_cams, 4, 4) lidar -> image-pixel projections (intrinsics @ extrinsics).
        img_shape: (height, width) the pixel coordinates are normalised by. The original reads
            ``img_metas[0]['img_shape'][0]``, which its padding transform sets to the padded image shape.
        ego2lidar: (N, 4, 4) or (4, 4) ego -> lidar transform applied before ``lidar2img``; identity if None.

    Returns:
        ``(reference_points_cam, bev_mask)``: (N, num_cams, Q, D, 2) normalised image (x, y) (in [0, 1] inside
        the image), and (N, num_cams, Q, D) bool: the anchor is in front of the camera and inside the image.
    """
    if lidar2img.dim() != 4 or lidar2img.shape[-2:] != (4, 4):
        raise ValueError(f"lidar2img must be (N, num_cams, 4, 4), got {tuple(lidar2img.shape)}")
    n = lidar2img.shape[0]
    ref = reference_points.float()
    lo = ref.new_tensor([pc_range[0], pc_range[1], pc_range[2]])
    span = ref.new_tensor([pc_range[3] - pc_range[0], pc_range[4] - pc_range[1], pc_range[5] - pc_range[2]])
    pts = torch.cat((ref * span + lo, torch.ones_like(ref[..., :1])), -1)  # (D, Q, 4) metres, homogeneous
    proj = lidar2img.float()
    if ego2lidar is not None:
        ego2lidar = ego2lidar.float().to(proj.device)
        if ego2lidar.shape == (4, 4):
            ego2lidar = ego2lidar.expand(n, 4, 4)
        if ego2lidar.shape != (n, 4, 4):
            raise ValueError(f"ego2lidar must be (4, 4) or ({n}, 4, 4), got {tuple(ego2lidar.shape)}")
        proj = proj @ ego2lidar[:, None]
    cam = torch.einsum("ncij,dqj->ncqdi", proj, pts.to(proj.device))  # (N, cams, Q, D, 4)
    depth = cam[..., 2:3]
    in_front = depth > DEPTH_EPS
    uv = cam[..., 0:2] / depth.clamp(min=DEPTH_EPS)
    uv = uv / uv.new_tensor([float(img_shape[1]), float(img_shape[0])])
    inside = (uv > 0.0).all(-1, keepdim=True) & (uv < 1.0).all(-1, keepdim=True)
    return uv, (in_front & inside).squeeze(-1)


def _sampling_offset_bias(num_heads: int, num_groups: int, num_points: int) -> torch.Tensor:
    """Deformable-DETR offset bias: head h points along angle 2*pi*h/heads, point k at k+1 steps."""
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = grid / grid.abs().max(-1, keepdim=True).values
    grid = grid.view(num_heads, 1, 1, 2).repeat(1, num_groups, num_points, 1)
    grid = grid * torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, num_points, 1)
    return grid.flatten()


def _xavier_linear(layer: nn.Linear) -> None:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


def _offset_normalizer(spatial_shapes: Sequence[tuple[int, int]], like: torch.Tensor) -> torch.Tensor:
    """(L, 2) (w, h) per level: offsets are predicted in pixels of each level."""
    return like.new_tensor([[float(w), float(h)] for h, w in spatial_shapes])


class TemporalSelfAttention(nn.Module):
    """Deformable self-attention over the (previous, current) BEV pair, averaged over the pair.

    Offsets and weights are predicted from ``[previous BEV, query + pos]`` concatenated on channels, separately for
    each BEV of the pair (``num_bev_queue = 2``).

    Args:
        embed_dims: Channels C.
        num_heads: Attention heads.
        num_levels: BEV levels (1).
        num_points: Sampling points per head, level and BEV of the pair.
        num_bev_queue: BEVs attended (the original supports only 2).
        dropout: Dropout on the output before the residual.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 1,
        num_points: int = 4,
        num_bev_queue: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"TemporalSelfAttention: embed_dims {embed_dims} not divisible by num_heads {num_heads}")
        if num_bev_queue != 2:
            raise ValueError(f"TemporalSelfAttention: num_bev_queue must be 2 (previous, current), got {num_bev_queue}")
        self.embed_dims, self.num_heads, self.num_levels = embed_dims, num_heads, num_levels
        self.num_points, self.num_bev_queue = num_points, num_bev_queue
        groups = num_bev_queue * num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dims * num_bev_queue, groups * 2)
        self.attention_weights = nn.Linear(embed_dims * num_bev_queue, groups)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        with torch.no_grad():
            bias = _sampling_offset_bias(self.num_heads, self.num_levels * self.num_bev_queue, self.num_points)
            self.sampling_offsets.bias.copy_(bias)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        _xavier_linear(self.value_proj)
        _xavier_linear(self.output_proj)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor | None,
        value: torch.Tensor | None,
        reference_points: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """Attend.

        Args:
            query: (N, Q, C) current BEV queries (also the residual).
            query_pos: (N, Q, C) BEV positional encoding, or None.
            value: (N * 2, Q, C) ``[previous, current]`` BEVs interleaved per sample, or None to attend to
                ``[query, query]`` (no history).
            reference_points: (N * 2, Q, L, 2) normalised (x, y) per BEV of the pair.
            spatial_shapes: [(bev_h, bev_w)].

        Returns:
            (N, Q, C).
        """
        n, q, c = query.shape
        pair = self.num_bev_queue
        if value is None:
            value = torch.stack([query, query], 1).reshape(n * pair, q, c)
        identity = query
        if query_pos is not None:
            query = query + query_pos
        # The original concatenates value[:bs], i.e. the previous BEV when bs == 1; taking each sample's own
        # previous BEV is the same there and stays correct for larger batches.
        query = torch.cat([value.view(n, pair, q, c)[:, 0], query], -1)
        v = self.value_proj(value).view(n * pair, q, self.num_heads, c // self.num_heads)
        offsets = self.sampling_offsets(query).view(n, q, self.num_heads, pair, self.num_levels, self.num_points, 2)
        offsets = offsets.permute(0, 3, 1, 2, 4, 5, 6).reshape(
            n * pair, q, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).view(n, q, self.num_heads, pair, self.num_levels * self.num_points)
        weights = weights.softmax(-1).view(n, q, self.num_heads, pair, self.num_levels, self.num_points)
        weights = weights.permute(0, 3, 1, 2, 4, 5).reshape(n * pair, q, self.num_heads, self.num_levels, -1)
        norm = _offset_normalizer(spatial_shapes, offsets)
        locations = reference_points[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        out = ms_deform_attn(v, spatial_shapes, locations, weights)  # (N * 2, Q, C)
        out = out.view(n, pair, q, c).mean(1)
        return self.dropout(self.output_proj(out)) + identity


class MSDeformableAttention3D(nn.Module):
    """Deformable sampling around the D projected anchors of each pillar in one camera (no output projection).

    The ``num_points`` points of each head and level are split evenly over the D anchors: point ``p`` samples
    around anchor ``p % D``.

    Args:
        embed_dims: Channels C.
        num_heads: Attention heads.
        num_levels: Image feature levels.
        num_points: Sampling points per head and level (a multiple of the anchors per pillar).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 8) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"MSDeformableAttention3D: embed_dims {embed_dims} not divisible by heads {num_heads}")
        self.embed_dims, self.num_heads, self.num_levels, self.num_points = (
            embed_dims,
            num_heads,
            num_levels,
            num_points,
        )
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(_sampling_offset_bias(self.num_heads, self.num_levels, self.num_points))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        _xavier_linear(self.value_proj)

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """Sample.

        Args:
            query: (B, Q, C) queries (B = batch x cameras).
            value: (B, S, C) flattened image features of all levels.
            reference_points: (B, Q, D, 2) normalised image (x, y) of the D anchors.
            spatial_shapes: (h, w) of every level.

        Returns:
            (B, Q, C).
        """
        b, q, c = query.shape
        d = reference_points.shape[2]
        if self.num_points % d:
            raise ValueError(f"MSDeformableAttention3D: num_points {self.num_points} is not a multiple of {d} anchors")
        v = self.value_proj(value).view(b, value.shape[1], self.num_heads, c // self.num_heads)
        offsets = self.sampling_offsets(query).view(b, q, self.num_heads, self.num_levels, self.num_points, 2)
        weights = self.attention_weights(query).view(b, q, self.num_heads, self.num_levels * self.num_points)
        weights = weights.softmax(-1).view(b, q, self.num_heads, self.num_levels, self.num_points)
        offsets = offsets / _offset_normalizer(spatial_shapes, offsets)[None, None, None, :, None, :]
        offsets = offsets.view(b, q, self.num_heads, self.num_levels, self.num_points // d, d, 2)
        locations = reference_points[:, :, None, None, None, :, :] + offsets
        locations = locations.view(b, q, self.num_heads, self.num_levels, self.num_points, 2)
        return ms_deform_attn(v, spatial_shapes, locations, weights)


class SpatialCrossAttention(nn.Module):
    """Each camera attends only for the BEV queries whose pillar it sees; results are averaged over cameras.

    Args:
        embed_dims: Channels C.
        num_cams: Cameras.
        num_heads: Heads of the deformable sampler.
        num_levels: Image feature levels.
        num_points: Sampling points per head and level.
        dropout: Dropout on the output before the residual.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_cams: int = 6,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed_dims, self.num_cams = embed_dims, num_cams
        self.deformable_attention = MSDeformableAttention3D(embed_dims, num_heads, num_levels, num_points)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        _xavier_linear(self.output_proj)

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points_cam: torch.Tensor,
        bev_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """Attend.

        Args:
            query: (N, Q, C) BEV queries (also the residual).
            value: (N * num_cams, S, C) flattened image features, camera-major within each sample.
            reference_points_cam: (N, num_cams, Q, D, 2) projected anchors.
            bev_mask: (N, num_cams, Q, D) anchors visible in each camera.
            spatial_shapes: (h, w) of every level.

        Returns:
            (N, Q, C).
        """
        n, q, c = query.shape
        cams = self.num_cams
        hits = bev_mask.any(-1)  # (N, cams, Q)
        counts = hits.sum(-1)
        max_len = int(counts.max()) if hits.numel() else 0
        slots = query.new_zeros(n, q, c)
        if max_len > 0:
            # Rebatch: each camera gets only the queries it sees, in increasing index order, zero-padded to the
            # longest list (the original's memory saving); hits first via a stable sort of "not hit".
            order = torch.sort((~hits).to(torch.uint8), dim=-1, stable=True).indices[..., :max_len]
            valid = torch.arange(max_len, device=query.device) < counts[..., None]  # (N, cams, max_len)
            gathered = torch.gather(query[:, None].expand(n, cams, q, c), 2, order[..., None].expand(-1, -1, -1, c))
            gathered = gathered * valid[..., None].to(query.dtype)
            d = reference_points_cam.shape[3]
            refs = torch.gather(reference_points_cam, 2, order[..., None, None].expand(-1, -1, -1, d, 2))
            refs = refs * valid[..., None, None].to(refs.dtype)
            out = self.deformable_attention(
                gathered.view(n * cams, max_len, c),
                value,
                refs.view(n * cams, max_len, d, 2).to(query.dtype),
                spatial_shapes,
            ).view(n, cams, max_len, c)
            out = out * valid[..., None].to(out.dtype)
            slots = slots.scatter_add(
                1, order.reshape(n, cams * max_len, 1).expand(-1, -1, c), out.reshape(n, cams * max_len, c)
            )
        count = hits.sum(1).clamp(min=1).to(slots.dtype)  # cameras seeing each query
        slots = self.output_proj(slots / count[..., None])
        return self.dropout(slots) + query


class FFN(nn.Module):
    """mmcv's two-layer FFN with residual: ``x + Dropout(Linear(Dropout(ReLU(Linear(x)))))``.

    Args:
        embed_dims: Channels C.
        feedforward_channels: Hidden width.
        ffn_drop: Dropout after the activation and after the second linear.
    """

    def __init__(self, embed_dims: int = 256, feedforward_channels: int = 512, ffn_drop: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.ReLU(inplace=True), nn.Dropout(ffn_drop)),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(ffn_drop),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class BEVFormerLayer(nn.Module):
    """``self_attn, norm, cross_attn, norm, ffn, norm`` (post-norm).

    Args:
        embed_dims: Channels C.
        feedforward_channels: FFN hidden width.
        ffn_dropout: FFN dropout.
        num_cams: Cameras.
        num_heads: Heads of both attentions.
        num_levels: Image feature levels (SCA).
        num_points: SCA sampling points per head and level.
        tsa_num_levels: BEV levels of TSA (1).
        tsa_num_points: TSA sampling points.
        dropout: Dropout of the attention outputs.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        feedforward_channels: int = 512,
        ffn_dropout: float = 0.1,
        num_cams: int = 6,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 8,
        tsa_num_levels: int = 1,
        tsa_num_points: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(
            [
                TemporalSelfAttention(embed_dims, num_heads, tsa_num_levels, tsa_num_points, dropout=dropout),
                SpatialCrossAttention(embed_dims, num_cams, num_heads, num_levels, num_points, dropout=dropout),
            ]
        )
        self.ffns = nn.ModuleList([FFN(embed_dims, feedforward_channels, ffn_dropout)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        bev_pos: torch.Tensor,
        ref_2d: torch.Tensor,
        prev_bev: torch.Tensor | None,
        bev_hw: tuple[int, int],
        reference_points_cam: torch.Tensor,
        bev_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """One layer; shapes as in :meth:`BEVFormerEncoder.forward`, ``query`` (N, Q, C) in and out."""
        query = self.norms[0](self.attentions[0](query, bev_pos, prev_bev, ref_2d, [bev_hw]))
        # The original passes no positional encoding to the cross-attention (its query_pos is None there).
        query = self.norms[1](self.attentions[1](query, value, reference_points_cam, bev_mask, spatial_shapes))
        return self.norms[2](self.ffns[0](query))


class BEVFormerEncoder(nn.Module):
    """Stack of :class:`BEVFormerLayer` with the pillar anchors, their projections and the TSA reference points.

    Args:
        num_layers: Encoder layers.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the BEV volume (ego frame, metres).
        num_points_in_pillar: Anchors per pillar (D).
        **layer_kwargs: :class:`BEVFormerLayer` arguments.
    """

    def __init__(
        self,
        num_layers: int = 4,
        pc_range: Sequence[float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
        num_points_in_pillar: int = 8,
        **layer_kwargs,
    ) -> None:
        super().__init__()
        if len(pc_range) != 6:
            raise ValueError(f"pc_range must have 6 numbers, got {pc_range}")
        self.pc_range = tuple(float(v) for v in pc_range)
        self.num_points_in_pillar = num_points_in_pillar
        self.layers = nn.ModuleList(BEVFormerLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(
        self,
        bev_query: torch.Tensor,
        value: torch.Tensor,
        bev_h: int,
        bev_w: int,
        bev_pos: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        lidar2img: torch.Tensor,
        img_shape: tuple[int, int],
        ego2lidar: torch.Tensor | None = None,
        prev_bev: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode.

        Args:
            bev_query: (N, Q, C) BEV queries, Q = bev_h * bev_w, index ``row * bev_w + col``.
            value: (N * num_cams, S, C) flattened multi-level camera features (camera-major per sample).
            bev_h: BEV rows.
            bev_w: BEV columns.
            bev_pos: (N, Q, C) positional encoding.
            spatial_shapes: (h, w) of every image level.
            lidar2img: (N, num_cams, 4, 4).
            img_shape: (height, width) normalising the projected pixels.
            ego2lidar: (N, 4, 4) / (4, 4) or None (identity).
            prev_bev: (N, Q, C) previous BEV already aligned to the current frame, or None.
            shift: (N, 2) ego-motion shift of the TSA reference points in normalised BEV units.

        Returns:
            (N, Q, C) BEV features.
        """
        n, q, _ = bev_query.shape
        pc = self.pc_range
        ref_3d = bev_reference_points_3d(
            bev_h, bev_w, pc[5] - pc[2], self.num_points_in_pillar, bev_query.device, bev_query.dtype
        )
        reference_points_cam, bev_mask = point_sampling(ref_3d, pc, lidar2img, img_shape, ego2lidar)
        ref_2d = bev_reference_points_2d(bev_h, bev_w, bev_query.device, bev_query.dtype)[None, :, None, :]
        ref_2d = ref_2d.expand(n, q, 1, 2)
        if shift is not None:
            # The original shifts ref_2d in place, so the "unshifted" current-BEV references are shifted too; kept
            # to reproduce the released results.
            ref_2d = ref_2d + shift.to(ref_2d)[:, None, None, :]
        hybrid_ref_2d = torch.stack([ref_2d, ref_2d], 1).reshape(n * 2, q, 1, 2)
        if prev_bev is not None:
            prev_bev = torch.stack([prev_bev, bev_query], 1).reshape(n * 2, q, -1)
        out = bev_query
        for layer in self.layers:
            out = layer(
                out,
                value,
                bev_pos,
                hybrid_ref_2d,
                prev_bev,
                (bev_h, bev_w),
                reference_points_cam,
                bev_mask,
                spatial_shapes,
            )
        return out
