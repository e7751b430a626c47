"""The ``cpu`` backend: fused, multithreaded C++ kernels of the DCNv3 forward and backward.

The source (``csrc/dcnv3_cpu.cpp``) is compiled on first use and cached by
:class:`~internimage.ops.cpp_build.CppKernel` (the build rule shared by every C++ kernel of the package). If the
build fails, :func:`available` warns once and returns ``False``, and ``auto`` falls back to ``reference``.

The kernels compute one pass per output pixel and group: P sampling locations, bilinear weights times mask (or
the softmax of the mask logits, computed in the same pass), and a D-wide accumulation; offset and mask may be
pixel-strided views (read in place); the backward scatters ``grad_input`` without atomics, either into (image,
group-range) slices owned by one thread or into per-thread buffers summed at the end. Half precision is loaded,
computed in float32 and stored back.
"""

from __future__ import annotations

import logging

import torch

from .args import DCNv3Args
from .backends import Backend
from .cpp_build import CppKernel

__all__ = ["BACKEND", "KERNEL", "available", "extension_name"]

logger = logging.getLogger(__name__)

_SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

KERNEL = CppKernel("dcnv3_cpu.cpp", "DCNv3 CPU kernel", logger)
"""The extension holding ``internimage_cpu::dcnv3_forward`` / ``dcnv3_backward``."""


def extension_name() -> str:
    """Name of the compiled extension: a hash of everything that changes the binary."""
    return KERNEL.extension_name()


def available() -> bool:
    """Build (first call only) and load the kernel; ``False`` with one warning if that is impossible here."""
    return KERNEL.available()


def _require() -> None:
    if not available():
        raise RuntimeError("DCN backend 'cpu' is not available: its C++ kernel could not be built")


def forward(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    args: DCNv3Args,
    offset_group_stride: int = 0,
    mask_group_stride: int = 0,
) -> torch.Tensor:
    """Fused DCNv3 forward on CPU.

    Args:
        input: (N, H, W, G*D) features, any strides.
        offset: (N, Ho, Wo, G*P*2) offsets [g][p][x, y]; pixel-strided views are read in place.
        mask: (N, Ho, Wo, G*P) point weights (logits with ``args.softmax``); strides as for ``offset``.
        args: Operator arguments.
        offset_group_stride: Elements between the offsets of consecutive groups within a pixel, when they are not
            packed (0: packed, 2P); the offset tensor's last dim is then (G-1)*stride + 2P wide. DCNv4's fused
            layout reads as offset_group_stride = mask_group_stride = 3P.
        mask_group_stride: The same for the mask (0: packed, P).

    Returns:
        (N, Ho, Wo, G*D) in ``input.dtype``.
    """
    _require()
    return torch.ops.internimage_cpu.dcnv3_forward(input, offset, mask, *args, offset_group_stride, mask_group_stride)


def backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    args: DCNv3Args,
    mode: int = 0,
    offset_group_stride: int = 0,
    mask_group_stride: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused DCNv3 backward on CPU.

    Args:
        grad_output: (N, Ho, Wo, G*D) gradient of the output.
        input: (N, H, W, G*D) features of the forward.
        offset: (N, Ho, Wo, G*P*2) offsets of the forward.
        mask: (N, Ho, Wo, G*P) point weights of the forward.
        args: Operator arguments.
        mode: How ``grad_input`` is scattered without atomics: 0 chooses, 1 makes each thread own whole
            (image, group-range) slices, 2 gives each thread a private input-sized buffer (summed at the end).
            For benchmarks and tests; the results agree up to summation order.
        offset_group_stride: As in :func:`forward`.
        mask_group_stride: As in :func:`forward`.

    Returns:
        ``(grad_input, grad_offset, grad_mask)``: like ``input``; packed (N, Ho, Wo, G*P*2) and (N, Ho, Wo, G*P) in
        the dtypes of ``offset`` and ``mask``.
    """
    _require()
    grad_input, grad_offset, grad_mask = torch.ops.internimage_cpu.dcnv3_backward(
        grad_output, input, offset, mask, *args, mode, offset_group_stride, mask_group_stride
    )
    return grad_input, grad_offset.to(offset.dtype), grad_mask.to(mask.dtype)


def _supports(device_type: str, dtype: torch.dtype) -> bool:
    return device_type == "cpu" and dtype in _SUPPORTED


BACKEND = Backend(name="cpu", forward=forward, backward=backward, supports=_supports, available=available)
