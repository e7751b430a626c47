"""The fused C++ CPU backend of DCNv3 against the pure-PyTorch reference (forward and all three gradients)."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import NAMES, POISON_IDS, POISONS, assert_same_nonfinite, nonfinite_case, require_kernel
from internimage.ops import cpp_build, dcnv3, make_args, use_backend
from internimage.ops import cpu as cpu_backend
from internimage.ops.args import DCNv3Args
from internimage.ops.backends import resolve_backend
from internimage.ops.reference import dcnv3_reference, dcnv3_reference_backward


@pytest.fixture(scope="module", autouse=True)
def _kernel_built():
    """Build (or load) the extension once; skip the module only if it truly cannot be built here."""
    require_kernel(cpu_backend.available, "DCNv3 CPU extension")


def make_case(
    n: int,
    h: int,
    w: int,
    args: DCNv3Args,
    d: int,
    dtype: torch.dtype = torch.float64,
    offset_mult: float = 3.0,
    contiguous: bool | str = True,
    seed: int = 0,
):
    """Random (input, offset, mask, grad_output); non-contiguous views if asked.

    ``contiguous="packed"`` makes offset and mask the two halves of one (N, Ho, Wo, 3*G*P) tensor, the layout the
    DCNv3 module passes (pixel-strided views the kernels read in place). With ``args.softmax`` the mask is logits.
    """
    gen = torch.Generator().manual_seed(seed)
    ho, wo = args.output_size(h, w)
    c, gp = args.group * d, args.group * args.num_points
    if contiguous == "packed":
        x = torch.randn(n, h, w, c, generator=gen, dtype=torch.float64)
        packed = torch.randn(n, ho, wo, 3 * gp, generator=gen, dtype=torch.float64)
        packed[..., : 2 * gp] *= offset_mult
        grad = torch.randn(n, ho, wo, c, generator=gen, dtype=torch.float64)
        x, packed, grad = (t.to(dtype) for t in (x, packed, grad))
        offset, mask = packed.split((2 * gp, gp), -1)
        return x, offset, mask, grad
    elif contiguous:
        x = torch.randn(n, h, w, c, generator=gen, dtype=torch.float64)
        offset = torch.randn(n, ho, wo, 2 * gp, generator=gen, dtype=torch.float64) * offset_mult
        mask = torch.rand(n, ho, wo, gp, generator=gen, dtype=torch.float64)
        grad = torch.randn(n, ho, wo, c, generator=gen, dtype=torch.float64)
    else:
        # NCHW storage seen as NHWC, every other channel of a wider tensor, a transposed spatial view.
        x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).permute(0, 2, 3, 1)
        offset = torch.randn(n, ho, wo, 4 * gp, generator=gen, dtype=torch.float64)[..., ::2] * offset_mult
        mask = torch.rand(n, wo, ho, gp, generator=gen, dtype=torch.float64).transpose(1, 2)
        grad = torch.randn(n, ho, wo, 2 * c, generator=gen, dtype=torch.float64)[..., c:]
    return tuple(t.to(dtype) for t in (x, offset, mask, grad))


def reference64(x, offset, mask, grad, args):
    """Reference forward and gradients computed in float64 from the (possibly rounded) inputs."""
    x, offset, mask, grad = (t.double() for t in (x, offset, mask, grad))
    return dcnv3_reference(x, offset, mask, args), dcnv3_reference_backward(grad, x, offset, mask, args)


def check_against_reference(case, args, rtol, atol):
    x, offset, mask, grad = case
    ref_out, ref_grads = reference64(x, offset, mask, grad, args)
    out = cpu_backend.forward(x, offset, mask, args)
    grads = cpu_backend.backward(grad, x, offset, mask, args)
    assert out.dtype == x.dtype and out.shape == ref_out.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref_out, rtol=rtol, atol=atol)
    for name, got, want, like in zip(("input", "offset", "mask"), grads, ref_grads, (x, offset, mask)):
        assert got.dtype == like.dtype and got.shape == like.shape, name
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, msg=lambda m, n=name: f"grad_{n}: {m}")


@st.composite
def op_cases(draw):
    kernel = draw(st.sampled_from([1, 2, 3, 5]))
    remove_center = kernel in (3, 5) and draw(st.booleans())
    args = make_args(
        kernel_size=kernel,
        stride=draw(st.sampled_from([1, 2])),
        pad=draw(st.integers(0, 2)),
        dilation=draw(st.sampled_from([1, 2])),
        group=draw(st.integers(1, 3)),
        offset_scale=draw(st.sampled_from([0.5, 1.0, 2.0])),
        remove_center=remove_center,
        softmax=draw(st.booleans()),
    )
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    ho, wo = args.output_size(h, w)
    assume(ho >= 1 and wo >= 1)
    n = draw(st.integers(0, 2))
    d = draw(st.sampled_from([1, 2, 5, 16, 30, 33]))
    offset_mult = draw(st.sampled_from([0.0, 0.7, 3.0, 100.0]))  # x100 puts most samples far outside
    contiguous = draw(st.sampled_from([True, False, "packed"]))
    return n, h, w, args, d, offset_mult, contiguous, draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op_cases())
def test_float64_matches_reference(case):
    n, h, w, args, d, offset_mult, contiguous, seed = case
    tensors = make_case(n, h, w, args, d, torch.float64, offset_mult, contiguous, seed)
    check_against_reference(tensors, args, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, stride=2, pad=1, dilation=2, group=3, offset_scale=0.5),
        dict(kernel_size=5, stride=1, pad=2, dilation=1, group=2, offset_scale=2.0, remove_center=True),
        dict(kernel_size=3, stride=1, pad=1, dilation=1, group=4, offset_scale=1.0, remove_center=True),
    ],
)
@pytest.mark.parametrize("d", [5, 16, 30])
def test_float64_named_configurations(kwargs, d):
    args = make_args(**kwargs)
    check_against_reference(make_case(2, 9, 7, args, d, contiguous=False, seed=d), args, rtol=1e-10, atol=1e-10)


def test_far_out_of_bounds_offsets_give_zero_and_no_nan():
    args = make_args(3, 1, 1, 1, 2)
    x, offset, mask, grad = make_case(1, 5, 6, args, 4)
    offset = torch.full_like(offset, 1e6)
    out = cpu_backend.forward(x, offset, mask, args)
    grads = cpu_backend.backward(grad, x, offset, mask, args)
    assert torch.equal(out, torch.zeros_like(out))
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("d", [16, 7])
def test_float32_close_to_float64(d):
    args = make_args(3, 1, 1, 1, 4)
    case = make_case(2, 12, 10, args, d, torch.float32, offset_mult=2.0, seed=3)
    check_against_reference(case, args, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float64(dtype):
    args = make_args(3, 2, 1, 1, 2, offset_scale=1.0)
    case = make_case(2, 11, 9, args, 16, dtype, offset_mult=2.0, seed=5)
    # Inputs are rounded once (the reference gets the same rounded values); outputs round once more.
    check_against_reference(case, args, rtol=2e-2, atol=3e-2)


def test_backward_modes_and_thread_counts_agree():
    args = make_args(3, 1, 1, 1, 3)
    x, offset, mask, grad = make_case(3, 8, 8, args, 5, seed=11)
    expected = cpu_backend.backward(grad, x, offset, mask, args, mode=1)
    threads = torch.get_num_threads()
    try:
        for num_threads in (1, 2, 3):
            torch.set_num_threads(num_threads)
            out = cpu_backend.forward(x, offset, mask, args)
            torch.testing.assert_close(out, dcnv3_reference(x, offset, mask, args))
            for mode in (0, 1, 2):
                for got, want in zip(cpu_backend.backward(grad, x, offset, mask, args, mode=mode), expected):
                    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    finally:
        torch.set_num_threads(threads)


def test_batch_zero_through_public_op():
    args = make_args(3, 1, 1, 1, 2)
    x, offset, mask, _ = make_case(0, 5, 5, args, 3)
    leaves = [t.requires_grad_() for t in (x, offset, mask)]
    out = dcnv3(*leaves, 3, 1, 1, 1, 2, backend="cpu")
    assert out.shape == (0, 5, 5, 6)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.shape == t.shape for t in leaves)
    # The kernels themselves also accept empty batches.
    assert cpu_backend.forward(x.detach(), offset.detach(), mask.detach(), args).shape == (0, 5, 5, 6)


def test_gradcheck_public_op():
    args = make_args(3, 1, 1, 1, 2)
    x, offset, mask, _ = make_case(1, 4, 4, args, 3, offset_mult=0.8, seed=2)
    inputs = tuple(t.clone().requires_grad_() for t in (x, offset, mask))
    assert torch.autograd.gradcheck(lambda *t: dcnv3(*t, 3, 1, 1, 1, 2, backend="cpu"), inputs)


def test_opcheck_custom_op():
    args = make_args(3, 1, 1, 1, 2)
    x, offset, mask, _ = make_case(2, 5, 5, args, 4, torch.float32, offset_mult=1.5)
    inputs = (x.requires_grad_(), offset.requires_grad_(), mask.requires_grad_(), *args, "cpu")
    torch.library.opcheck(torch.ops.internimage.dcnv3.default, inputs)


def test_auto_selects_cpu_for_cpu_tensors():
    with use_backend("auto"):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            assert resolve_backend(None, "cpu", dtype) == "cpu"
    assert not cpu_backend.BACKEND.supports("cuda", torch.float32)
    assert not cpu_backend.BACKEND.supports("cpu", torch.int64)


def test_build_failure_warns_once_and_reports_unavailable(monkeypatch):
    def broken_build():
        raise OSError("no compiler\nsecond line")

    monkeypatch.setattr(cpu_backend.KERNEL, "build", broken_build)
    monkeypatch.setattr(cpu_backend.KERNEL, "_loaded", [])
    with pytest.warns(RuntimeWarning, match="no compiler") as record:
        assert cpu_backend.available() is False
        assert cpu_backend.available() is False
    assert len(record) == 1


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("softmax", [False, True])
def test_packed_views_and_fused_softmax_low_precision(dtype, tol, softmax):
    """The module's layout (offset/mask halves of one tensor, mask logits) in fp32/bf16 vs the float64 reference."""
    args = make_args(3, 1, 1, 1, 4, softmax=softmax)
    x, offset, mask, grad = make_case(2, 9, 8, args, 16, dtype, offset_mult=2.0, contiguous="packed")
    assert offset.stride(2) == mask.stride(2) == 3 * 4 * 9  # really read in place, not copied by the test
    check_against_reference((x, offset, mask, grad), args, rtol=tol, atol=tol)


def test_packed_views_are_read_in_place():
    """Strided halves give bit-identical results to contiguous copies (same arithmetic, different addressing)."""
    args = make_args(3, 1, 1, 1, 2, softmax=True)
    x, offset, mask, grad = make_case(1, 6, 7, args, 8, torch.float32, contiguous="packed")
    copies = (x, offset.contiguous(), mask.contiguous())
    assert torch.equal(cpu_backend.forward(x, offset, mask, args), cpu_backend.forward(*copies, args))
    for got, want in zip(cpu_backend.backward(grad, x, offset, mask, args), cpu_backend.backward(grad, *copies, args)):
        assert torch.equal(got, want)


def test_fused_softmax_extreme_logits_stay_finite():
    args = make_args(3, 1, 1, 1, 2, softmax=True)
    x, offset, mask, grad = make_case(1, 5, 6, args, 4, torch.float32)
    mask = (mask - 0.5) * 1e4  # exp would overflow / underflow without the max shift
    check_against_reference((x, offset, mask, grad), args, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("softmax", [False, True], ids=["weights", "softmax"])
@pytest.mark.parametrize("poisoned,value", POISONS, ids=POISON_IDS)
def test_nonfinite_values_propagate_like_the_reference(poisoned, value, softmax, dtype):
    """NaN/Inf in input, offset or mask give NaN/Inf exactly where the reference has them (output and all three
    gradients; an infinity may come out as NaN where the reference, associating differently, has an infinity);
    before, a NaN or Inf offset failed the inside test and its sample read as 0 with 0 gradients."""
    x, off, mask, grad, args = nonfinite_case(poisoned, value, softmax)
    x, off, mask, grad = (t.to(dtype) for t in (x, off, mask, grad))
    ref_out, ref_grads = reference64(x, off, mask, grad, args)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    got = [cpu_backend.forward(x, off, mask, args), *cpu_backend.backward(grad, x, off, mask, args)]
    for name, g, want in zip(NAMES, got, (ref_out, *ref_grads)):
        assert_same_nonfinite(name, g, want, rtol=tol, atol=tol, kinds=value != value)


def test_build_message_only_when_it_compiles(monkeypatch, caplog):
    """A cached kernel loads without an INFO line; only a real compile says so (once per build)."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: None)
    with caplog.at_level(logging.INFO, logger="internimage.ops.cpu"):
        cpu_backend.KERNEL.build()  # built by the module fixture: loads only
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]
        monkeypatch.setattr(cpp_build, "_is_built", lambda *args: False)
        cpu_backend.KERNEL.build()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(messages) == 1 and "building the DCNv3 CPU kernel" in messages[0]
