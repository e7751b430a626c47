"""oneDNN linear layers on CPU: fused ``act(x @ W.T + b)`` / ``x @ W.T + b + residual`` for inference, and a
oneDNN-backed ``nn.Linear`` equivalent for training.

On CPU, eager ``nn.Linear`` goes through MKL ``addmm`` (which first copies the broadcast bias into the output) and
the GELU and the residual add are separate passes over memory. oneDNN's matmul with a post-op (the kernel
``torch.compile`` itself emits for CPU, ``mkldnn::_linear_pointwise``) does each in one pass; on InternImage-T
shapes it is 10-25% faster per layer (``benchmarks/models.py`` measures the whole model). Results equal the
unfused computation up to float rounding (the test checks 1e-5).

The post-op fusions run only without autograd recording. With autograd, :class:`_OneDnnLinear` computes the
forward and the input gradient with oneDNN (30% faster than MKL ``mm`` for the tall-skinny input gradients of
stage 1) and the weight gradient with ``mm`` (faster there). Both paths need CPU float32 tensors, autocast off,
and no ``torch.compile`` / export tracing (the compiler fuses by itself and export must see standard ops);
everything else takes the plain PyTorch path. ``INTERNIMAGE_FUSED_LINEAR=0`` disables them.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

__all__ = ["fused_linear", "fused_mlp", "fusion_enabled", "onednn_eligible", "onednn_linear", "onednn_matmul"]

_ENV = "INTERNIMAGE_FUSED_LINEAR"

# fused_mlp runs in row chunks when the hidden activation would exceed this: written and read back whole, a
# 25 MB hidden (InternImage-T stage 1 at batch 8) falls out of the 32 MB L3 shared with everything else, and the
# MLP measured 1.3x slower than in 4096-row chunks; below ~16 MB chunks gained nothing or lost a little.
MLP_CHUNK_ABOVE_BYTES = 16 << 20
MLP_CHUNK_ROWS = 4096


@functools.cache
def _onednn_available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _tracing() -> bool:
    # Exported / traced graphs must hold standard ops only, whatever the grad mode the tracer runs in. The
    # TorchScript ONNX exporter traces with torch.jit (is_tracing) and the dynamo one exports (is_exporting), so
    # torch.onnx.is_in_onnx_export (1.3 us, a sixth of a small layer's Python cost) is not needed here.
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.jit.is_tracing() or (is_exporting is not None and is_exporting())


def fusion_enabled(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`fused_linear` takes the fused (inference) oneDNN path for these tensors right now."""
    return not torch.is_grad_enabled() and onednn_eligible(x, weight)


def onednn_eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN may compute ``x @ weight.T`` here: CPU float32, no autocast, no compiler tracing."""
    if x.dtype != torch.float32 or weight.dtype != x.dtype or x.device.type != "cpu":
        return False
    if torch.compiler.is_compiling() or _tracing() or torch.is_autocast_enabled("cpu"):
        return False
    if os.environ.get(_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _onednn_available()


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gelu: bool = False,
    residual: torch.Tensor | None = None,
    eligible: bool | None = None,
) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` or ``x @ weight.T + bias + residual``, fused on CPU inference.

    Args:
        x: (..., K) input.
        weight: (M, K) weight.
        bias: (M,) bias or None.
        gelu: Apply the exact (erf) GELU to the result. Not combinable with ``residual``.
        residual: (..., M) tensor added to the result.
        eligible: :func:`onednn_eligible` for these tensors, when the caller already knows it (modules decide once
            per forward for all their layers: the check is a few microseconds of Python each time).

    Returns:
        (..., M) tensor.
    """
    if gelu and residual is not None:
        raise ValueError("fused_linear: gelu and residual cannot be combined")
    if eligible is None:
        eligible = onednn_eligible(x, weight)
    if eligible and not torch.is_grad_enabled() and (residual is None or residual.shape[:-1] == x.shape[:-1]):
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none")
    out = onednn_linear(x, weight, bias) if eligible else F.linear(x, weight, bias)
    if gelu:
        return F.gelu(out)
    return out if residual is None else out + residual


def fused_mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``gelu(x @ w1.T + b1) @ w2.T + b2 (+ residual)`` by oneDNN, in row chunks when the hidden layer is large.

    Call only where :func:`fusion_enabled` holds (CPU float32 inference).

    Args:
        x: (..., C) input; w1: (H, C); b1: (H,) or None; w2: (C2, H); b2: (C2,) or None.
        residual: optional (..., C2) added to the output.

    Returns:
        (..., C2).
    """
    rows = x.numel() // x.shape[-1]
    if rows * w1.shape[0] * x.element_size() <= MLP_CHUNK_ABOVE_BYTES:
        hidden = fused_linear(x, w1, b1, gelu=True, eligible=True)
        return fused_linear(hidden, w2, b2, residual=residual, eligible=True)
    x2 = x.reshape(rows, x.shape[-1])
    res2 = None if residual is None else residual.reshape(rows, residual.shape[-1])
    out = x.new_empty(rows, w2.shape[0])
    for start in range(0, rows, MLP_CHUNK_ROWS):
        part = slice(start, start + MLP_CHUNK_ROWS)
        hidden = fused_linear(x2[part], w1, b1, gelu=True, eligible=True)
        out[part] = fused_linear(hidden, w2, b2, residual=None if res2 is None else res2[part], eligible=True)
    return out.view(*x.shape[:-1], w2.shape[0])


def onednn_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` by oneDNN, outside autograd (``weight`` may be a transposed view). CPU float32 only."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")


class _OneDnnLinear(torch.autograd.Function):
    """``F.linear`` with oneDNN for the forward and the input gradient, ``mm`` for the weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_matmul(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if need[0]:
            grad_x = onednn_matmul(grad, weight.t())
        g2 = grad.reshape(-1, grad.shape[-1])
        if need[1]:
            grad_w = g2.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and need[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed by oneDNN (differentiable). Call only if :func:`onednn_eligible`.

    Args:
        x: (..., K); weight: (M, K); bias: (M,) or None.

    Returns:
        (..., M).
    """
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return _OneDnnLinear.apply(x, weight, bias)
    return onednn_matmul(x, weight, bias)
