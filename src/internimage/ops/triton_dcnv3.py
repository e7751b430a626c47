"""The Triton backend of DCNv3: fused forward and backward kernels for CUDA (fp32, fp16, bf16, fp64).

Importing this module imports neither Triton nor the kernels; both happen at the first call of
:func:`available`, :func:`dcnv3_triton` or :func:`dcnv3_triton_backward`. With ``TRITON_INTERPRET=1`` in the
environment the backend also accepts CPU tensors and runs the kernels in Triton's interpreter, which is how the
tests check them on machines without a GPU (slow: use tiny shapes).

Numerics follow :mod:`internimage.ops.reference`: geometry and accumulation in fp32 (fp64 for fp64 tensors),
results cast back to the tensors' dtypes. ``grad_input`` is accumulated with atomic adds into an fp32 (fp64) buffer,
so its low bits depend on the order of the atomics (not bitwise deterministic), as in the original CUDA op.

Kernel layout and design notes live in :mod:`internimage.ops._triton_dcnv3_kernels`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import types
from typing import Any

import torch

from .args import DCNv3Args
from .backends import Backend

__all__ = ["BACKEND", "dcnv3_triton", "dcnv3_triton_backward", "available", "supports"]

logger = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_TRUE = ("1", "true", "yes", "on", "y")

# Tile sizes, in elements of the (BLOCK_R, BLOCK_D) register tile of one program. The backward keeps the
# grad-output tile and four corner tiles live at once, hence the smaller tile. The interpreter pays a fixed cost
# per program, so it gets fewer, larger programs. Tests shrink _INTERPRET_TILE to exercise multi-program grids.
_FORWARD_TILE = 2048
_BACKWARD_TILE = 1024
_INTERPRET_TILE = 4096
# Tensors at least this large switch the kernels to int64 index arithmetic (leaves 2x headroom below 2**31 for
# the corner indices of samples just outside the image). Tests lower it to exercise the int64 path.
_INT32_LIMIT = 2**30


def _interpreting() -> bool:
    """Whether Triton will interpret kernels on the CPU (``TRITON_INTERPRET``), read without importing Triton."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


@functools.cache
def _available(interpret: bool) -> bool:
    try:
        import triton  # noqa: F401
    except Exception as err:  # ImportError, or a broken installation raising anything at import
        logger.debug("DCN triton backend unavailable: cannot import triton (%s)", err)
        return False
    if interpret:
        return True
    try:
        ok = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception as err:
        logger.debug("DCN triton backend unavailable: CUDA query failed (%s)", err)
        return False
    if not ok:
        logger.debug("DCN triton backend unavailable: no CUDA device")
    return ok


def available() -> bool:
    """Whether the Triton backend can run in this process (cached per interpreter mode; never raises)."""
    return _available(_interpreting())


def supports(device_type: str, dtype: torch.dtype) -> bool:
    """CUDA tensors of fp32/fp16/bf16/fp64; CPU tensors too when ``TRITON_INTERPRET=1``."""
    if dtype not in _DTYPES:
        return False
    return device_type == "cuda" or (device_type == "cpu" and _interpreting())


@functools.cache
def _jit_kernels(interpret: bool) -> tuple[Any, Any]:
    # `interpret` is only the cache key: triton.jit reads the mode itself, and returns an interpreted or a compiled
    # kernel accordingly, so one process can hold both.
    import triton

    from . import _triton_dcnv3_kernels as kernels

    # Triton would specialise each int argument on "divisible by 16" and "== 1", compiling up to 2**6 variants as
    # image sizes vary (detection). Alignment of the gathered D-vectors already follows from the constexpr
    # GROUP_CHANNELS and 16-byte-aligned pointers, so the sizes stay plain runtime ints.
    # The pixel strides of offset and mask vary with how the caller sliced them, so they stay dynamic too.
    dynamic = ["rows", "groups", "height", "width", "out_h", "out_w", "offset_stride", "mask_stride"]
    # The kernels find their device functions among their globals: give them a copy of the module's namespace in
    # which those are jitted in this mode (a module-level @triton.jit would freeze one mode for the process).
    namespace = dict(vars(kernels))
    namespace.update({name: triton.jit(getattr(kernels, name)) for name in kernels.HELPERS})

    def bind(fn):
        return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)

    return (
        triton.jit(bind(kernels.dcnv3_forward_kernel), do_not_specialize=dynamic),
        triton.jit(bind(kernels.dcnv3_backward_kernel), do_not_specialize=dynamic),
    )


def _triton_interpreting() -> bool:
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return _interpreting()


def _next_pow2(value: int) -> int:
    return 1 << max(int(value) - 1, 0).bit_length()


def _launch_config(rows: int, group_channels: int, backward: bool, interpret: bool) -> dict[str, int]:
    """Pick BLOCK_R, BLOCK_D and num_warps for ``rows`` rows of ``group_channels`` channels."""
    # tl.arange needs a power of two; 4 keeps tiny groups on the well-trodden vectorised path.
    block_d = max(_next_pow2(group_channels), 4)
    tile = _INTERPRET_TILE if interpret else _BACKWARD_TILE if backward else _FORWARD_TILE
    block_r = max(1, min(tile // block_d, _next_pow2(rows)))
    elements = block_r * block_d
    num_warps = 8 if elements >= 4096 else 4 if elements >= 512 else 2 if elements >= 128 else 1
    return {"BLOCK_R": block_r, "BLOCK_D": block_d, "num_warps": num_warps}


def _pixel_strided(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``tensor`` (N, Ho, Wo, K) as the kernels read it, with its pixel stride (elements between pixels).

    A view whose last dim is contiguous and whose pixels are equally spaced (e.g. ``om[..., :2GP]`` of a fused
    (N, Ho, Wo, 3GP) projection) is used in place; anything else is copied contiguous (pixel stride K).
    """
    if (
        tensor.stride(3) == 1
        and tensor.stride(1) == tensor.size(2) * tensor.stride(2)
        and tensor.stride(0) == tensor.size(1) * tensor.stride(1)
    ):
        return tensor, tensor.stride(2)
    # The stride of a size-1 dim of a contiguous tensor is arbitrary, so the copy's stride is K, not stride(2).
    return tensor.contiguous(), tensor.size(3)


def _launch_args(
    input: torch.Tensor,
    offset: torch.Tensor,
    args: DCNv3Args,
    backward: bool,
    interpret: bool,
    offset_stride: int | None = None,
    mask_stride: int | None = None,
) -> tuple[tuple[int], list[Any], dict[str, Any]]:
    """Grid, runtime scalars and compile-time parameters shared by both kernels (tensors excluded).

    Args:
        input: (N, H, W, G*D) contiguous input.
        offset: (N, Ho, Wo, G*P*2) offsets (only the shape is used).
        args: Operator arguments.
        backward: Configure the backward kernel.
        interpret: Configure for Triton's interpreter.
        offset_stride: Pixel stride of the offsets; ``None`` means contiguous (2GP).
        mask_stride: Pixel stride of the mask; ``None`` means contiguous (GP).

    Returns:
        ``(grid, scalars, meta)``: scalars follow the tensor pointers in the kernel signature; meta holds the
        ``constexpr`` parameters and ``num_warps``.
    """
    import triton.language as tl

    n, h, w, c = input.shape
    _, ho, wo, _ = offset.shape
    group = args.group
    d = c // group
    rows = n * ho * wo * group
    config = _launch_config(rows, d, backward, interpret)
    num_points = args.num_points
    offset_stride = 2 * group * num_points if offset_stride is None else int(offset_stride)
    mask_stride = group * num_points if mask_stride is None else int(mask_stride)
    # Index spans, not element counts: a strided view reaches up to N*Ho*Wo*stride elements past its pointer.
    pixels = n * ho * wo
    largest = max(input.numel(), pixels * max(offset_stride, 2 * group * num_points), pixels * mask_stride, pixels * c)
    meta = {
        "GROUP_CHANNELS": d,
        "KERNEL_H": args.kernel_h,
        "KERNEL_W": args.kernel_w,
        "STRIDE_H": args.stride_h,
        "STRIDE_W": args.stride_w,
        "PAD_H": args.pad_h,
        "PAD_W": args.pad_w,
        "DIL_H": args.dilation_h,
        "DIL_W": args.dilation_w,
        "NUM_POINTS": num_points,
        # Points from the centre on are shifted by one when the centre is removed; otherwise never.
        "SKIP_FROM": (args.kernel_h * args.kernel_w) // 2 if args.remove_center else num_points + 1,
        "SOFTMAX": bool(args.softmax),
        "ACC": tl.float64 if input.dtype == torch.float64 else tl.float32,
        "USE_INT64": largest >= _INT32_LIMIT,
        **config,
    }
    grid = (-(-rows // config["BLOCK_R"]),)  # ceil(rows / BLOCK_R)
    scalars = [rows, group, h, w, ho, wo, float(args.offset_scale), offset_stride, mask_stride]
    return grid, scalars, meta


def _device_guard(tensor: torch.Tensor):
    # Triton launches on the current CUDA device; make it the tensors' device.
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def dcnv3_triton(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, args: DCNv3Args) -> torch.Tensor:
    """DCNv3 forward with the fused Triton kernel.

    Args:
        input: (N, H, W, G*D) features (any strides; made contiguous).
        offset: (N, Ho, Wo, G*P*2) offsets [g][p][x, y]; pixel-strided views (last dim contiguous, e.g. a slice of
            a fused offset/mask projection) are read in place, other layouts are copied.
        mask: (N, Ho, Wo, G*P) point weights, or their logits with ``args.softmax``; strides as for ``offset``.
        args: Operator arguments.

    Returns:
        (N, Ho, Wo, G*D) in ``input.dtype``.
    """
    input = input.contiguous()
    offset, offset_stride = _pixel_strided(offset)
    mask, mask_stride = _pixel_strided(mask)
    n, _, _, c = input.shape
    _, ho, wo, _ = offset.shape
    output = input.new_empty((n, ho, wo, c))
    if output.numel() == 0:
        return output.zero_()
    interpret = _triton_interpreting()
    forward_kernel, _ = _jit_kernels(interpret)
    grid, scalars, meta = _launch_args(input, offset, args, False, interpret, offset_stride, mask_stride)
    with _device_guard(input):
        forward_kernel[grid](input, offset, mask, output, *scalars, **meta)
    return output


def dcnv3_triton_backward(
    grad_output: torch.Tensor, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, args: DCNv3Args
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`dcnv3_triton` with respect to input, offset and mask.

    Args:
        grad_output: (N, Ho, Wo, G*D) gradient of the output.
        input: (N, H, W, G*D) features.
        offset: (N, Ho, Wo, G*P*2) offsets [g][p][x, y] (strides as in :func:`dcnv3_triton`).
        mask: (N, Ho, Wo, G*P) point weights, or their logits with ``args.softmax``.
        args: Operator arguments.

    Returns:
        ``(grad_input, grad_offset, grad_mask)`` shaped and typed like ``input``, ``offset`` and ``mask``, freshly
        allocated and contiguous; with ``args.softmax`` ``grad_mask`` is the gradient with respect to the logits.
    """
    grad_output = grad_output.contiguous()
    input = input.contiguous()
    offset, offset_stride = _pixel_strided(offset)
    mask, mask_stride = _pixel_strided(mask)
    accumulate = torch.float64 if input.dtype == torch.float64 else torch.float32
    # Atomics accumulate in fp32 (fp64) whatever the input dtype; fp32/fp64 inputs use the buffer as the result.
    grad_input = torch.zeros(input.shape, dtype=accumulate, device=input.device)
    grad_offset = torch.empty(offset.shape, dtype=offset.dtype, device=offset.device)
    # With softmax the kernel stores grad_prob here and reloads it for the logit gradient, whose sum cancels: keep
    # that intermediate in the accumulation dtype rather than rounding it to a half-precision mask dtype.
    grad_mask_dtype = accumulate if args.softmax and mask.dtype in (torch.float16, torch.bfloat16) else mask.dtype
    grad_mask = torch.empty(mask.shape, dtype=grad_mask_dtype, device=mask.device)
    if grad_output.numel() == 0:
        return grad_input.to(input.dtype), grad_offset.zero_(), grad_mask.zero_().to(mask.dtype)
    interpret = _triton_interpreting()
    _, backward_kernel = _jit_kernels(interpret)
    grid, scalars, meta = _launch_args(input, offset, args, True, interpret, offset_stride, mask_stride)
    with _device_guard(input):
        backward_kernel[grid](grad_output, input, offset, mask, grad_input, grad_offset, grad_mask, *scalars, **meta)
    return grad_input.to(input.dtype), grad_offset, grad_mask.to(mask.dtype)


BACKEND = Backend(
    name="triton",
    forward=dcnv3_triton,
    backward=dcnv3_triton_backward,
    supports=supports,
    available=available,
)
