"""The one place where a DCN backend is chosen.

A backend is a :class:`Backend` record exposed as ``BACKEND`` by its module. Modules are imported lazily, so
importing :mod:`internimage` never compiles or imports an optional dependency. ``auto`` picks, in order:
``triton`` for CUDA tensors, ``cpu`` (the fused C++ kernel) for CPU tensors, then ``reference``. The environment
variable ``INTERNIMAGE_DCN_BACKEND`` (``auto|reference|cpu|triton``) or :func:`use_backend` overrides the choice.
A backend that cannot run (missing compiler, no GPU) falls back to ``reference`` with one warning.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .args import DCNv3Args

__all__ = ["Backend", "available_backends", "get_backend", "resolve_backend", "use_backend", "BACKEND_ENV"]

logger = logging.getLogger(__name__)

BACKEND_ENV = "INTERNIMAGE_DCN_BACKEND"

ForwardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DCNv3Args], torch.Tensor]
BackwardFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, DCNv3Args],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor],
]


@dataclass(frozen=True)
class Backend:
    """One implementation of the DCNv3 operator.

    Attributes:
        name: Registry name.
        forward: ``(input, offset, mask, args) -> output`` on NHWC tensors (see :func:`~internimage.ops.dcnv3`).
        backward: ``(grad_output, input, offset, mask, args) -> (grad_input, grad_offset, grad_mask)``.
        supports: ``(device_type, dtype) -> bool``: whether this backend handles such tensors.
        available: ``() -> bool``: whether it can run in this process (may build or import lazily; cached).
    """

    name: str
    forward: ForwardFn
    backward: BackwardFn
    supports: Callable[[str, torch.dtype], bool]
    available: Callable[[], bool]


_MODULES = {
    "reference": "internimage.ops.reference_backend",
    "cpu": "internimage.ops.cpu",
    "triton": "internimage.ops.triton_dcnv3",
}
_AUTO_ORDER = {"cuda": ("triton", "reference"), "cpu": ("cpu", "reference")}
_override = threading.local()
_warned: set[str] = set()


def get_backend(name: str) -> Backend:
    """Import and return the backend registered as ``name``."""
    if name not in _MODULES:
        raise ValueError(f"unknown DCN backend {name!r}; choose one of {['auto', *_MODULES]}")
    try:
        return importlib.import_module(_MODULES[name]).BACKEND
    except ModuleNotFoundError as err:
        if err.name != _MODULES[name]:
            raise
        return _missing(name)


def _missing(name: str) -> Backend:
    def fail(*args):
        raise RuntimeError(f"DCN backend {name!r} is not part of this installation")

    return Backend(name, fail, fail, lambda device_type, dtype: False, lambda: False)


def available_backends(device_type: str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can run on ``device_type`` with ``dtype`` in this process."""
    names = []
    for name in _MODULES:
        backend = get_backend(name)
        if backend.supports(device_type, dtype) and backend.available():
            names.append(name)
    return names


def requested_backend() -> str:
    """The backend asked for by :func:`use_backend` or the environment, else ``'auto'``."""
    name = getattr(_override, "name", None) or os.environ.get(BACKEND_ENV, "auto") or "auto"
    name = name.strip().lower()
    if name != "auto" and name not in _MODULES:
        raise ValueError(f"{BACKEND_ENV}={name!r} is not a DCN backend; choose one of {['auto', *_MODULES]}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager forcing the DCN backend in this thread, e.g. ``with use_backend('reference'): ...``."""
    if name != "auto":
        get_backend(name)  # validates the name
    previous = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = previous


def resolve_backend(name: str | None, device_type: str, dtype: torch.dtype) -> str:
    """Turn a requested backend (or ``None``/``'auto'``) into the name of one that runs these tensors."""
    name = name or requested_backend()
    if name != "auto":
        backend = get_backend(name)
        if backend.supports(device_type, dtype) and backend.available():
            return name
        _warn_once(
            f"{name}:{device_type}:{dtype}",
            f"DCN backend {name!r} cannot run {device_type} {dtype} tensors here; using 'reference'",
        )
        return "reference"
    for candidate in _AUTO_ORDER.get(device_type, ("reference",)):
        backend = get_backend(candidate)
        if backend.supports(device_type, dtype) and backend.available():
            return candidate
    return "reference"


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
