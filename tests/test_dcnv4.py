"""DCNv4 op, module, FlashInternImage variants and InternImage's ``use_dcn_v4_op``.

The op is checked against a naive float64 loop written from the layout description (``ORIGINAL.md`` §4), on every
CPU backend (``reference``, ``cpu``; ``triton`` through Triton's interpreter on tiny shapes), for random shapes
(hypothesis), strides, dilations, kernel 5, non-power-of-two group widths, far-out-of-bounds offsets, batch 0/1,
fp32/fp16/bf16, all gradients and gradcheck.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import POISON_IDS, POISONS, assert_same_nonfinite, nonfinite_case
from internimage import create_model
from internimage.models import ARCHS
from internimage.ops import DCNv3, DCNv4, available_backends, dcnv3, dcnv4, make_args, pack_offset_mask
from internimage.ops.dcnv4 import offset_mask_channels, split_offset_mask
from internimage.ops.reference import dcnv3_reference, dcnv3_reference_backward

D64 = torch.float64
CPU_BACKENDS = available_backends("cpu", torch.float32)  # reference, and cpu where the C++ kernel builds
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _case(
    n=2, h=5, w=6, group=2, d=3, k=3, stride=1, pad=1, dil=1, scale=1.0, rc=False, spread=2.0, seed=0, width=None
):
    """Random float64 (input, offset_mask, args); padding columns hold garbage that the op must ignore."""
    gen = torch.Generator().manual_seed(seed)
    args = make_args(k, stride, pad, dil, group, scale, rc)
    ho, wo = args.output_size(h, w)
    p = args.num_points
    width = offset_mask_channels(group, p) if width is None else width
    x = torch.randn(n, h, w, group * d, generator=gen, dtype=D64)
    om = torch.randn(n, ho, wo, width, generator=gen, dtype=D64) * spread
    om[..., 3 * group * p :] = 1e6
    return x, om, args


def _call(x, om, args, backend="reference"):
    return dcnv4(
        x,
        om,
        (args.kernel_h, args.kernel_w),
        (args.stride_h, args.stride_w),
        (args.pad_h, args.pad_w),
        (args.dilation_h, args.dilation_w),
        args.group,
        args.offset_scale,
        args.remove_center,
        backend=backend,
    )


def _naive(x: torch.Tensor, om: torch.Tensor, args) -> torch.Tensor:
    """Loop-by-loop float64 DCNv4 from the layout: group g reads om[3Pg : 3Pg+2P] as (x, y) pairs, then P masks."""
    x, om = x.double(), om.double()
    n, h, w, c = x.shape
    _, ho, wo, _ = om.shape
    g, p = args.group, args.num_points
    d = c // g
    cx, cy = args.dilation_w * (args.kernel_w - 1) // 2, args.dilation_h * (args.kernel_h - 1) // 2
    points = [(i, j) for i in range(args.kernel_w) for j in range(args.kernel_h)]  # x outer
    if args.remove_center:
        del points[len(points) // 2]
    out = torch.zeros(n, ho, wo, c, dtype=D64)
    for b in range(n):
        for yo in range(ho):
            for xo in range(wo):
                for gi in range(g):
                    row = om[b, yo, xo, 3 * p * gi : 3 * p * (gi + 1)]
                    acc = torch.zeros(d, dtype=D64)
                    for k, (i, j) in enumerate(points):
                        base_x, base_y = xo * args.stride_w - args.pad_w + cx, yo * args.stride_h - args.pad_h + cy
                        lx = base_x + (i * args.dilation_w - cx + row[2 * k]) * args.offset_scale
                        ly = base_y + (j * args.dilation_h - cy + row[2 * k + 1]) * args.offset_scale
                        if not (-1 < lx < w and -1 < ly < h):
                            continue
                        x0, y0 = math.floor(lx), math.floor(ly)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                weight = (1 - abs(lx - xx)) * (1 - abs(ly - yy))
                                acc += row[2 * p + k] * weight * x[b, yy, xx, gi * d : (gi + 1) * d]
                    out[b, yo, xo, gi * d : (gi + 1) * d] = acc
    return out


CASES = {
    "k3": {},
    "stride2_dil2_k5_rc_scale2": dict(n=1, h=9, w=8, group=2, d=4, k=5, stride=2, pad=2, dil=2, scale=2.0, rc=True),
    "anisotropic": dict(n=1, h=7, w=9, group=2, d=3, k=(3, 5), stride=(2, 1), pad=(1, 2), dil=(1, 2), scale=0.5),
    "far_out_of_bounds": dict(n=2, h=5, w=6, group=2, d=6, spread=30.0),
    "d5_g3_wide_buffer": dict(group=3, d=5, width=96),
    "n1_pad0": dict(n=1, h=6, w=6, group=1, d=1, pad=0),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_naive_layout_loop(case, backend):
    x, om, args = _case(**CASES[case])
    torch.testing.assert_close(_call(x, om, args, backend), _naive(x, om, args), rtol=1e-10, atol=1e-10)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 2),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    group=st.integers(1, 3),
    d=st.sampled_from([1, 3, 5, 16]),
    k=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 2),
    dil=st.integers(1, 2),
    scale=st.sampled_from([0.5, 1.0, 2.0]),
    spread=st.sampled_from([0.5, 3.0, 40.0]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_all_backends_forward_and_gradients(n, h, w, group, d, k, stride, dil, scale, spread, seed):
    pad = (k // 2) * dil
    x, om, args = _case(n, h, w, group, d, k, stride, pad, dil, scale, spread=spread, seed=seed)
    grad = torch.randn(n, *args.output_size(h, w), group * d, dtype=D64)
    leaves = [t.clone().requires_grad_() for t in (x, om)]
    # Autograd through slicing + the float64 grid_sample reference is the independent gradient oracle.
    from internimage.ops import dcnv3_reference

    offset, mask = split_offset_mask(leaves[1], group, args.num_points)
    expected = dcnv3_reference(leaves[0], offset, mask, args)
    expected_grads = torch.autograd.grad(expected, leaves, grad) if n else [torch.zeros_like(t) for t in leaves]
    for backend in CPU_BACKENDS:
        got_leaves = [t.clone().requires_grad_() for t in (x, om)]
        out = _call(*got_leaves, args, backend)
        out.backward(grad)
        torch.testing.assert_close(out.detach(), expected.detach(), rtol=1e-9, atol=1e-9)
        for got, want in zip((t.grad for t in got_leaves), expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
        # Padding columns never influence anything.
        assert not got_leaves[1].grad[..., 3 * group * args.num_points :].any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["k3", "stride2_dil2_k5_rc_scale2", "far_out_of_bounds"])
def test_gradcheck(case, backend):
    params = {**CASES[case], "n": 1, "d": 2}
    x, om, args = _case(**params)
    om[..., 3 * args.group * args.num_points :] = 0.0
    inputs = (x.requires_grad_(), om.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: _call(a, b, args, backend), inputs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_matches_float64(backend, dtype, tol):
    x, om, args = _case(n=2, h=6, w=7, group=2, d=16, spread=1.5)
    om[..., 3 * args.group * args.num_points :] = 0.0
    x, om = x.to(dtype), om.to(dtype)  # the reference sees exactly the rounded values
    grad = torch.randn(2, 6, 7, 32).to(dtype)
    leaves = [t.clone().requires_grad_() for t in (x, om)]
    out = _call(*leaves, args, backend)
    out.backward(grad)
    ref_leaves = [t.double().requires_grad_() for t in (x, om)]
    ref = _call(*ref_leaves, args, "reference")
    ref.backward(grad.double())
    assert out.dtype == dtype and leaves[0].grad.dtype == dtype and leaves[1].grad.dtype == dtype
    for got, want in ((out, ref), (leaves[0].grad, ref_leaves[0].grad), (leaves[1].grad, ref_leaves[1].grad)):
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err <= tol, f"{backend} {dtype}: relative error {err:.2e} > {tol}"


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_backend_in_interpreter(monkeypatch):
    from internimage.ops import triton_dcnv3

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_dcnv3, "_INTERPRET_TILE", 256)
    for params in (dict(n=1, h=4, w=5, group=2, d=3), dict(n=1, h=6, w=5, group=2, d=4, k=5, stride=2, pad=2, rc=True)):
        x, om, args = _case(**params)
        grad = torch.randn(1, *args.output_size(x.shape[1], x.shape[2]), x.shape[3], dtype=torch.float32)
        results = {}
        for backend, dtype in (("triton", torch.float32), ("reference", D64)):
            leaves = [t.to(dtype).requires_grad_() for t in (x, om)]
            out = _call(*leaves, args, backend)
            out.backward(grad.to(dtype))
            results[backend] = [out.detach(), *(t.grad for t in leaves)]
        for got, want in zip(results["triton"], results["reference"]):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_batch_zero_non_contiguous_and_equivalence_with_dcnv3():
    x, om, args = _case(group=3, d=4)
    assert _call(x[:0], om[:0], args).shape == (0, *x.shape[1:])
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    om_nc = torch.cat((om, om), dim=-1)[..., : om.shape[-1]]
    assert not (xt.is_contiguous() or om_nc.is_contiguous())
    torch.testing.assert_close(_call(xt, om_nc, args), _call(x, om, args))
    offset, mask = split_offset_mask(om, 3, 9)
    torch.testing.assert_close(pack_offset_mask(offset, mask, 3)[..., :81], om[..., :81])
    torch.testing.assert_close(_call(x, om, args), dcnv3(x, offset, mask, 3, 1, 1, 1, 3))


def test_opcheck_and_compile():
    x, om, args = _case(n=1, h=4, w=4, d=2)
    torch.library.opcheck(torch.ops.internimage.dcnv4.default, (x, om, *args[:-1], "reference"))
    compiled = torch.compile(lambda a, b: _call(a, b, args), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, om), _call(x, om, args))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda x, om: (x[..., :-1], om), "not divisible by group"),
        (lambda x, om: (x, om[..., :5]), "offset_mask must have shape"),
        (lambda x, om: (x, om[:, :-1]), "offset_mask must have shape"),
        (lambda x, om: (x[0], om), "4-D NHWC"),
        (lambda x, om: (x, om.long()), "floating point"),
    ],
)
def test_bad_inputs_raise_one_line_errors(mutate, message):
    x, om, args = _case()
    with pytest.raises(ValueError, match=message) as info:
        _call(*mutate(x, om), args)
    assert "\n" not in str(info.value)


def test_env_override_selects_the_backend(monkeypatch):
    dcnv4_module = sys.modules["internimage.ops.dcnv4"]  # the package attribute of that name is the function

    seen = []
    # The backend name is the last argument of the op and of the body that eager inference calls directly.
    for name in ("_dcnv4_op", "_forward"):
        monkeypatch.setattr(dcnv4_module, name, lambda *a, name=name: seen.append((name, a[-1])) or torch.zeros(1))
    x, om, args = _case()
    monkeypatch.setenv("INTERNIMAGE_DCN_BACKEND", "reference")
    _call(x, om, args, backend=None)
    _call(x.requires_grad_(), om, args, backend=None)
    assert seen == [("_forward", "reference"), ("_dcnv4_op", "reference")]


# ---------------------------------------------------------------------------------------------------- module
def test_module_parameter_names_shapes_and_token_layouts():
    torch.manual_seed(0)
    module = DCNv4(channels=32, group=2, dw_kernel_size=3, output_bias=False).double()
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "offset_mask_dw.weight": (32, 1, 3, 3),
        "offset_mask_dw.bias": (32,),
        "offset_mask.weight": (56, 32),  # ceil(3 * 2 * 9 / 8) * 8
        "offset_mask.bias": (56,),
        "value_proj.weight": (32, 32),
        "value_proj.bias": (32,),
        "output_proj.weight": (32, 32),
    }
    assert not module.offset_mask.weight.any() and not module.offset_mask.bias.any()
    assert "offset_mask_dw" not in dict(DCNv4(channels=32, group=2).named_modules())
    with torch.no_grad():
        module.offset_mask.weight.normal_(0, 0.1)
        module.offset_mask.bias.normal_(0, 0.5)
    x = torch.randn(2, 4, 5, 32, dtype=D64)
    nhwc = module(x)
    torch.testing.assert_close(module(x.reshape(2, 20, 32), shape=(4, 5)), nhwc.reshape(2, 20, 32))
    # By hand: value_proj, offset_mask(dw(x)) used without softmax, output_proj.
    with torch.no_grad():
        om = module.offset_mask(module.offset_mask_dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        by_hand = module.output_proj(dcnv4(module.value_proj(x), om, 3, 1, 1, 1, 2))
        torch.testing.assert_close(nhwc, by_hand)
    with pytest.raises(ValueError, match="pass shape"):
        module(x.reshape(2, 20, 32))


def test_module_without_pointwise_and_center_feature_scale():
    module = DCNv4(channels=16, group=1, without_pointwise=True)
    assert {k.split(".")[0] for k in module.state_dict()} == {"offset_mask"}
    gated = DCNv4(channels=16, group=1, center_feature_scale=True).double()
    with torch.no_grad():
        gated.center_feature_scale_proj_bias.fill_(100.0)  # gate saturates: output = output_proj(value_proj(x))
    x = torch.randn(1, 3, 3, 16, dtype=D64)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), gated.output_proj(gated.value_proj(x)))


# ---------------------------------------------------------------------------------------------------- models
FLASH = {
    "flash_intern_image_t_1k_224": ("flash_t", 64, 4, None, 1.0, False),
    "flash_intern_image_s_1k_224": ("flash_s", 80, 5, 3, 1.0, False),
    "flash_intern_image_b_1k_224": ("flash_b", 112, 7, 3, 0.5, False),
    "flash_intern_image_l_22kto1k_384": ("flash_l", 160, 10, 3, 2.0, True),
}


@pytest.mark.parametrize("name", list(FLASH))
def test_flash_variants_official_layout(name):
    arch_name, c, g0, dw, offset_scale, biases = FLASH[name]
    with torch.device("meta"):
        model = create_model(name)
    sd = model.state_dict()
    b = "levels.0.blocks.0."
    assert sd[b + "dcn.offset_mask.weight"].shape == (math.ceil(27 * g0 / 8) * 8, c)
    assert sd[b + "dcn.value_proj.weight"].shape == (c, c)
    assert (b + "dcn.offset_mask_dw.weight" in sd) == (dw is not None)
    assert (b + "dcn.output_proj.bias" in sd) == biases and (b + "mlp.fc2.bias" in sd) == biases
    assert not any(".dw_conv." in k or ".dcn.offset." in k or ".dcn.mask." in k for k in sd)
    assert all(m.offset_scale == offset_scale for m in model.modules() if isinstance(m, DCNv4))
    assert ("levels.0.norm.0.weight" in sd) == (arch_name == "flash_t")  # post_norm for S/B/L
    assert sd["conv_head.0.weight"].shape == (12 * c, 8 * c, 1, 1)
    assert ARCHS[arch_name].core_op == "DCNv4"
    if name == "flash_intern_image_t_1k_224":
        # README: FlashInternImage-T 30M (InternImage-T 29.9M: no dw conv/LN, fused offset_mask, no fc2/out biases).
        assert 29.5e6 < sum(p.numel() for p in model.parameters()) < 30.0e6


def _tiny_flash(**kw):
    return create_model(
        "flash_intern_image_s_1k_224", channels=16, depths=(1, 1, 2, 1), groups=(1, 2, 4, 8), num_classes=10, **kw
    )


def test_tiny_flash_model_trains_and_exposes_features():
    torch.manual_seed(0)
    model = _tiny_flash(drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # Zero-initialised offset_mask (masks start at 0) must still receive gradient.
    assert model.levels[0].blocks[0].dcn.offset_mask.weight.grad.abs().sum() > 0
    maps = model.eval().forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    with pytest.raises(ValueError, match="core_op"):
        _tiny_flash(core_op="DCNv5")


def test_use_dcn_v4_op_gives_the_dcnv3_outputs_on_a_whole_model():
    """InternImage with the DCNv4 kernel (softmax before the op) loads the same weights and computes the same."""
    torch.manual_seed(0)
    v3 = create_model("internimage_test_post_32").double()
    for module in v3.modules():  # random offsets/masks so the test is not at the trivial init
        if isinstance(module, DCNv3):
            torch.nn.init.normal_(module.offset.weight, std=0.5)
            torch.nn.init.normal_(module.mask.weight, std=0.5)
    v4 = create_model("internimage_test_post_32", use_dcn_v4_op=True).double()
    v4.load_state_dict(v3.state_dict(), strict=True)
    assert all(m.use_dcn_v4_op for m in v4.modules() if isinstance(m, DCNv3))
    x = torch.randn(2, 3, 32, 32, dtype=D64)
    outs, grads = [], []
    for model in (v3.eval(), v4.eval()):
        out = model(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, rtol=1e-8, atol=1e-10, msg=key)
    with pytest.raises(ValueError, match="use_dcn_v4_op"):
        _tiny_flash(use_dcn_v4_op=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("poisoned,value", POISONS, ids=POISON_IDS)
def test_nonfinite_values_propagate_like_the_dcnv3_reference(poisoned, value, backend):
    """NaN/Inf in input, offsets or masks of the fused tensor: output and gradients are non-finite exactly where
    the float64 DCNv3 reference's are (NaN where NaN), through the public op and autograd."""
    x, off, mask, grad, args = nonfinite_case(poisoned, value, softmax=False)
    om = pack_offset_mask(off, mask, args.group)
    leaves = [t.clone().requires_grad_() for t in (x, om)]
    out = _call(*leaves, args, backend)
    out.backward(grad)
    ref_grads = dcnv3_reference_backward(grad, x, off, mask, args)
    expected_om = pack_offset_mask(ref_grads[1], ref_grads[2], args.group)
    pairs = ((out, dcnv3_reference(x, off, mask, args)), (leaves[0].grad, ref_grads[0]), (leaves[1].grad, expected_om))
    for name, (got, want) in zip(("output", "grad_input", "grad_offset_mask"), pairs):
        assert_same_nonfinite(name, got, want, rtol=1e-10, atol=1e-10, kinds=value != value)
