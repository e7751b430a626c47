"""Registering a differentiable ``torch.library`` custom op whose backward is itself a custom op.

Every op of this package (DCNv3, DCNv4, and any other sampling op with static scalar arguments) is registered the
same way: a forward op ``ns::name(tensors..., scalars...) -> Tensor``, a backward op
``ns::name_backward(grad_output, tensors..., scalars...) -> (Tensor, ...)`` with one gradient per tensor, fake
(meta) kernels for both so ``torch.compile`` / ``torch.export`` can trace them, and the autograd formula that
connects them. :func:`differentiable_op` writes that once; the schema's scalar part is given as text (e.g.
:data:`DCN_SCALARS`) instead of as a Python signature repeated per op.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence

import torch

from .args import DCNv3Args

__all__ = ["DCN_SCALARS", "differentiable_op", "dcn_scalars"]

_SCHEMA_TYPES = {int: "int", float: "float", bool: "bool"}


def dcn_scalars(softmax: bool = True) -> str:
    """Schema text of the :class:`~internimage.ops.args.DCNv3Args` fields (without ``softmax`` if not asked), then
    ``str backend``: the static arguments of the DCN ops, in that order."""
    fields = [name for name in DCNv3Args._fields if softmax or name != "softmax"]
    types = typing.get_type_hints(DCNv3Args)
    return ", ".join([*(f"{_SCHEMA_TYPES[types[name]]} {name}" for name in fields), "str backend"])


#: The 12 DCNv3 scalars and the backend name, as schema text.
DCN_SCALARS = dcn_scalars()


def differentiable_op(
    qualname: str,
    tensors: Sequence[str],
    scalars: str,
    forward: Callable[..., torch.Tensor],
    backward: Callable[..., tuple[torch.Tensor, ...]],
    forward_fake: Callable[..., torch.Tensor],
) -> tuple[torch.library.CustomOpDef, torch.library.CustomOpDef]:
    """Register ``qualname`` and ``qualname + '_backward'`` and the autograd formula that connects them.

    Args:
        qualname: ``"namespace::name"``.
        tensors: Names of the tensor inputs, in order; each gets a gradient.
        scalars: Schema text of the non-tensor inputs that follow them, e.g. :data:`DCN_SCALARS`.
        forward: ``(*tensors, *scalars) -> Tensor``.
        backward: ``(grad_output, *tensors, *scalars) -> tuple`` of one gradient per tensor, shaped like it.
        forward_fake: Meta kernel of ``forward``: an empty tensor of the output's shape, dtype and device.

    Returns:
        ``(forward_op, backward_op)``.
    """
    tensor_args = ", ".join(f"Tensor {name}" for name in tensors)
    gradients = ", ".join("Tensor" for _ in tensors)
    forward_op = torch.library.custom_op(
        qualname, forward, mutates_args=(), schema=f"({tensor_args}, {scalars}) -> Tensor"
    )
    backward_op = torch.library.custom_op(
        f"{qualname}_backward",
        backward,
        mutates_args=(),
        schema=f"(Tensor grad_output, {tensor_args}, {scalars}) -> ({gradients})",
    )
    forward_op.register_fake(forward_fake)
    count = len(tensors)

    @backward_op.register_fake
    def _backward_fake(grad_output, *inputs):
        return tuple(t.new_empty(t.shape) for t in inputs[:count])

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs[:count])
        ctx.static = inputs[count:]

    def autograd_backward(ctx, grad_output):
        grads = backward_op(grad_output.contiguous(), *ctx.saved_tensors, *ctx.static)
        return (*grads, *([None] * len(ctx.static)))

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)
    return forward_op, backward_op
