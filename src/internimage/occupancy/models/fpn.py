"""Feature pyramid neck with mmdet ``FPN``'s parameter names (``lateral_convs.i.conv``, ``fpn_convs.i.conv``).

Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017. The BEVFormer-Occ configuration uses the
variant with extra levels computed from the last pyramid output (``add_extra_convs='on_output'``) and a ReLU before
every extra convolution but the first (``relu_before_extra_convs=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPN"]


class _ConvModule(nn.Module):
    """A bare convolution held as ``.conv`` so keys read ``<name>.conv.weight`` like mmcv's ``ConvModule``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """Top-down pyramid of 1x1 laterals and 3x3 output convolutions, plus stride-2 extra levels.

    Args:
        in_channels: Channels of each input map, finest first.
        out_channels: Channels of every output level.
        num_outs: Output levels; those beyond ``len(in_channels)`` come from stride-2 3x3 convolutions of the
            previous output.
        relu_before_extra_convs: Apply a ReLU before the second and later extra convolutions (the first reads the
            last pyramid output directly, as mmdet does).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int = 4,
        relu_before_extra_convs: bool = True,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if not in_channels or num_outs < len(in_channels):
            raise ValueError(f"FPN: num_outs {num_outs} must be >= the {len(in_channels)} inputs (and inputs given)")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral_convs = nn.ModuleList(_ConvModule(c, out_channels, 1) for c in in_channels)
        convs = [_ConvModule(out_channels, out_channels, 3, padding=1) for _ in in_channels]
        convs += [
            _ConvModule(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_outs - len(in_channels))
        ]
        self.fpn_convs = nn.ModuleList(convs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmdet initialises every FPN conv with uniform Xavier and zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Pyramid outputs.

        Args:
            inputs: (N, in_channels[i], H_i, W_i) maps, finest first.

        Returns:
            ``num_outs`` maps (N, out_channels, H_i, W_i), finest first.
        """
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN: expected {len(self.in_channels)} input maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        outs = [self.fpn_convs[i](lat) for i, lat in enumerate(laterals)]
        for i in range(len(laterals), self.num_outs):
            src = outs[-1]
            # The first extra level reads the raw last output; later ones see its ReLU.
            if self.relu_before_extra_convs and i > len(laterals):
                src = F.relu(src)
            outs.append(self.fpn_convs[i](src))
        return outs
