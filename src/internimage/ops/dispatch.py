"""How a DCN call is routed: export mode, the eager fast path, the backend choice (shared by DCNv3 and DCNv4).

:func:`export_mode` is the one switch exporters use: inside it, model code that compares shapes does so
statically (see :func:`export_mode`), and with ``dcn_custom_op=True`` DCN calls stay ``internimage::dcnv3`` nodes
in exported graphs (for the TensorRT plugin) instead of tracing the ``grid_sample`` reference.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backends import resolve_backend

__all__ = [
    "CenterFeatureScaleModule",
    "ExportMode",
    "current_export_mode",
    "export_mode",
    "is_exporting",
    "plain_eager_inference",
    "resolve",
]


@dataclass(frozen=True)
class ExportMode:
    """The options of an :func:`export_mode` block.

    Attributes:
        dcn_custom_op: DCNv3 calls stay ``internimage::dcnv3`` custom-op nodes in exported graphs.
    """

    dcn_custom_op: bool = False


_MODE: contextvars.ContextVar[ExportMode | None] = contextvars.ContextVar("internimage_export_mode", default=None)


@contextlib.contextmanager
def export_mode(dcn_custom_op: bool | None = None) -> Iterator[ExportMode]:
    """Context manager around ``torch.export`` / ONNX export of this package's models.

    Inside it, (1) code that skips work when two sizes are equal compares them only when they are *statically*
    equal (e.g. UperNet's resize to the same size: a symbolic comparison would become a guard on the input size
    in the exported program), and (2) with ``dcn_custom_op=True`` DCNv3 calls stay ``internimage::dcnv3`` nodes.
    Blocks nest; ``dcn_custom_op=None`` keeps the enclosing block's choice. Per thread (a context variable).

    Example::

        with internimage.ops.export_mode(dcn_custom_op=True):
            program = torch.export.export(model, (images,))
    """
    outer = _MODE.get()
    keep = dcn_custom_op if dcn_custom_op is not None else outer is not None and outer.dcn_custom_op
    mode = ExportMode(dcn_custom_op=bool(keep))
    token = _MODE.set(mode)
    try:
        yield mode
    finally:
        _MODE.reset(token)


def current_export_mode() -> ExportMode | None:
    """The innermost active :func:`export_mode`, or ``None`` outside any."""
    return _MODE.get()


def is_exporting() -> bool:
    """Whether ONNX export or ``torch.export`` is tracing right now."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(torch.onnx.is_in_onnx_export() or (exporting is not None and exporting()))


def keep_dcn_custom_op() -> bool:
    """Inside ``export_mode(dcn_custom_op=True)``."""
    mode = _MODE.get()
    return mode is not None and mode.dcn_custom_op


@torch.compiler.assume_constant_result
def resolve(backend: str | None, device_type: str, dtype: torch.dtype) -> str:
    """:func:`~internimage.ops.backends.resolve_backend`, evaluated eagerly while torch.compile traces (it imports
    backend modules and reads the environment)."""
    return resolve_backend(backend, device_type, dtype)


def plain_eager_inference(*tensors: torch.Tensor) -> bool:
    """No autograd to record, no compiler or tracer watching, plain tensors: the custom op adds nothing here."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return all(type(t) is torch.Tensor for t in tensors)


class CenterFeatureScaleModule(nn.Module):
    """Per-group gate ``sigmoid(x @ W.T + b)`` of the original DCNv3/DCNv4 modules; a module for name
    compatibility."""

    def forward(self, query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(query, weight, bias).sigmoid()
