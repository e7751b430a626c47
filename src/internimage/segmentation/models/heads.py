"""UperNet and SegFormer decode heads and the FCN auxiliary head for semantic segmentation.

UperNet: Xiao et al., "Unified Perceptual Parsing for Scene Understanding" (ECCV 2018). The head follows the
mmsegmentation 0.x ``UPerHead``/``FCNHead`` used by the official InternImage segmentation configs: pyramid pooling
(scales 1, 2, 3, 6) on the stride-32 map, an FPN top-down pathway, fusion of all levels, dropout 0.1 and a 1x1
classifier. Module names are mmseg's own, so official ``decode_head.*``/``auxiliary_head.*`` tensors load 1:1
(SyncBN there is BatchNorm here: same parameters and buffers).

SegFormer: Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers"
(NeurIPS 2021); the all-MLP head as mmseg 0.x ``SegformerHead`` (used on InternImage by the official
``segformer_internimage_*`` Cityscapes / Mapillary configs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import current_export_mode

__all__ = ["ConvModule", "FCNHead", "SegformerHead", "UPerHead"]


class ConvModule(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, named ``conv``/``bn`` like mmcv's ``ConvModule``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def _resize(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    if current_export_mode() is not None:
        # Under torch.export a symbolic size comparison becomes a guard on the input size (e.g. "the 1/32 map is not
        # 2 pixels high") that the exported program would then enforce; resizing to the same size is the identity,
        # so skip only when the sizes are statically equal.
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        same = all(statically_known_true(a == b) for a, b in zip(x.shape[-2:], size))
    else:
        same = tuple(x.shape[-2:]) == tuple(size)
    if same:
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class _ClsSegMixin(nn.Module):
    """Dropout2d + 1x1 ``conv_seg`` classifier shared by both heads (mmseg ``BaseDecodeHead.cls_seg``)."""

    def _init_cls(self, channels: int, num_classes: int, dropout_ratio: float) -> None:
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        # mmseg initialises the classifier with normal(0, 0.01): small initial logits, near-uniform softmax.
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(_ClsSegMixin):
    """UperNet head: PPM on the last map + FPN over all maps, fused at the finest stride.

    Args:
        in_channels: Channels of the input maps, finest first (C, 2C, 4C, 8C for InternImage).
        channels: Width of every internal conv (512 in the official configs).
        num_classes: Output classes.
        pool_scales: Output sizes of the pyramid pooling branches.
        dropout_ratio: Dropout2d before the classifier.
        align_corners: ``align_corners`` of every bilinear resize.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 512,
        num_classes: int = 150,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.channels = channels
        self.align_corners = align_corners
        last = self.in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(last, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(last + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3, padding=1)
        self._init_cls(channels, num_classes, dropout_ratio)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C_last, h, w). Returns: (N, channels, h, w)."""
        outs = [x] + [_resize(ppm(x), x.shape[-2:], self.align_corners) for ppm in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Args: feats: maps (N, in_channels[i], H/s_i, W/s_i), finest first. Returns: (N, K, H/s_0, W/s_0)."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"UPerHead expects {len(self.in_channels)} feature maps, got {len(feats)}")
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:], self.align_corners)
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [_resize(o, size, self.align_corners) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(_ClsSegMixin):
    """FCN auxiliary head on one map (mmseg ``FCNHead`` with ``concat_input=False``).

    Args:
        in_channels: Channels of the input map (4C for InternImage's stage 3).
        channels: Width of the convs (256 in the official configs).
        num_classes: Output classes.
        num_convs: Number of 3x3 ConvModules.
        in_index: Which backbone map the head reads.
        dropout_ratio: Dropout2d before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        num_classes: int = 150,
        num_convs: int = 1,
        in_index: int = 2,
        dropout_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(
            *(ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1) for i in range(num_convs))
        )
        self._init_cls(channels if num_convs else in_channels, num_classes, dropout_ratio)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Args: feats: backbone maps. Returns: (N, K, h, w) logits at the stride of ``feats[in_index]``."""
        return self.cls_seg(self.convs(feats[self.in_index]))


class SegformerHead(_ClsSegMixin):
    """SegFormer all-MLP head (mmseg ``SegformerHead``): a 1x1 ConvModule per input map, all resized to the finest
    map's size, concatenated (finest first), fused by a 1x1 ConvModule, then dropout and the 1x1 classifier.

    Module names are mmseg's (``convs.i.conv/bn``, ``fusion_conv.conv/bn``, ``conv_seg``), so official
    ``decode_head.*`` tensors load 1:1.

    Args:
        in_channels: Channels of the input maps, finest first (C, 2C, 4C, 8C for InternImage).
        channels: Width of every projection and of the fused map (256 in the official configs).
        num_classes: Output classes.
        in_index: Which backbone maps the head reads (mmseg ``in_index``; all four officially).
        dropout_ratio: Dropout2d before the classifier.
        align_corners: ``align_corners`` of the bilinear resizes.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 256,
        num_classes: int = 150,
        in_index: Sequence[int] = (0, 1, 2, 3),
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.in_index = list(in_index)
        if len(self.in_channels) != len(self.in_index):
            raise ValueError(f"{len(self.in_channels)} in_channels for {len(self.in_index)} in_index entries")
        self.channels = channels
        self.align_corners = align_corners
        self.convs = nn.ModuleList(ConvModule(c, channels, 1) for c in self.in_channels)
        self.fusion_conv = ConvModule(len(self.in_channels) * channels, channels, 1)
        self._init_cls(channels, num_classes, dropout_ratio)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Args: feats: backbone maps (N, C_i, H/s_i, W/s_i). Returns: (N, K, h, w) at the first selected map's size
        (1/4 of the input for InternImage)."""
        inputs = [feats[i] for i in self.in_index]
        size = inputs[0].shape[-2:]
        outs = [_resize(conv(x), size, self.align_corners) for conv, x in zip(self.convs, inputs)]
        return self.cls_seg(self.fusion_conv(torch.cat(outs, dim=1)))
