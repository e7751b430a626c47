"""Building blocks shared by the heads of several tasks, named like mmcv's so official weights load as they are."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FFN"]


class FFN(nn.Module):
    """Linear -> ReLU -> Linear with residual, named like mmcv's ``FFN`` (``layers.0.0``, ``layers.1``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(0.0)),
            nn.Linear(hidden, dim),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)
