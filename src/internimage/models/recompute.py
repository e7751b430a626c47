"""Selective activation recomputation: keep the GEMM inputs, recompute the cheap elementwise activations.

Training memory of InternImage is dominated by saved activations. Two groups are cheap to rebuild and large to
keep: the MLP's GELU output (4C channels per pixel, the input fc2 saves) and the depthwise-conv branch of DCNv3
(conv output and LayerNorm output, 2C channels). Recomputing them in backward costs one GELU (and one depthwise
conv + LayerNorm + GELU) per block, no GEMM, and saves about a third of the activation memory
(``benchmarks/models.py`` reports both the memory and the time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.fused_linear import onednn_eligible, onednn_matmul

__all__ = ["gelu_mlp"]


class _GeluMlp(torch.autograd.Function):
    """``fc2(gelu(fc1(norm(x))))`` saving ``x`` and ``fc1``'s output only (plus the norm's mean and rstd).

    The GELU output and the LayerNorm output (when a norm is given) are recomputed in backward.
    """

    @staticmethod
    def forward(ctx, x, norm_w, norm_b, eps, w1, b1, w2, b2):
        ctx.norm = norm_w is not None
        # Autocast runs LayerNorm in fp32 (it is on autocast's fp32 list); do the same for half inputs.
        device = x.device.type
        low = x.dtype in (torch.float16, torch.bfloat16) and _autocast_on(device)
        ctx.norm_dtype = torch.float32 if low else x.dtype
        normed, mean, rstd = x, None, None
        if ctx.norm:
            normed, mean, rstd = _layer_norm(x, norm_w, norm_b, eps, ctx.norm_dtype)
        # oneDNN GEMMs on CPU fp32 (internimage.ops.fused_linear); under autocast the autocast dtype, like nn.Linear.
        ctx.onednn = onednn_eligible(normed, w1)
        linear = onednn_matmul if ctx.onednn else F.linear
        hidden = linear(normed, w1, b1)
        out = linear(F.gelu(hidden), w2, b2)
        ctx.save_for_backward(x, norm_w, norm_b, mean, rstd, w1, hidden, w2)
        ctx.eps = eps
        ctx.has_bias = (b1 is not None, b2 is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, norm_w, norm_b, mean, rstd, w1, hidden, w2 = ctx.saved_tensors
        dtype = hidden.dtype  # the forward GEMMs' compute dtype; gradients go back to each input's own dtype
        need = ctx.needs_input_grad
        grads: list[torch.Tensor | None] = [None] * 8
        grad_out = grad_out.to(dtype)
        go2 = grad_out.reshape(-1, grad_out.shape[-1])
        if need[6]:
            act = F.gelu(hidden)
            grads[6] = (go2.t() @ act.reshape(-1, act.shape[-1])).to(w2.dtype)
            del act  # keep at most two hidden-sized buffers alive
        if ctx.has_bias[1] and need[7]:
            grads[7] = go2.sum(0).to(w2.dtype)
        grad_hidden = onednn_matmul(grad_out, w2.t()) if ctx.onednn else grad_out @ w2.to(dtype)
        torch.ops.aten.gelu_backward.grad_input(grad_hidden, hidden, grad_input=grad_hidden)  # in place
        gh2 = grad_hidden.reshape(-1, grad_hidden.shape[-1])
        if ctx.has_bias[0] and need[5]:
            grads[5] = gh2.sum(0).to(w1.dtype)
        if need[4]:
            normed = x
            if ctx.norm:
                normed = _layer_norm(x, norm_w, norm_b, ctx.eps, ctx.norm_dtype)[0]
            grads[4] = (gh2.t() @ normed.to(dtype).reshape(-1, x.shape[-1])).to(w1.dtype)
            del normed
        if need[0] or need[1] or need[2]:
            grad_normed = onednn_matmul(grad_hidden, w1.t()) if ctx.onednn else (grad_hidden @ w1.to(dtype)).to(x.dtype)
            del grad_hidden, gh2
            if not ctx.norm:
                grads[0] = grad_normed
            else:
                nd = ctx.norm_dtype
                grads[0], grads[1], grads[2] = torch.ops.aten.native_layer_norm_backward(
                    grad_normed.to(nd),
                    x.to(nd),
                    [x.shape[-1]],
                    mean,
                    rstd,
                    norm_w.to(nd),
                    norm_b.to(nd),
                    list(need[:3]),
                )
                grads[0] = grads[0].to(x.dtype) if grads[0] is not None else None
                grads[1] = grads[1].to(norm_w.dtype) if grads[1] is not None else None
                grads[2] = grads[2].to(norm_b.dtype) if grads[2] is not None else None
        return tuple(grads)


def _autocast_on(device_type: str) -> bool:
    # is_autocast_enabled raises for device types without autocast (meta: timm builds models there).
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _layer_norm(x, weight, bias, eps, dtype):
    return torch.ops.aten.native_layer_norm(x.to(dtype), [x.shape[-1]], weight.to(dtype), bias.to(dtype), eps)


def gelu_mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    norm: torch.nn.LayerNorm | None = None,
) -> torch.Tensor:
    """``F.linear(F.gelu(F.linear(norm(x), w1, b1)), w2, b2)``, storing only ``x`` and the first GEMM's output.

    Args:
        x: (..., C) input.
        w1: (Hd, C) first weight; b1: (Hd,) or None.
        w2: (C2, Hd) second weight; b2: (C2,) or None.
        norm: Optional LayerNorm over C applied first (its output is recomputed in backward, not stored).

    Returns:
        (..., C2).
    """
    if norm is None:
        return _GeluMlp.apply(x, None, None, 0.0, w1, b1, w2, b2)
    return _GeluMlp.apply(x, norm.weight, norm.bias, norm.eps, w1, b1, w2, b2)
