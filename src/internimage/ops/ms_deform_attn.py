"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021).

One operator serves every transformer in the package: the Mask2Former pixel decoder and the DINO encoder/decoder.
Two implementations compute it:

* ``reference`` (:func:`ms_deform_attn_reference`): pure PyTorch, every level sampled with ``grid_sample``
  (bilinear, zero padding, ``align_corners=False``), which is what mmcv's ``multi_scale_deformable_attn_pytorch``
  computes and what its CUDA kernel computes too. It runs on CPU and GPU, has autograd, and exports to standard
  ONNX ops (``GridSample``).
* ``cpu``: the fused C++ kernel ``csrc/ms_deform_attn_cpu.cpp`` (one pass per (image, query, head), no
  (N*M, D, Lq, P) intermediate; forward and backward), built on first use like the DCNv3 kernel
  (:mod:`internimage.ops.cpp_build`) and reached through the ``internimage::ms_deform_attn`` custom op (fake
  kernels, differentiable through ``internimage::ms_deform_attn_backward``).

:func:`ms_deform_attn` takes the fused kernel for CPU tensors when it builds here, unless the DCN backend choice
(``INTERNIMAGE_DCN_BACKEND`` / :func:`~internimage.ops.use_backend`) says ``reference``; under ``torch.export`` /
ONNX export it always traces the reference, so exported graphs keep ``grid_sample``.

The module keeps mmcv 1.x ``MultiScaleDeformableAttention``'s parameter names (``sampling_offsets``,
``attention_weights``, ``value_proj``, ``output_proj``) and initialisation, so official checkpoints load into it
key for key. Unlike mmcv's module it returns the attention output only: callers add the residual.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backends import _warn_once, requested_backend
from .cpp_build import CppKernel
from .custom_op import differentiable_op
from .dispatch import is_exporting, plain_eager_inference

__all__ = ["MultiScaleDeformableAttention", "ms_deform_attn", "ms_deform_attn_reference", "fused_available"]

logger = logging.getLogger(__name__)

KERNEL = CppKernel("ms_deform_attn_cpu.cpp", "multi-scale deformable attention CPU kernel", logger)
"""The extension holding ``internimage_cpu::ms_deform_attn_forward`` / ``ms_deform_attn_backward``."""

_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def fused_available() -> bool:
    """Build (first call only) and load the fused CPU kernel; ``False`` with one warning if impossible here."""
    return KERNEL.available()


@torch.compiler.assume_constant_result
def _use_fused(device_type: str, dtype: torch.dtype) -> bool:
    """The fused kernel for these tensors? Reads the DCN backend choice (``auto`` and ``cpu`` take it where it runs,
    ``reference`` and ``triton`` do not: there is no Triton kernel of this op). Evaluated eagerly under
    torch.compile (it reads the environment and may build)."""
    name = requested_backend()
    if name not in ("auto", "cpu") or device_type != "cpu" or dtype not in _FUSED_DTYPES:
        return False
    if fused_available():
        return True
    if name == "cpu":
        _warn_once("ms_deform_attn:cpu", "ms_deform_attn: the 'cpu' kernel cannot run here; using 'reference'")
    return False


def _check(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: torch.Tensor) -> None:
    _, s, m, _ = value.shape
    _, _, m2, levels, _, _ = sampling_locations.shape
    if m2 != m or levels != len(spatial_shapes):
        raise ValueError(
            f"ms_deform_attn: locations have {m2} heads and {levels} levels, value has {m} heads and "
            f"{len(spatial_shapes)} shapes"
        )
    if s != sum(h * w for h, w in spatial_shapes):
        raise ValueError(f"ms_deform_attn: value has {s} tokens, shapes {list(spatial_shapes)} give another count")


def _require() -> None:
    if not fused_available():
        raise RuntimeError("ms_deform_attn: the fused CPU kernel is not available here (it could not be built)")


def _flat_shapes(spatial_shapes: Sequence[tuple[int, int]]) -> list[int]:
    return [int(size) for shape in spatial_shapes for size in shape]


def _fused_forward(value, sampling_locations, attention_weights, spatial_shapes) -> torch.Tensor:
    _require()
    return torch.ops.internimage_cpu.ms_deform_attn_forward(
        value, spatial_shapes, sampling_locations, attention_weights
    )


def _fused_backward(grad_output, value, sampling_locations, attention_weights, spatial_shapes):
    _require()
    grads = torch.ops.internimage_cpu.ms_deform_attn_backward(
        grad_output, value, spatial_shapes, sampling_locations, attention_weights
    )
    return tuple(g.contiguous() for g in grads)


def _fake_forward(value, sampling_locations, attention_weights, spatial_shapes) -> torch.Tensor:
    return value.new_empty(value.shape[0], sampling_locations.shape[1], value.shape[2] * value.shape[3])


_msda_op, _ = differentiable_op(
    "internimage::ms_deform_attn",
    ("value", "sampling_locations", "attention_weights"),
    "int[] spatial_shapes",
    _fused_forward,
    _fused_backward,
    _fake_forward,
)


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
    if is_exporting() or not _use_fused(value.device.type, value.dtype):
        return ms_deform_attn_reference(value, spatial_shapes, sampling_locations, attention_weights)  # checks
    _check(value, spatial_shapes, sampling_locations)
    sampling_locations = sampling_locations.to(value.dtype)
    attention_weights = attention_weights.to(value.dtype)
    shapes = _flat_shapes(spatial_shapes)
    if plain_eager_inference(value, sampling_locations, attention_weights):
        return _fused_forward(value, sampling_locations, attention_weights, shapes)
    return _msda_op(value, sampling_locations, attention_weights, shapes)


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`ms_deform_attn` in pure PyTorch (``grid_sample`` per level): the exported and the GPU path."""
    _check(value, spatial_shapes, sampling_locations)
    n, _, m, d = value.shape
    _, lq, _, _, points, _ = sampling_locations.shape
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
