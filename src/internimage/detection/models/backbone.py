"""InternImage + FPN as a torchvision detection backbone.

The backbone is the one :class:`~internimage.models.internimage.InternImage` class, read through its
``forward_intermediates`` API (NCHW level outputs after the level norm, before the downsample, strides 4-32), which
is exactly what the official mmdet backbone returns (``detection/mmdet_custom/models/backbones/intern_image.py``).
The classification head is pruned, so the body's state dict is the official ``backbone.*`` layout minus the
``backbone.`` prefix.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ...models.dense import build_internimage_body
from ...models.internimage import InternImage

__all__ = ["InternImageFPN", "build_internimage_body"]


class InternImageFPN(nn.Module):
    """InternImage levels -> FPN with an extra max-pooled level (``'0'..'3'`` and ``'pool'``, strides 4-64).

    Exposes ``out_channels`` as torchvision's detection models require. Parameter names follow torchvision's
    ``BackboneWithFPN`` (``body.*``, ``fpn.inner_blocks.*``, ``fpn.layer_blocks.*``).

    Args:
        body: An InternImage (classifier pruned); see :func:`build_internimage_body`.
        out_channels: FPN width (256 in the official configs).
        indices: Levels fed to the FPN.
    """

    def __init__(self, body: InternImage, out_channels: int = 256, indices: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.body = body
        self.indices = list(indices)
        in_channels = [body.feature_info[i]["num_chs"] for i in self.indices]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = [body.feature_info[i]["reduction"] for i in self.indices] + [
            2 * body.feature_info[self.indices[-1]]["reduction"]
        ]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Args: x: (N, 3, H, W) normalised images, H and W divisible by 32.

        Returns:
            ``{'0': (N, F, H/4, W/4), ..., '3': (N, F, H/32, W/32), 'pool': (N, F, H/64, W/64)}``.
        """
        maps = self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True, stop_early=True)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
