"""DCNv3 operator: hand-computable cases, reference backward, gradcheck, op registration, errors."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from conftest import INF, NAN, POISON_IDS, POISONS, assert_same_nonfinite, nonfinite_case, require_kernel
from internimage.ops import (
    DCNv3,
    current_export_mode,
    dcnv3,
    dcnv3_reference,
    dcnv3_reference_backward,
    export_mode,
    make_args,
)

D64 = torch.float64


def _rand_case(n=2, h=6, w=5, group=2, d=3, k=3, stride=1, pad=1, dil=1, scale=1.0, rc=False, spread=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    args = make_args(k, stride, pad, dil, group, scale, rc)
    ho, wo = args.output_size(h, w)
    p = args.num_points
    x = torch.randn(n, h, w, group * d, generator=gen, dtype=D64)
    off = torch.randn(n, ho, wo, group * p * 2, generator=gen, dtype=D64) * spread
    mask = torch.rand(n, ho, wo, group * p, generator=gen, dtype=D64)
    return x, off, mask, args


def _call(x, off, mask, args, backend="reference"):
    return dcnv3(
        x,
        off,
        mask,
        (args.kernel_h, args.kernel_w),
        (args.stride_h, args.stride_w),
        (args.pad_h, args.pad_w),
        (args.dilation_h, args.dilation_w),
        args.group,
        args.offset_scale,
        args.remove_center,
        backend=backend,
    )


def _nchw(x):
    return x.permute(0, 3, 1, 2)


def test_zero_offsets_all_ones_mask_is_a_box_filter():
    x = torch.randn(2, 7, 6, 8, dtype=D64)
    args = make_args(3, 1, 1, 1, group=2)
    off = torch.zeros(2, 7, 6, 2 * 9 * 2, dtype=D64)
    mask = torch.ones(2, 7, 6, 2 * 9, dtype=D64)
    out = _call(x, off, mask, args)
    expected = F.conv2d(_nchw(x), torch.ones(8, 1, 3, 3, dtype=D64), padding=1, groups=8)
    torch.testing.assert_close(_nchw(out), expected, rtol=1e-12, atol=1e-12)


def torchvision_dcnv3(x, off, mask, k, stride, pad, dil, group, offset_scale):
    """The DCNv3 core computed by torchvision's DCNv2 op, an independent implementation.

    A depthwise ``deform_conv2d`` with all-ones weights (groups=C) and ``offset_groups=G`` gives each output channel
    ``sum_k mask_k * bilinear(x_c, pos_k)``: the DCNv3 sum. Layouts are translated here:

    * ours (ORIGINAL.md 2): channels-last x (N, H, W, G*D); offsets (N, Ho, Wo, G*P*2) as [g][p][x, y] with
      p = i*K + j, i the kernel column (x-outer); mask (N, Ho, Wo, G*P) as [g][p].
    * torchvision: x (N, C, H, W); offsets (N, G*K*K*2, Ho, Wo) as [g][ky][kx][y, x] (tap ky*K + kx, row-major);
      mask (N, G*K*K, Ho, Wo) as [g][ky][kx]; channel c belongs to offset group c // D.

    Positions: DCNv3 samples at ``x = wo*s - pad + c + (kx*dil - c + dx) * offset_scale`` with
    ``c = dil*(K-1)//2``; torchvision at ``x = wo*s - pad + kx*dil + tx``. So ``tx = dx * offset_scale +
    (kx*dil - c) * (offset_scale - 1)``, and the same in y. Both read zero outside ``-1 < pos < size``.
    """
    from torchvision.ops import deform_conv2d

    n, h, w, ch = x.shape
    _, ho, wo, _ = off.shape
    centre = dil * (k - 1) // 2
    off = off.reshape(n, ho, wo, group, k, k, 2)  # [g][kx][ky][x, y]
    mask = mask.reshape(n, ho, wo, group, k, k)  # [g][kx][ky]
    tv_off = torch.empty(n, group, k, k, 2, ho, wo, dtype=x.dtype)  # [g][ky][kx][y, x]
    tv_mask = torch.empty(n, group, k, k, ho, wo, dtype=x.dtype)
    for ky in range(k):
        for kx in range(k):
            ty = off[..., kx, ky, 1] * offset_scale + (ky * dil - centre) * (offset_scale - 1)
            tx = off[..., kx, ky, 0] * offset_scale + (kx * dil - centre) * (offset_scale - 1)
            tv_off[:, :, ky, kx, 0] = ty.permute(0, 3, 1, 2)
            tv_off[:, :, ky, kx, 1] = tx.permute(0, 3, 1, 2)
            tv_mask[:, :, ky, kx] = mask[..., kx, ky].permute(0, 3, 1, 2)
    out = deform_conv2d(
        x.permute(0, 3, 1, 2),
        tv_off.reshape(n, group * k * k * 2, ho, wo),
        torch.ones(ch, 1, k, k, dtype=x.dtype),  # depthwise: groups = C / weight.shape[1] = C
        stride=stride,
        padding=pad,
        dilation=dil,
        mask=tv_mask.reshape(n, group * k * k, ho, wo),
    )
    return out.permute(0, 2, 3, 1)


# (n, h, w, group, group channels, stride, pad, dilation, offset_scale); kernel 3 throughout
TORCHVISION_CASES = [
    (2, 7, 6, 2, 3, 1, 1, 1, 1.0),
    (1, 9, 8, 4, 2, 2, 1, 1, 1.0),
    (2, 8, 9, 2, 8, 1, 1, 2, 1.0),
    (1, 10, 7, 4, 5, 2, 1, 2, 2.0),
    (2, 6, 7, 2, 4, 1, 1, 1, 2.0),
    (1, 11, 9, 4, 6, 2, 1, 1, 2.0),
    (1, 9, 10, 2, 7, 1, 2, 2, 2.0),
]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", TORCHVISION_CASES, ids=[str(c) for c in TORCHVISION_CASES])
def test_matches_torchvision_deform_conv2d(case, backend):
    if backend == "cpu":
        from internimage.ops import cpu as cpu_backend

        require_kernel(cpu_backend.available, "DCNv3 CPU extension")
    n, h, w, g, d, stride, pad, dil, scale = case
    args = make_args(3, stride, pad, dil, g, scale)
    ho, wo = args.output_size(h, w)
    gen = torch.Generator().manual_seed(sum(case[:6]))
    x = torch.randn(n, h, w, g * d, generator=gen, dtype=D64)
    # Fractional offsets of up to +-2.5 px: bilinear weights everywhere, and some samples (partly) outside.
    off = (torch.rand(n, ho, wo, g * 9 * 2, generator=gen, dtype=D64) - 0.5) * 5
    mask = torch.rand(n, ho, wo, g * 9, generator=gen, dtype=D64)
    expected = torchvision_dcnv3(x, off, mask, 3, stride, pad, dil, g, scale)
    torch.testing.assert_close(_call(x, off, mask, args, backend), expected, rtol=0, atol=1e-10)
    if backend == "reference":
        torch.testing.assert_close(dcnv3_reference(x, off, mask, args), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "point,shift", [(0, (-1, -1)), (1, (-1, 0)), (2, (-1, 1)), (3, (0, -1)), (4, (0, 0)), (8, (1, 1))]
)
def test_point_order_is_x_outer(point, shift):
    """Point p = i*Kh + j with i over width: point 1 reads (x-1, y), point 3 reads (x, y-1)."""
    x = torch.randn(1, 5, 6, 4, dtype=D64)
    args = make_args(3, 1, 1, 1, group=1)
    off = torch.zeros(1, 5, 6, 18, dtype=D64)
    mask = torch.zeros(1, 5, 6, 9, dtype=D64)
    mask[..., point] = 1
    out = _call(x, off, mask, args)
    dx, dy = shift
    padded = F.pad(_nchw(x), (1, 1, 1, 1))
    expected = padded[:, :, 1 + dy : 1 + dy + 5, 1 + dx : 1 + dx + 6]
    torch.testing.assert_close(_nchw(out), expected, rtol=0, atol=1e-12)


def test_one_pixel_offset_shifts_the_sample_and_x_comes_first():
    x = torch.randn(1, 5, 6, 2, dtype=D64)
    args = make_args(3, 1, 1, 1, group=1)
    mask = torch.zeros(1, 5, 6, 9, dtype=D64)
    mask[..., 4] = 1  # centre point only
    off = torch.zeros(1, 5, 6, 9, 2, dtype=D64)
    off[..., 4, 0] = 1.0  # +1 pixel in x
    out_x = _call(x, off.reshape(1, 5, 6, 18), mask, args)
    torch.testing.assert_close(out_x[:, :, :-1], x[:, :, 1:], rtol=0, atol=1e-12)
    assert out_x[:, :, -1].abs().max() < 1e-12  # sampled at x = W: outside
    off = torch.zeros(1, 5, 6, 9, 2, dtype=D64)
    off[..., 4, 1] = -1.0  # -1 pixel in y
    out_y = _call(x, off.reshape(1, 5, 6, 18), mask, args)
    torch.testing.assert_close(out_y[:, 1:], x[:, :-1], rtol=0, atol=1e-12)
    assert out_y[:, 0].abs().max() < 1e-12  # at y = -1: outside (grid_sample rounding leaves ~1e-16)


def test_half_pixel_offset_averages_neighbours():
    x = torch.randn(1, 4, 4, 3, dtype=D64)
    args = make_args(3, 1, 1, 1, group=1)
    mask = torch.zeros(1, 4, 4, 9, dtype=D64)
    mask[..., 4] = 2.0
    off = torch.zeros(1, 4, 4, 9, 2, dtype=D64)
    off[..., 4, 0] = 0.5
    out = _call(x, off.reshape(1, 4, 4, 18), mask, args)
    torch.testing.assert_close(out[:, :, :3], x[:, :, :3] + x[:, :, 1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, :, 3], x[:, :, 3], rtol=0, atol=1e-12)  # right neighbour is padding


def test_out_of_bounds_gives_zeros_and_zero_gradients():
    x, off, mask, args = _rand_case()
    x.requires_grad_()
    off = (off.sign() * 1000).requires_grad_()
    mask.requires_grad_()
    out = _call(x, off, mask, args)
    assert out.abs().max() == 0
    out.sum().backward()
    assert x.grad.abs().max() == 0 and off.grad.abs().max() == 0 and mask.grad.abs().max() == 0


def test_offset_scale_scales_grid_and_offsets():
    """offset_scale=2 with offsets o equals dilation 2 with offsets 2*o (the base grid is scaled too)."""
    x, off, mask, _ = _rand_case(h=7, w=7)
    a_scale = make_args(3, 1, 1, 1, 2, offset_scale=2.0)
    a_dil = make_args(3, 1, 2, 2, 2, offset_scale=1.0)
    torch.testing.assert_close(_call(x, off, mask, a_scale), _call(x, 2 * off, mask, a_dil), rtol=1e-12, atol=1e-12)


def test_remove_center_skips_the_centre_point():
    x, off, mask, args = _rand_case(rc=False)
    keep = [p for p in range(9) if p != 4]
    g = args.group
    off_rc = off.reshape(*off.shape[:3], g, 9, 2)[:, :, :, :, keep].reshape(*off.shape[:3], -1)
    mask_rc = mask.reshape(*mask.shape[:3], g, 9)[..., keep].reshape(*mask.shape[:3], -1)
    mask_zero_centre = mask.reshape(*mask.shape[:3], g, 9).clone()
    mask_zero_centre[..., 4] = 0
    full = _call(x, off, mask_zero_centre.reshape(mask.shape), args)
    rc = _call(x, off_rc, mask_rc, make_args(3, 1, 1, 1, g, 1.0, True))
    torch.testing.assert_close(rc, full, rtol=1e-12, atol=1e-12)


CASES = [
    dict(),
    dict(stride=2),
    dict(dil=2, pad=2),
    dict(k=5, pad=2),
    dict(scale=2.0),
    dict(scale=0.5, rc=True),
    dict(d=5, group=3),
    dict(n=1, spread=8.0),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_reference_backward_matches_autograd(case):
    x, off, mask, args = _rand_case(**case)
    inputs = [t.clone().requires_grad_() for t in (x, off, mask)]
    out = dcnv3_reference(*inputs, args)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, inputs, grad_out)
    got = dcnv3_reference_backward(grad_out, x, off, mask, args)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


# Gradcheck perturbs every input element (two forwards each): most are offsets and weights, 3 * P per output pixel and
# group, so a 3 x 4 image (12 pixels, not 20). With offsets spread over +-2 pixels it still samples inside the image,
# across its border and outside it in every case below (at least 10 samples of each kind).
GRADCHECK_SIZE = dict(n=1, h=3, w=4, d=2)


@pytest.mark.parametrize("case", CASES[:6], ids=[str(c) for c in CASES[:6]])
def test_gradcheck(case):
    x, off, mask, args = _rand_case(**GRADCHECK_SIZE, **case)
    inputs = tuple(t.requires_grad_() for t in (x, off, mask))
    assert torch.autograd.gradcheck(lambda a, b, c: _call(a, b, c, args), inputs)


def test_opcheck_and_compile():
    x, off, mask, args = _rand_case(n=1, h=4, w=4, d=2)
    static = (*args, "reference")
    torch.library.opcheck(torch.ops.internimage.dcnv3.default, (x, off, mask, *static))
    compiled = torch.compile(lambda a, b, c: _call(a, b, c, args), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, off, mask), _call(x, off, mask, args))


def test_eager_inference_skips_the_custom_op_and_autograd_uses_it(monkeypatch):
    dcnv3_module = importlib.import_module("internimage.ops.dcnv3")  # the package's `dcnv3` is the function

    x, off, mask, args = _rand_case()
    expected = _call(x, off, mask, args)
    calls = []
    op = dcnv3_module._dcnv3_op
    monkeypatch.setattr(dcnv3_module, "_dcnv3_op", lambda *a: calls.append(1) or op(*a))
    with torch.no_grad():
        torch.testing.assert_close(_call(x, off, mask, args), expected, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(_call(x, off, mask, args), expected, rtol=0, atol=0)
    assert calls == []  # plain eager inference calls the backend directly
    leaf = off.clone().requires_grad_()
    _call(x, leaf, mask, args).sum().backward()  # autograd needs the registered op
    assert calls == [1] and leaf.grad is not None and leaf.grad.abs().sum() > 0
    empty = _call(x[:0], off[:0], mask[:0], args).shape
    assert empty == (0, *x.shape[1:])


def test_half_precision_reference_close_to_float64():
    x, off, mask, args = _rand_case(d=8)
    expected = _call(x, off, mask, args)
    for dtype in (torch.float32, torch.bfloat16):
        got = _call(x.to(dtype), off.to(dtype), mask.to(dtype), args)
        assert got.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 0.1
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


def test_empty_batch_and_non_contiguous_inputs():
    x, off, mask, args = _rand_case()
    empty = _call(x[:0], off[:0], mask[:0], args)
    assert empty.shape == (0, *x.shape[1:])
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous strides
    assert not xt.is_contiguous()
    torch.testing.assert_close(_call(xt, off, mask, args), _call(x, off, mask, args))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda x, o, m: (x[..., :-1], o, m), "not divisible by group"),
        (lambda x, o, m: (x, o[..., :-2], m), "offset must have shape"),
        (lambda x, o, m: (x, o, m[:, :-1]), "mask must have shape"),
        (lambda x, o, m: (x[0], o, m), "4-D NHWC"),
    ],
)
def test_bad_shapes_raise_one_line_errors(mutate, message):
    x, off, mask, args = _rand_case()
    with pytest.raises(ValueError, match=message) as info:
        _call(*mutate(x, off, mask), args)
    assert "\n" not in str(info.value)


def test_backend_env_override_and_unknown_backend(monkeypatch):
    from internimage.ops.backends import resolve_backend

    monkeypatch.setenv("INTERNIMAGE_DCN_BACKEND", "reference")
    assert resolve_backend(None, "cpu", torch.float32) == "reference"
    monkeypatch.setenv("INTERNIMAGE_DCN_BACKEND", "nope")
    with pytest.raises(ValueError, match="INTERNIMAGE_DCN_BACKEND"):
        resolve_backend(None, "cpu", torch.float32)
    with pytest.raises(ValueError, match="unknown DCN backend"):
        resolve_backend("nope", "cpu", torch.float32)


def test_module_at_init_is_projected_box_mean():
    """Zero offset/mask weights at init: uniform 1/9 mask on the fixed 3x3 grid, i.e. a zero-padded mean."""
    torch.manual_seed(0)
    module = DCNv3(channels=8, group=2).double()
    x = torch.randn(2, 5, 6, 8, dtype=D64)
    with torch.no_grad():
        proj = module.input_proj(x)
        mean = F.avg_pool2d(_nchw(proj), 3, 1, 1, count_include_pad=True).permute(0, 2, 3, 1)
        expected = module.output_proj(mean)
        torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


def test_module_center_feature_scale_blends_with_input_projection():
    torch.manual_seed(0)
    module = DCNv3(channels=8, group=2, center_feature_scale=True, dw_kernel_size=5).double()
    with torch.no_grad():
        module.center_feature_scale_proj_bias.fill_(100.0)  # gate saturates to 1: output = output_proj(x_proj)
    x = torch.randn(1, 4, 4, 8, dtype=D64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), module.output_proj(module.input_proj(x)), rtol=1e-10, atol=1e-10)
    assert module.dw_conv[0].weight.shape == (8, 1, 5, 5)


def _softmax_args(args):
    return args._replace(softmax=True)


def _normalised(mask, args):
    n, ho, wo, _ = mask.shape
    return torch.softmax(mask.reshape(n, ho, wo, args.group, args.num_points), -1).reshape(mask.shape)


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_fused_softmax_reference_matches_composed_autograd(case):
    """softmax=True equals softmax-then-op, and its analytic backward is the gradient w.r.t. the logits."""
    x, off, logits, args = _rand_case(**case)
    logits = logits * 6 - 3
    inputs = [t.clone().requires_grad_() for t in (x, off, logits)]
    out = dcnv3_reference(inputs[0], inputs[1], _normalised(inputs[2], args), args)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, inputs, grad_out)
    fused = _softmax_args(args)
    torch.testing.assert_close(dcnv3_reference(x, off, logits, fused), out.detach(), rtol=1e-12, atol=1e-12)
    got = dcnv3_reference_backward(grad_out, x, off, logits, fused)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_fused_softmax_gradcheck_and_opcheck():
    x, off, logits, args = _rand_case(**GRADCHECK_SIZE, rc=True)
    inputs = tuple(t.requires_grad_() for t in (x, off, logits))

    def fused(a, b, c):
        return dcnv3(a, b, c, 3, 1, 1, 1, args.group, 1.0, True, backend="reference", softmax=True)

    assert torch.autograd.gradcheck(fused, inputs)
    static = (*_softmax_args(args), "reference")
    torch.library.opcheck(torch.ops.internimage.dcnv3.default, (x.detach(), off.detach(), logits.detach(), *static))


def test_module_fuses_projections_and_softmax_exactly():
    """The DCNv3 module (one GEMM, split views, softmax in the op) equals the unfused official computation."""
    torch.manual_seed(0)
    module = DCNv3(channels=12, group=3).double()
    for param in module.parameters():
        torch.nn.init.normal_(param, std=0.3)
    x = torch.randn(2, 5, 6, 12, dtype=D64, requires_grad=True)
    out = module(x)
    x1 = module.dw_conv(x.permute(0, 3, 1, 2))
    mask = F.softmax(module.mask(x1).reshape(2, 5, 6, 3, -1), -1).reshape(2, 5, 6, -1)
    core = dcnv3_reference(module.input_proj(x), module.offset(x1), mask, make_args(3, 1, 1, 1, 3))
    expected = module.output_proj(core)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out.sum(), [x, *module.parameters()])
    want = torch.autograd.grad(expected.sum(), [x, *module.parameters()])
    for g, e in zip(grads, want):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


# --- NaN and Inf: the reference's rule, which every backend follows (tests/conftest.py) -------------------


@pytest.mark.parametrize("softmax", [False, True], ids=["weights", "softmax"])
@pytest.mark.parametrize("poisoned,value", POISONS, ids=POISON_IDS)
def test_reference_backward_propagates_nonfinite_like_autograd(poisoned, value, softmax):
    """The analytic backward puts NaN/Inf exactly where autograd through the grid_sample forward does.

    Exactly NaN for NaN inputs; for infinities the same non-finite positions (autograd sums ``m * go_c * dv_c``
    over channels where the analytic form computes ``m * sum_c go_c * dv_c``, so one may give NaN where the other
    gives an infinity).

    (Before: a corner outside the image read its clamped index times 0, so NaN/Inf landed in arbitrary grad_input
    rows and in the offset/mask gradients of samples that never read them.)
    """
    x, off, mask, grad, args = nonfinite_case(poisoned, value, softmax)
    leaves = [t.clone().requires_grad_() for t in (x, off, mask)]
    out = dcnv3_reference(*leaves, args)
    expected = torch.autograd.grad(out, leaves, grad)
    got = dcnv3_reference_backward(grad, x, off, mask, args)
    # A logit of -inf is a weight of exactly 0: the one case that stays finite.
    assert torch.isfinite(out).all().item() == (poisoned == "mask" and value == -INF and softmax)
    for name, g, e in zip(("grad_input", "grad_offset", "grad_mask"), got, expected):
        assert_same_nonfinite(name, g, e, rtol=1e-10, atol=1e-10, kinds=value != value)


def test_reference_nonfinite_rule_by_hand():
    """One sample at a NaN or Inf location: the output of its (pixel, group) is NaN; it reads and writes no pixel;
    its mask gradient is NaN and its offset gradient NaN in the component that multiplies the non-finite
    fraction (the x derivative of the bilinear sample uses only y fractions and vice versa), 0 in the other."""
    x, off, mask, grad, args = nonfinite_case("input", 1.0, softmax=False)  # all finite
    p = args.num_points
    for value in (NAN, INF, -INF):
        bad = off.clone()
        bad[0, 1, 2, 2 * p + 2 * 4] = value  # group 1, centre point, x
        out = dcnv3_reference(x, bad, mask, args)
        assert out[0, 1, 2, 3:].isnan().all() and torch.isfinite(out[0, 1, 2, :3]).all()
        assert (torch.isfinite(out).sum() == out.numel() - 3).item()
        grad_x, grad_off, grad_mask = dcnv3_reference_backward(grad, x, bad, mask, args)
        # grad_input is that of the same op with the sample's weight set to 0.
        silenced = mask.clone()
        silenced[0, 1, 2, p + 4] = 0
        torch.testing.assert_close(grad_x, dcnv3_reference_backward(grad, x, off, silenced, args)[0])
        assert grad_mask[0, 1, 2, p + 4].isnan() and torch.isfinite(grad_mask).sum() == grad_mask.numel() - 1
        assert grad_off[0, 1, 2, 2 * p + 9].isnan() and grad_off[0, 1, 2, 2 * p + 8] == 0
        assert torch.isfinite(grad_off).sum() == grad_off.numel() - 1


def test_reference_nonfinite_mask_counts_even_outside():
    """A NaN weight makes its output NaN even when its sample falls outside the image (0 * NaN, as in
    ``mask * grid_sample(...)``), and so its offset gradient; its own mask gradient stays 0 there."""
    x, off, mask, grad, args = nonfinite_case("input", 1.0, softmax=False)
    off[0, 0, 0, :2] = -40.0  # group 0, point 0: far outside
    mask[0, 0, 0, 0] = NAN
    out = dcnv3_reference(x, off, mask, args)
    assert out[0, 0, 0, :3].isnan().all() and torch.isfinite(out).sum() == out.numel() - 3
    grad_x, grad_off, grad_mask = dcnv3_reference_backward(grad, x, off, mask, args)
    assert torch.isfinite(grad_x).all() and grad_mask[0, 0, 0, 0] == 0
    assert grad_off[0, 0, 0, :2].isnan().all() and torch.isfinite(grad_off).sum() == grad_off.numel() - 2


def test_export_mode_nests_and_keeps_the_dcn_op_only_when_asked():
    """``ops.export_mode`` is the one export switch: nested blocks inherit ``dcn_custom_op``; exported graphs hold
    ``internimage::dcnv3`` only with it, the grid_sample reference otherwise."""
    assert current_export_mode() is None
    with export_mode(dcn_custom_op=True):
        with export_mode() as inner:
            assert inner.dcn_custom_op
            with export_mode(dcn_custom_op=False):
                assert not current_export_mode().dcn_custom_op
        assert current_export_mode().dcn_custom_op
    assert current_export_mode() is None

    x, off, mask, args = _rand_case(n=1, h=4, w=4, d=2)

    class Op(torch.nn.Module):
        def forward(self, a, b, c):
            return _call(a, b, c, args)

    for keep in (False, True):
        with export_mode(dcn_custom_op=keep):
            program = torch.export.export(Op(), (x, off, mask))
        targets = {str(node.target) for node in program.graph.nodes}
        assert ("internimage.dcnv3.default" in targets) == keep, targets
        assert any("grid_sampler" in t for t in targets) == (not keep), targets
