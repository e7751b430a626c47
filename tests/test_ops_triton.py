"""Triton DCNv3 backend: forward and all three gradients against the float64 reference.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set per test with
``monkeypatch`` so nothing else in the session sees it; the backend builds its kernels per interpreter mode, so the
order in which tests import things does not matter). The interpreter is ~400x slower than eager PyTorch: every
case here has at most a few hundred output pixels. On a CUDA machine the same cases also run compiled.
A last group of tests compiles the kernels for an sm_90 target, which needs no GPU, to catch code that the
interpreter accepts but the compiler rejects.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import torch

from conftest import NAMES, POISON_IDS, POISONS, assert_same_nonfinite, nonfinite_case
from internimage.ops import dcnv3, dcnv3_reference, dcnv3_reference_backward, make_args
from internimage.ops.args import DCNv3Args
from internimage.ops.backends import resolve_backend

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

D64 = torch.float64
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["interpret", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU"))]


@pytest.fixture
def triton_mod():
    from internimage.ops import triton_dcnv3

    return triton_dcnv3


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch, triton_mod) -> str:
    """'cpu' with TRITON_INTERPRET=1 and small interpreter tiles (several programs per launch), or 'cuda'."""
    if request.param == "interpret":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setattr(triton_mod, "_INTERPRET_TILE", 256)
        return "cpu"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return "cuda"


def _case(
    n=2, h=6, w=7, group=3, d=5, k=3, stride=1, pad=1, dil=1, scale=1.0, rc=False, spread=2.0, seed=0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, DCNv3Args]:
    """Random float64 (input, offset, mask, grad_output, args) on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    args = make_args(k, stride, pad, dil, group, scale, rc)
    ho, wo = args.output_size(h, w)
    p = args.num_points
    x = torch.randn(n, h, w, group * d, generator=gen, dtype=D64)
    off = torch.randn(n, ho, wo, group * p * 2, generator=gen, dtype=D64) * spread
    mask = torch.rand(n, ho, wo, group * p, generator=gen, dtype=D64)
    grad = torch.randn(n, ho, wo, group * d, generator=gen, dtype=D64)
    return x, off, mask, grad, args


# Each case is small: N*Ho*Wo <= ~100 output pixels.
CASES = {
    "k3_d5_g3": {},
    "stride2_dil2_k5_rc_scale2": dict(n=1, h=9, w=8, group=2, d=4, k=5, stride=2, pad=2, dil=2, scale=2.0, rc=True),
    "anisotropic": dict(n=1, h=7, w=9, group=2, d=3, k=(3, 5), stride=(2, 1), pad=(1, 2), dil=(1, 2), scale=0.5),
    "far_out_of_bounds": dict(n=2, h=5, w=6, group=2, d=6, spread=8.0),
    "d1_g1_pad0": dict(n=1, h=6, w=6, group=1, d=1, pad=0),
    "d33_g1": dict(n=1, h=5, w=4, group=1, d=33, seed=3),
    "d30_rc": dict(n=1, h=5, w=5, group=2, d=30, rc=True, scale=2.0, seed=4),
}


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs error relative to the largest reference magnitude (robust to near-zero entries)."""
    return ((actual.double().cpu() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def _check_all(x, off, mask, grad, args, device, dtype, tol):
    """Run forward + backward of the triton backend in ``dtype`` and compare with the float64 reference."""
    from internimage.ops.triton_dcnv3 import BACKEND

    # The reference sees exactly the values the backend sees (rounded to dtype), computed in float64.
    x, off, mask, grad = (t.to(dtype) for t in (x, off, mask, grad))
    ref_out = dcnv3_reference(x.double(), off.double(), mask.double(), args)
    ref_grads = dcnv3_reference_backward(grad.double(), x.double(), off.double(), mask.double(), args)
    dev = [t.to(device) for t in (x, off, mask, grad)]
    out = BACKEND.forward(dev[0], dev[1], dev[2], args)
    grads = BACKEND.backward(dev[3], dev[0], dev[1], dev[2], args)
    assert out.dtype == dtype and out.shape == ref_out.shape and out.device.type == device
    for got, like in zip(grads, (x, off, mask)):
        assert got.dtype == like.dtype and got.shape == like.shape
    names = ("output", "grad_input", "grad_offset", "grad_mask")
    errors = {name: _rel_err(a, e) for name, a, e in zip(names, (out, *grads), (ref_out, *ref_grads))}
    assert all(err <= tol for err in errors.values()), f"{dtype} relative errors {errors} exceed {tol}"


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_float64_reference(case, device):
    _check_all(*_case(**CASES[case]), device, torch.float32, tol=1e-4)


@pytest.mark.parametrize("case", ["k3_d5_g3", "stride2_dil2_k5_rc_scale2", "far_out_of_bounds"])
def test_fp64_matches_reference_tightly(case, device):
    _check_all(*_case(**CASES[case]), device, torch.float64, tol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ["k3_d5_g3", "stride2_dil2_k5_rc_scale2"])
def test_half_types_accumulate_in_fp32(case, dtype, tol, device):
    _check_all(*_case(**CASES[case]), device, dtype, tol=tol)


def test_int64_index_path(device, monkeypatch, triton_mod):
    """Tensors of >= 2**30 elements switch the kernels to int64 indexing; force that path on a tiny case."""
    monkeypatch.setattr(triton_mod, "_INT32_LIMIT", 0)
    _check_all(*_case(**CASES["stride2_dil2_k5_rc_scale2"]), device, torch.float32, tol=1e-4)


def test_non_contiguous_inputs(device):
    x, off, mask, grad, args = _case(n=2, h=5, w=6, group=2, d=3)
    # Same values, exotic strides: a transposed input, offsets and masks sliced out of wider buffers.
    x_nc = x.transpose(1, 2).contiguous().transpose(1, 2)
    off_nc = torch.cat((off, torch.full_like(off, 1e6)), dim=-1)[..., : off.shape[-1]]
    mask_nc = torch.stack((mask, -mask), dim=-1)[..., 0]
    grad_nc = grad.transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(t.is_contiguous() for t in (x_nc, off_nc, mask_nc, grad_nc))
    _check_all(x_nc, off_nc, mask_nc, grad_nc, args, device, torch.float32, tol=1e-4)


def test_through_public_op_and_autograd(device):
    x, off, mask, grad, args = _case(n=1, h=6, w=5, group=2, d=4, scale=2.0)
    assert resolve_backend("triton", device, torch.float32) == "triton"

    def run(backend, dtype, dev):
        leaves = [t.to(device=dev, dtype=dtype).requires_grad_() for t in (x, off, mask)]
        out = dcnv3(*leaves, 3, 1, 1, 1, args.group, args.offset_scale, backend=backend)
        out.backward(grad.to(device=dev, dtype=dtype))
        return [out.detach(), *(t.grad for t in leaves)]

    for got, expected in zip(run("triton", torch.float32, device), run("reference", D64, "cpu")):
        assert got.dtype == torch.float32
        assert _rel_err(got, expected) <= 1e-4


def test_empty_batch(device):
    from internimage.ops.triton_dcnv3 import BACKEND

    x, off, mask, grad, args = _case(n=1, h=5, w=5, group=2, d=3)
    x, off, mask, grad = (t[:0].float().to(device) for t in (x, off, mask, grad))
    assert BACKEND.forward(x, off, mask, args).shape == (0, 5, 5, 6)
    assert [g.shape for g in BACKEND.backward(grad, x, off, mask, args)] == [x.shape, off.shape, mask.shape]


def test_launch_config_tiles(triton_mod):
    for d in (1, 3, 5, 16, 30, 64, 1025):
        for backward in (False, True):
            cfg = triton_mod._launch_config(10_000, d, backward, interpret=False)
            assert cfg["BLOCK_D"] >= d and cfg["BLOCK_D"] & (cfg["BLOCK_D"] - 1) == 0
            assert cfg["BLOCK_R"] >= 1 and cfg["BLOCK_R"] & (cfg["BLOCK_R"] - 1) == 0
            assert cfg["BLOCK_R"] * cfg["BLOCK_D"] <= max(2048, cfg["BLOCK_D"])
    # Never more rows per program than there are rows (rounded up to a power of two).
    assert triton_mod._launch_config(3, 16, False, interpret=False)["BLOCK_R"] == 4


def test_availability_without_interpreter(monkeypatch, triton_mod):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert triton_mod.available() == HAS_CUDA
    assert not triton_mod.supports("cpu", torch.float32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert triton_mod.supports("cuda", dtype)
    assert not triton_mod.supports("cuda", torch.int32)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_mod.available() and triton_mod.supports("cpu", torch.float32)


def test_import_is_lazy_and_survives_missing_triton():
    """With triton unimportable, the module imports, answers supports() and reports unavailable, never raising."""
    # (Checking sys.modules for 'triton' would prove nothing: torch._dynamo, pulled in by torchvision/timm, imports
    # triton itself. Blocking the import instead shows this module never needs it at import time.)
    code = (
        "import os, sys; sys.modules['triton'] = None; import torch; import internimage.ops.triton_dcnv3 as m; "
        "assert m.supports('cuda', torch.float16) and not m.available(); "
        "os.environ['TRITON_INTERPRET'] = '1'; assert not m.available(); "
        "from internimage.ops.backends import resolve_backend; "
        "assert resolve_backend('auto', 'cuda', torch.float32) == 'reference'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# --- softmax over the points, and pixel-strided offset/mask views ------------------------------------------------


def _softmax_reference(x, off, logits, grad, args):
    """Float64 output and gradients (input, offset, logits) of softmax-then-DCNv3, composed in the test.

    ``torch.softmax`` under autograd feeds the plain reference (``softmax=False``); the DCN gradients come from the
    analytic reference backward (itself checked against autograd in ``test_ops.py``) and autograd carries the mask
    gradient back through the softmax. So the fused kernels are checked against an independent formulation. (Autograd
    through ``grid_sample`` is avoided: at offsets that round to integers, as fp16 offsets do, the one-sided derivative
    it takes can differ from the operator's.)
    """
    n, ho, wo, _ = off.shape
    g, p = args.group, args.num_points
    plain = args._replace(softmax=False)
    x, off, grad = (t.detach().double() for t in (x, off, grad))
    logits = logits.detach().double().requires_grad_()
    probs = torch.softmax(logits.reshape(n, ho, wo, g, p), dim=-1).reshape(n, ho, wo, g * p)
    out = dcnv3_reference(x, off, probs.detach(), plain)
    grad_x, grad_off, grad_probs = dcnv3_reference_backward(grad, x, off, probs.detach(), plain)
    (grad_logits,) = torch.autograd.grad(probs, logits, grad_probs)
    return out, grad_x, grad_off, grad_logits


def _check_softmax(x, off, mask, grad, args, device, dtype, tol):
    """Triton backend with ``softmax=True`` in ``dtype`` vs the float64 composed reference (logits from ``mask``)."""
    from internimage.ops.triton_dcnv3 import BACKEND

    args = args._replace(softmax=True)
    logits = (mask - 0.5) * 6.0  # logits in [-3, 3]: probabilities from ~0.3% to ~90% of a row
    x, off, logits, grad = (t.to(dtype) for t in (x, off, logits, grad))
    expected = _softmax_reference(x, off, logits, grad, args)
    dev = [t.to(device) for t in (x, off, logits, grad)]
    out = BACKEND.forward(dev[0], dev[1], dev[2], args)
    grads = BACKEND.backward(dev[3], dev[0], dev[1], dev[2], args)
    assert out.dtype == dtype and all(got.dtype == dtype for got in grads)
    assert [got.shape for got in grads] == [x.shape, off.shape, logits.shape]
    names = ("output", "grad_input", "grad_offset", "grad_logits")
    errors = {name: _rel_err(a, e) for name, a, e in zip(names, (out, *grads), expected)}
    assert all(err <= tol for err in errors.values()), f"softmax {dtype} relative errors {errors} exceed {tol}"
    # Logit gradients of a softmax sum to zero over each row's points: a check independent of the reference.
    row_sums = grads[2].double().cpu().reshape(*logits.shape[:3], args.group, -1).sum(-1)
    assert row_sums.abs().max().item() <= tol * expected[3].abs().max().item() * args.num_points


@pytest.mark.parametrize("case", ["k3_d5_g3", "stride2_dil2_k5_rc_scale2", "d30_rc"])
def test_softmax_fp32_matches_float64_reference(case, device):
    _check_softmax(*_case(**CASES[case]), device, torch.float32, tol=1e-4)


@pytest.mark.parametrize("case", ["k3_d5_g3", "stride2_dil2_k5_rc_scale2"])
def test_softmax_fp64_matches_reference_tightly(case, device):
    _check_softmax(*_case(**CASES[case]), device, torch.float64, tol=1e-10)


@pytest.mark.parametrize("cancelling", [False, True], ids=["random", "cancelling"])
def test_softmax_fp16_keeps_logit_gradient_accurate(device, cancelling):
    """grad_prob stays in fp32 between the two backward passes, so the cancelling logit gradient is not fp16 noise."""
    if not cancelling:
        _check_softmax(*_case(**CASES["k3_d5_g3"]), device, torch.float16, tol=5e-3)
        return
    # Nearly constant features sampled at in-image pixels (pad 0, zero offsets): every grad_prob_p is about
    # 20 * sum(grad_out) and prob_p * (grad_prob_p - sum_j prob_j * grad_prob_j) keeps only their small differences,
    # which rounding grad_prob to fp16 (relative 5e-4) would swamp.
    x, off, mask, grad, args = _case(n=1, h=7, w=8, group=3, d=5, pad=0, seed=7)
    _check_softmax(20.0 + 0.05 * x, torch.zeros_like(off), mask, grad, args, device, torch.float16, tol=5e-3)


def test_softmax_extreme_logits_stay_finite(device):
    """Max-subtraction keeps exp() finite for logits of +-1e4 (a naive exp overflows fp32 to inf and gives NaN)."""
    x, off, mask, grad, args = _case(n=1, h=4, w=4, group=2, d=3, seed=5)
    _check_softmax(x, off, (mask - 0.5) * (1e4 / 3.0) + 0.5, grad, args, device, torch.float32, tol=1e-4)


def _fused_views(off: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``off`` and ``mask`` as slices of one (N, Ho, Wo, 3GP) tensor, like the DCNv3 module's fused projection."""
    fused = torch.cat((off, mask), dim=-1)
    views = fused[..., : off.shape[-1]], fused[..., off.shape[-1] :]
    assert not any(v.is_contiguous() for v in views)
    return views


@pytest.mark.parametrize("softmax", [False, True], ids=["weights", "softmax"])
def test_pixel_strided_views_match_contiguous_copies(device, triton_mod, softmax):
    x, off, mask, grad, args = _case(n=2, h=5, w=4, group=2, d=3, rc=True, seed=6)
    args = args._replace(softmax=softmax)
    x, off, mask, grad = (t.float().to(device) for t in (x, off, mask, grad))
    off_view, mask_view = _fused_views(off, mask)
    assert triton_mod._pixel_strided(off_view)[1] == triton_mod._pixel_strided(mask_view)[1] == off.shape[-1] * 3 // 2
    contiguous = [
        triton_mod.BACKEND.forward(x, off, mask, args),
        *triton_mod.BACKEND.backward(grad, x, off, mask, args),
    ]
    strided = [
        triton_mod.BACKEND.forward(x, off_view, mask_view, args),
        *triton_mod.BACKEND.backward(grad, x, off_view, mask_view, args),
    ]
    for name, got, expected in zip(("output", "grad_input", "grad_offset", "grad_mask"), strided, contiguous):
        assert got.is_contiguous() and got.shape == expected.shape, name
        if name == "grad_input" and device == "cuda":  # atomics: summation order differs between launches
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(got, expected), name


def test_pixel_strided_int64_path(device, monkeypatch, triton_mod):
    """The int64 index path with strided views and softmax, against the float64 reference."""
    monkeypatch.setattr(triton_mod, "_INT32_LIMIT", 0)
    x, off, mask, grad, args = _case(**CASES["stride2_dil2_k5_rc_scale2"])
    logits = (mask - 0.5) * 6.0
    off_view, logits_view = _fused_views(off.float(), logits.float())
    args = args._replace(softmax=True)
    expected = _softmax_reference(x.float(), off_view, logits_view, grad.float(), args)
    dev = [t.to(device) for t in (x.float(), off_view, logits_view, grad.float())]
    got = [triton_mod.BACKEND.forward(*dev[:3], args), *triton_mod.BACKEND.backward(dev[3], *dev[:3], args)]
    for a, e in zip(got, expected):
        assert _rel_err(a, e) <= 1e-4


def test_pixel_stride_rule(triton_mod):
    """Equally spaced pixels with a contiguous last dim are read in place; anything else is copied contiguous."""
    fused = torch.zeros(2, 3, 4, 15)
    view, stride = triton_mod._pixel_strided(fused[..., 5:])
    assert view.data_ptr() == fused[..., 5:].data_ptr() and stride == 15
    plain = torch.zeros(2, 3, 4, 10)
    assert triton_mod._pixel_strided(plain) == (plain, 10)
    # Channel-strided (stride(3) != 1) and row-padded (pixels not equally spaced) layouts are copied.
    for layout in (torch.zeros(2, 3, 4, 10, 2)[..., 0], torch.zeros(2, 3, 5, 10)[:, :, :4]):
        copy, stride = triton_mod._pixel_strided(layout)
        assert copy.is_contiguous() and copy.data_ptr() != layout.data_ptr() and stride == 10
    # A contiguous tensor may carry any stride on a size-1 dim: its pixel stride is still the width.
    odd = torch.empty_strided((2, 3, 1, 4), (12, 4, 7, 1))
    assert odd.is_contiguous() and triton_mod._pixel_strided(odd)[1] == 4


# --- GPU code generation, checked without a GPU ------------------------------------------------------------------

_TYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def _compile_for_sm90(triton_mod, backward: bool, dtype: torch.dtype, args: DCNv3Args, d: int = 16) -> str:
    """Compile one kernel for an H100 target exactly as a launch would specialise it; return its PTX."""
    nvidia = pytest.importorskip("triton.backends.nvidia", reason="triton has no NVIDIA backend")
    del nvidia
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    h = w = 14
    ho, wo = args.output_size(h, w)
    x = torch.empty(2, h, w, args.group * d, dtype=dtype)
    off = torch.empty(2, ho, wo, args.group * args.num_points * 2, dtype=dtype)
    mask = torch.empty(2, ho, wo, args.group * args.num_points, dtype=dtype)
    _, scalars, meta = triton_mod._launch_args(x, off, args, backward=backward, interpret=False)
    forward_kernel, backward_kernel = triton_mod._jit_kernels(False)
    kernel = backward_kernel if backward else forward_kernel
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tensors = [x, x, off, mask, x.to(acc), off, mask] if backward else [x, off, mask, x]
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, [*tensors, *scalars])):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPE_NAMES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # what a launch infers for torch's 16-byte-aligned buffers
        else:
            signature[name] = "fp32" if isinstance(value, float) else "i32"
    for name in kernel.arg_names[len(signature) :]:
        signature[name] = "constexpr"
        constexprs[name] = meta[name]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": meta["num_warps"]})
    return compiled.asm["ptx"]


@pytest.mark.parametrize("softmax", [False, True], ids=["weights", "softmax"])
@pytest.mark.parametrize(
    "backward,dtype", [(False, torch.bfloat16), (True, torch.float32)], ids=["forward-bf16", "backward-fp32"]
)
def test_kernels_compile_for_sm90(monkeypatch, triton_mod, backward, dtype, softmax):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = make_args(3, 1, 1, 1, group=4, remove_center=True, softmax=softmax)
    ptx = _compile_for_sm90(triton_mod, backward, dtype, args)
    # D=16 groups must gather whole 16-byte vectors per thread (the DCNv4 access pattern), not scalars.
    assert re.search(r"ld\.global[\w.:]*\.v4\.b32", ptx)
    if backward:
        assert re.search(r"(atom|red)\.global[\w.:]*add[\w.:]*f32", ptx)
    if softmax and backward:
        assert "bar.sync" in ptx  # the barrier between the grad_prob stores and their reloads


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=["fp16", "fp64"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_kernels_compile_for_sm90_other_dtypes(monkeypatch, triton_mod, backward, dtype):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = make_args((3, 5), 2, (1, 2), (1, 2), group=1, offset_scale=2.0, softmax=True)
    monkeypatch.setattr(triton_mod, "_INT32_LIMIT", 0)
    assert _compile_for_sm90(triton_mod, backward, dtype, args, d=30)


# --- NaN and Inf ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("softmax", [False, True], ids=["weights", "softmax"])
@pytest.mark.parametrize("poisoned,value", POISONS, ids=POISON_IDS)
def test_nonfinite_values_propagate_like_the_reference(poisoned, value, softmax, device):
    """NaN/Inf in input, offset or mask give NaN (non-finite for Inf) exactly where the float64 reference does,
    in the output and all three gradients; before, the clamp of the sampling position hid NaN/Inf offsets."""
    from internimage.ops.triton_dcnv3 import BACKEND

    x, off, mask, grad, args = nonfinite_case(poisoned, value, softmax)
    expected = [dcnv3_reference(x, off, mask, args), *dcnv3_reference_backward(grad, x, off, mask, args)]
    dev = [t.to(device) for t in (x, off, mask, grad)]
    got = [BACKEND.forward(*dev[:3], args), *BACKEND.backward(dev[3], *dev[:3], args)]
    for name, g, e in zip(NAMES, got, expected):
        assert_same_nonfinite(name, g, e, rtol=1e-10, atol=1e-10, kinds=value != value)
