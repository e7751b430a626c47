"""Fused linear layers for CPU inference: ``act(x @ W.T + b)`` and ``x @ W.T + b + residual`` in one oneDNN call.

On CPU, eager ``nn.Linear`` goes through MKL ``addmm`` (which first copies the broadcast bias into the output) and
the GELU and the residual add are separate passes over memory. oneDNN's matmul with a post-op (the kernel
``torch.compile`` itself emits for CPU, ``mkldnn::_linear_pointwise``) does each in one pass; on InternImage-T
shapes it is 10-25% faster per layer (``benchmarks/models.py`` measures the whole model). Results equal the
unfused computation up to float rounding (the test checks 1e-5).

The fused path runs only where it cannot change semantics: no autograd recording, CPU float32 tensors, autocast
off, not under ``torch.compile`` / export tracing (the compiler fuses by itself and export must see standard ops).
Everything else takes the plain PyTorch path. ``INTERNIMAGE_FUSED_LINEAR=0`` disables it.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

__all__ = ["fused_linear", "fusion_enabled"]

_ENV = "INTERNIMAGE_FUSED_LINEAR"


@functools.cache
def _onednn_available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def fusion_enabled(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`fused_linear` takes the oneDNN path for these tensors right now."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != x.dtype:
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
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
) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` or ``x @ weight.T + bias + residual``, fused on CPU inference.

    Args:
        x: (..., K) input.
        weight: (M, K) weight.
        bias: (M,) bias or None.
        gelu: Apply the exact (erf) GELU to the result. Not combinable with ``residual``.
        residual: (..., M) tensor added to the result.

    Returns:
        (..., M) tensor.
    """
    if gelu and residual is not None:
        raise ValueError("fused_linear: gelu and residual cannot be combined")
    if fusion_enabled(x, weight) and (residual is None or residual.shape[:-1] == x.shape[:-1]):
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none")
    out = F.linear(x, weight, bias)
    if gelu:
        return F.gelu(out)
    return out if residual is None else out + residual
