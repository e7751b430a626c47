"""Multi-scale deformable attention: the grid_sample backend against a scalar bilinear loop, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from internimage.ops.ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn


def bilinear(v: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample (D, h, w) at normalised (x, y): pixel centres at (i + 0.5) / w, zeros outside (Deformable DETR)."""
    _, h, w = v.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(v.shape[0], dtype=v.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out += wgt * v[:, yi, xi]
    return out


def slow_ms_deform_attn(value, shapes, loc, weights):
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = loc.shape
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lv, (h, w) in enumerate(shapes):
                    v = value[b, starts[lv] : starts[lv + 1], head].T.reshape(d, h, w)
                    for p in range(points):
                        x, y = loc[b, q, head, lv, p].tolist()
                        out[b, q, head] += weights[b, q, head, lv, p] * bilinear(v, x, y)
    return out.view(n, lq, m * d)


def test_ms_deform_attn_matches_scalar_loop_float64():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4), (1, 2)]
    n, m, d, lq, p = 2, 3, 4, 6, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    # Locations spill outside [0, 1] so the zero padding is exercised too.
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    fast = ms_deform_attn(value, shapes, loc, weights)
    slow = slow_ms_deform_attn(value, shapes, loc, weights)
    assert torch.allclose(fast, slow, atol=1e-12, rtol=0)


def test_module_box_references_scale_offsets_by_half_box_over_points():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(8, heads=2, levels=2, points=2).double()
    shapes = [(4, 4), (2, 2)]
    value = torch.randn(1, 20, 8, dtype=torch.float64)
    query = torch.randn(1, 3, 8, dtype=torch.float64)
    ref = torch.rand(1, 3, 2, 4, dtype=torch.float64) * 0.5 + 0.25
    out = attn(query, ref, value, shapes)
    # Hand formula: loc = ref_xy + offset / P * ref_wh / 2; weights softmaxed over levels x points.
    off = attn.sampling_offsets(query).view(1, 3, 2, 2, 2, 2)
    w = attn.attention_weights(query).view(1, 3, 2, 4).softmax(-1).view(1, 3, 2, 2, 2)
    loc = ref[:, :, None, :, None, :2] + off / 2 * ref[:, :, None, :, None, 2:] / 2
    v = attn.value_proj(value).view(1, 20, 2, 4)
    expected = attn.output_proj(slow_ms_deform_attn(v, shapes, loc, w))
    assert torch.allclose(out, expected, atol=1e-12)


def test_module_padding_mask_zeroes_values_and_bad_inputs_raise():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(8, heads=2, levels=1, points=4).double()
    value = torch.randn(1, 12, 8, dtype=torch.float64)
    query = torch.randn(1, 5, 8, dtype=torch.float64)
    ref = torch.rand(1, 5, 2, dtype=torch.float64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    # Every value is padding: only the (zeroed) value bias path remains, so the output is the output bias.
    out = attn(query, ref, value, [(3, 4)], key_padding_mask=mask)
    assert torch.allclose(out, attn.output_proj.bias.expand_as(out))
    with pytest.raises(ValueError, match="levels"):
        attn(query, ref, value, [(3, 4), (1, 1)])
    with pytest.raises(ValueError, match="tokens"):
        attn(query, ref, value[:, :11], [(3, 4)])
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleDeformableAttention(10, heads=3)
