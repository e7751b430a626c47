"""Deformable convolution operators (DCNv3) with pluggable backends."""

from .args import DCNv3Args, make_args
from .backends import available_backends, resolve_backend, use_backend
from .dcnv3 import DCNv3, dcnv3
from .reference import dcnv3_reference, dcnv3_reference_backward

__all__ = [
    "DCNv3",
    "DCNv3Args",
    "available_backends",
    "dcnv3",
    "dcnv3_reference",
    "dcnv3_reference_backward",
    "make_args",
    "resolve_backend",
    "use_backend",
]
