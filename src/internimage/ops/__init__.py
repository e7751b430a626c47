"""Deformable convolution operators (DCNv3, DCNv4) with pluggable backends."""

from .args import DCNv3Args, make_args
from .backends import available_backends, resolve_backend, use_backend
from .dcnv3 import DCNv3, dcnv3
from .dcnv4 import DCNv4, dcnv4, pack_offset_mask, split_offset_mask
from .dispatch import ExportMode, current_export_mode, export_mode
from .reference import dcnv3_reference, dcnv3_reference_backward

__all__ = [
    "DCNv3",
    "DCNv3Args",
    "DCNv4",
    "ExportMode",
    "available_backends",
    "current_export_mode",
    "dcnv3",
    "dcnv3_reference",
    "dcnv3_reference_backward",
    "dcnv4",
    "export_mode",
    "make_args",
    "pack_offset_mask",
    "resolve_backend",
    "split_offset_mask",
    "use_backend",
]
