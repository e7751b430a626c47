"""The ``cpu`` backend: fused, multithreaded C++ kernels of the DCNv3 forward and backward.

The source (``csrc/dcnv3_cpu.cpp``) is compiled on first use with :func:`torch.utils.cpp_extension.load`
(needs a C++ compiler and ``ninja``) and cached in torch's extension directory under a name that hashes the
source, the flags, the torch version and the CPU flags, so an edit, an upgrade or a different machine sharing
the cache rebuilds instead of loading a stale or illegal binary. Nothing is built at import time. If the build
fails, :func:`available` warns once and returns ``False``, and ``auto`` falls back to ``reference``.

The kernels compute one pass per output pixel and group: P sampling locations, bilinear weights times mask (or
the softmax of the mask logits, computed in the same pass), and a D-wide accumulation; offset and mask may be
pixel-strided views (read in place); the backward scatters ``grad_input`` without atomics, either into (image,
group-range) slices owned by one thread or into per-thread buffers summed at the end. Half precision is loaded,
computed in float32 and stored back.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from pathlib import Path

import torch

from .args import DCNv3Args
from .backends import Backend

__all__ = ["BACKEND", "available", "extension_name"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "dcnv3_cpu.cpp"
# -fopenmp makes at::parallel_for use torch's OpenMP pool (the library resolves to the libgomp torch loaded).
_CFLAGS = ("-O3", "-march=native", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
_SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_lock = threading.Lock()
_loaded: list[bool] = []  # empty until the first call of available(), then [result]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return ""


def extension_name() -> str:
    """Name of the compiled extension: a hash of everything that changes the binary."""
    digest = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), " ".join(_CFLAGS + _LDFLAGS).encode(), torch.__version__.encode()):
        digest.update(part)
    # -march=native binaries are only valid on CPUs with the same features.
    digest.update(_cpu_flags().encode())
    return f"internimage_dcnv3_cpu_{digest.hexdigest()[:16]}"


def _build() -> None:
    # Importing cpp_extension logs a CUDA_HOME warning on CPU-only machines; it is irrelevant to this build.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)

    cpp_extension.verify_ninja_availability()
    name = extension_name()
    # Said only when it compiles (once per source, flags, torch and CPU): a cached build just loads.
    if _is_built(cpp_extension, name):
        logger.debug("loading the DCNv3 CPU kernel %s", name)
    else:
        logger.info("building the DCNv3 CPU kernel %s (once, about a minute)", name)
    cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=list(_CFLAGS),
        extra_ldflags=list(_LDFLAGS),
        is_python_module=False,
        verbose=False,
    )


def _is_built(cpp_extension, name: str) -> bool:
    """Whether ``name`` is already compiled in torch's extension cache (then ``load`` only loads it)."""
    # torch adds a python/CUDA-version folder below the cache root unless TORCH_EXTENSIONS_DIR is set; its helper
    # for that path is private, so without it the build counts as not cached (the message is only a log line).
    build_directory = getattr(cpp_extension, "_get_build_directory", None)
    if build_directory is None:
        return False
    return Path(build_directory(name, verbose=False), f"{name}.so").is_file()


def available() -> bool:
    """Build (first call only) and load the kernel; ``False`` with one warning if that is impossible here."""
    if _loaded:
        return _loaded[0]
    with _lock:
        if not _loaded:
            try:
                _build()
                ok = True
            except Exception as err:  # noqa: BLE001 - any build failure means "use the reference"
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                warnings.warn(
                    f"internimage: cannot build the fused CPU DCNv3 kernel ({reason}); using the reference backend",
                    RuntimeWarning,
                    stacklevel=2,
                )
                ok = False
            _loaded.append(ok)
    return _loaded[0]


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
