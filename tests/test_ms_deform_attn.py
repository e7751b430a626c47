"""Multi-scale deformable attention: the grid_sample backend against a scalar bilinear loop, in float64."""

from __future__ import annotations

import math

import pytest
import torch

import internimage.ops.ms_deform_attn as msda
from conftest import require_kernel
from internimage.ops import use_backend
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


# ---------------------------------------------------------------------------------------------------------------
# The fused C++ CPU kernel (csrc/ms_deform_attn_cpu.cpp) against the grid_sample reference.

SHAPES = [(7, 9), (5, 3), (3, 5), (1, 1)]  # several levels of odd sizes, one a single pixel


@pytest.fixture(scope="module")
def fused():
    require_kernel(msda.fused_available, "ms_deform_attn CPU extension")


def make_case(shapes=SHAPES, n=2, m=3, d=5, lq=7, p=3, dtype=torch.float64, seed=0, edges=True):
    """Random (value, locations, weights, grad_output); locations spill outside [0, 1], and with ``edges`` some sit
    exactly on 0 and 1, on pixel centres, and where x * w - 0.5 is exactly -1 or w (a corner on the border)."""
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    if edges:
        for lv, (h, w) in enumerate(shapes):
            special_x = [0.0, 1.0, 0.5 / w, -0.5 / w, (w + 0.5) / w, 1.5 / w, 2.0]
            special_y = [1.0, 0.0, 0.5 / h, (h + 0.5) / h, -0.5 / h, 0.0, -1.0]
            for k, (x, y) in enumerate(zip(special_x, special_y)):
                b, q, head, pt = k % n, k % lq, k % m, k % p
                loc[b, q, head, lv, pt] = torch.tensor([x, y], dtype=torch.float64)
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    grad = torch.randn(n, lq, m * d, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (value, loc, weights, grad))


def run_with_grads(fn, value, shapes, loc, weights, grad):
    value, loc, weights = (t.detach().clone().requires_grad_() for t in (value, loc, weights))
    out = fn(value, shapes, loc, weights)
    return (out, *torch.autograd.grad(out, (value, loc, weights), grad))


OUTPUTS = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_both_implementations_match_the_scalar_loop(impl, fused):
    value, loc, weights, _ = make_case()
    fn = msda.ms_deform_attn if impl == "fused" else msda.ms_deform_attn_reference
    assert torch.allclose(fn(value, SHAPES, loc, weights), slow_ms_deform_attn(value, SHAPES, loc, weights), atol=1e-12)


@pytest.mark.parametrize("seed,d", [(0, 5), (1, 5), (2, 32), (3, 16), (4, 64)])
def test_fused_matches_reference_float64_forward_and_gradients(seed, d, fused):
    """D = 16, 32, 64 take the kernels' compile-time channel loops, D = 5 the generic ones."""
    case = make_case(d=d, seed=seed)
    with use_backend("cpu"):
        got = run_with_grads(msda.ms_deform_attn, case[0], SHAPES, *case[1:])
    want = run_with_grads(msda.ms_deform_attn_reference, case[0], SHAPES, *case[1:])
    for name, a, b in zip(OUTPUTS, got, want):
        assert (a - b).abs().max().item() <= 1e-12, name


def test_fused_float32_within_1e5_of_float64(fused):
    case = make_case(seed=3, edges=False)
    want = run_with_grads(msda.ms_deform_attn_reference, case[0], SHAPES, *case[1:])
    case32 = tuple(t.float() for t in case)
    got = run_with_grads(msda.ms_deform_attn, case32[0], SHAPES, *case32[1:])
    for name, a, b in zip(OUTPUTS, got, want):
        assert a.dtype == torch.float32
        # Location gradients are scaled by the level size: compare relative to their magnitude.
        scale = b.abs().max().item() if name == "grad_sampling_locations" else 1.0
        assert (a.double() - b).abs().max().item() <= 1e-5 * max(scale, 1.0), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_precision_computes_in_float32(dtype, fused):
    case = make_case(seed=4, edges=False)
    low = tuple(t.to(dtype) for t in case)
    got = run_with_grads(msda.ms_deform_attn, low[0], SHAPES, *low[1:])
    # The reference on the same rounded inputs, in float64.
    want = run_with_grads(
        msda.ms_deform_attn_reference, *(t.double() for t in low[:1]), SHAPES, *(t.double() for t in low[1:])
    )
    for name, a, b in zip(OUTPUTS, got, want):
        assert a.dtype == dtype
        assert torch.allclose(a.double(), b, rtol=2e-2, atol=2e-2 * max(1.0, b.abs().max().item())), name


def test_gradcheck_tiny_float64(fused):
    shapes = [(3, 2), (1, 2)]
    value, loc, weights, _ = make_case(shapes, n=2, m=2, d=2, lq=2, p=2, seed=5, edges=False)
    inputs = tuple(t.requires_grad_() for t in (value, loc, weights))
    assert torch.autograd.gradcheck(lambda v, lo, w: msda.ms_deform_attn(v, shapes, lo, w), inputs)


@pytest.mark.parametrize("d", [5, 32])
def test_backward_ownership_and_per_thread_buffers_agree(d, fused):
    value, loc, weights, grad = make_case(d=d, seed=6)
    flat = [s for hw in SHAPES for s in hw]
    owned = torch.ops.internimage_cpu.ms_deform_attn_backward(grad, value, flat, loc, weights, 1)
    buffered = torch.ops.internimage_cpu.ms_deform_attn_backward(grad, value, flat, loc, weights, 2)
    for name, a, b in zip(OUTPUTS[1:], owned, buffered):
        assert torch.allclose(a, b, atol=1e-12, rtol=0), name


def test_opcheck_custom_op(fused):
    value, loc, weights, _ = make_case([(3, 4), (2, 1)], n=1, m=2, d=4, lq=3, p=2, dtype=torch.float32, seed=7)
    inputs = (value.requires_grad_(), loc.requires_grad_(), weights.requires_grad_(), [3, 4, 2, 1])
    torch.library.opcheck(torch.ops.internimage.ms_deform_attn.default, inputs)


def test_backend_choice_routes_to_reference(fused, monkeypatch):
    calls = []
    reference = msda.ms_deform_attn_reference
    monkeypatch.setattr(msda, "ms_deform_attn_reference", lambda *args: calls.append(1) or reference(*args))
    value, loc, weights, _ = make_case(seed=8)
    with use_backend("reference"):
        msda.ms_deform_attn(value, SHAPES, loc, weights)
    assert calls == [1]
    with use_backend("auto"):
        msda.ms_deform_attn(value, SHAPES, loc, weights)
    with use_backend("cpu"):
        msda.ms_deform_attn(value, SHAPES, loc, weights)
    assert calls == [1]
    monkeypatch.setenv("INTERNIMAGE_DCN_BACKEND", "reference")
    msda.ms_deform_attn(value, SHAPES, loc, weights)
    assert calls == [1, 1]


def test_empty_queries(fused):
    value, loc, weights, _ = make_case(seed=9)
    out = msda.ms_deform_attn(value, SHAPES, loc[:, :0], weights[:, :0])
    assert out.shape == (2, 0, 15)


def test_export_traces_grid_sample_not_the_custom_op(fused):
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(16, heads=2, levels=2, points=2).eval()
    shapes = [(4, 3), (2, 1)]

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, query, ref, value):
            return self.attn(query, ref, value, shapes)

    args = (torch.randn(1, 5, 16), torch.rand(1, 5, 2), torch.randn(1, 14, 16))
    program = torch.export.export(Wrapper(), args)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("grid_sampler" in t for t in targets), targets
    assert not any("internimage" in t for t in targets), targets
    assert torch.allclose(program.module()(*args), Wrapper()(*args), atol=1e-5)


def test_build_failure_warns_once_and_the_reference_runs(monkeypatch):
    def broken_build():
        raise OSError("no compiler\nsecond line")

    monkeypatch.setattr(msda.KERNEL, "build", broken_build)
    monkeypatch.setattr(msda.KERNEL, "_loaded", [])
    value, loc, weights, _ = make_case(seed=10)
    with pytest.warns(RuntimeWarning, match="no compiler") as record:
        out = msda.ms_deform_attn(value, SHAPES, loc, weights)
        msda.ms_deform_attn(value, SHAPES, loc, weights)
    assert len(record) == 1
    assert torch.equal(out, msda.ms_deform_attn_reference(value, SHAPES, loc, weights))


NAN, INF = float("nan"), float("inf")
# (tensor, where, value): a non-finite x, y or both; a non-finite weight inside and outside; a NaN value.
POISONS_MSDA = [
    ("loc", (0, 1, 0, 0, 0, 0), NAN),
    ("loc", (0, 1, 0, 0, 0, 1), INF),
    ("loc", (1, 2, 1, 1, 0, 0), -INF),
    ("loc", (0, 3, 2, 0, 1, slice(None)), NAN),
    ("weights", (0, 4, 0, 0, 0), NAN),  # inside
    ("weights", (1, 5, 1, 0, 1), INF),
    ("value", (0, slice(None), 1, 2), NAN),  # one channel of one head, every token
]
POISON_IDS_MSDA = [f"{p}-{b}-{i}" for i, (p, _, b) in enumerate(POISONS_MSDA)]


@pytest.mark.parametrize(
    "poisoned,where,bad", POISONS_MSDA, ids=[f"{p}-{b}-{i}" for i, (p, _, b) in enumerate(POISONS_MSDA)]
)
def test_fused_propagates_nonfinite_like_the_reference(poisoned, where, bad, fused):
    # A diverging run must not be hidden: NaN and Inf reach the same output and gradient positions as through
    # grid_sample (the kernel once treated a NaN position as outside: output and gradients silently finite).
    from conftest import assert_same_nonfinite

    value, loc, weights, grad = make_case(edges=False)
    tensors = {"value": value, "loc": loc, "weights": weights}
    tensors[poisoned][where] = bad
    if poisoned == "weights":  # the same weight once more at a sample whose corners are all outside
        loc[(*where[:-1], 2)] = torch.tensor([3.0, 3.0], dtype=loc.dtype)
        weights[(*where[:-1], 2)] = bad
    with use_backend("cpu"):
        got = run_with_grads(msda.ms_deform_attn, value, SHAPES, loc, weights, grad)
    want = run_with_grads(msda.ms_deform_attn_reference, value, SHAPES, loc, weights, grad)
    assert not torch.isfinite(want[0]).all()  # the case does poison the output
    for name, a, b in zip(OUTPUTS, got, want):
        assert_same_nonfinite(name, a, b, rtol=1e-12, atol=1e-12, kinds=False)
