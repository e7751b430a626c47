"""The reference backend: pure PyTorch, every device and dtype."""

from __future__ import annotations

import torch

from .backends import Backend
from .reference import dcnv3_reference, dcnv3_reference_backward


def _supports(device_type: str, dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


BACKEND = Backend(
    name="reference",
    forward=dcnv3_reference,
    backward=dcnv3_reference_backward,
    supports=_supports,
    available=lambda: True,
)
