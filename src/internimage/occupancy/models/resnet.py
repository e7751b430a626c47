"""mmdet's ResNet (v2.x ``mmdet/models/backbones/resnet.py``) with mmcv's DCNv2, as the BEVFormer-Occ ResNet configs
build it (``bevformer_base_occ``: ResNet-101, ``bevformer_small_occ``: ResNet-50; both caffe style, DCNv2 in stages
3-4, stem and stage 1 frozen, BatchNorm frozen and in eval mode).

Parameter names are mmdet's (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``,
``layer3.0.conv2.conv_offset.weight``, ...), so official checkpoints, mmdet detectors and torchvision ImageNet weights
load without renaming.

Modulated deformable convolution (mmcv's ``ModulatedDeformConv2dPack``): ``conv_offset`` (a plain conv with the
3x3 conv's stride / padding / dilation) gives ``3 * deform_groups * k * k`` channels, split by mmcv as
``o1, o2, mask = chunk(3)``; ``offset = cat(o1, o2)`` and ``mask = sigmoid(mask)``. mmcv's kernel
(``modulated_deformable_im2col``) reads, within deform group g, offset channel ``2 * (i * kw + j)`` as the row (y)
displacement and ``2 * (i * kw + j) + 1`` as the column (x) displacement of kernel point (i, j), and mask channel
``i * kw + j``; ``torchvision.ops.deform_conv2d`` reads its ``offset`` / ``mask`` with exactly that layout (y first,
kernel points row-major, groups outermost), so the concatenated tensor goes to torchvision unchanged. Samples are
bilinear, zero outside the image (both: a point counts when ``-1 < y < H`` and ``-1 < x < W``, its out-of-image
corners read 0).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

__all__ = [
    "OFFICIAL_RESNET_OVERRIDES",
    "RESNET_ARCHS",
    "BasicBlock",
    "Bottleneck",
    "ModulatedDeformConv2dPack",
    "ResNet",
    "build_resnet",
    "is_resnet_name",
    "load_resnet_checkpoint",
]

logger = logging.getLogger(__name__)

#: The ``img_backbone`` arguments of ``bevformer_base_occ.py`` / ``bevformer_small_occ.py`` beyond the depth:
#: ``style='caffe'``, ``frozen_stages=1``, ``norm_cfg=dict(type='BN2d', requires_grad=False)``, ``norm_eval=True``,
#: ``dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False)``, ``stage_with_dcn=(False, False, True, True)``.
OFFICIAL_RESNET_OVERRIDES: dict[str, Any] = {
    "style": "caffe",
    "frozen_stages": 1,
    "norm_eval": True,
    "norm_requires_grad": False,
    "stage_with_dcn": (False, False, True, True),
    "deform_groups": 1,
}


class ModulatedDeformConv2dPack(nn.Module):
    """DCNv2 (Zhu et al., 2019) with mmcv ``ModulatedDeformConv2dPack``'s parameters and forward.

    ``weight`` (out, in, k, k), ``bias`` (out,) or None, ``conv_offset`` Conv2d(in -> 3 * deform_groups * k * k) with
    this conv's stride / padding / dilation; see the module docstring for the offset / mask layout.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Stride.
        padding: Zero padding.
        dilation: Dilation.
        deform_groups: Channel groups sharing one offset / mask field.
        bias: Learn a bias (mmdet's DCN in ResNet has none).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        deform_groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % deform_groups:
            raise ValueError(f"in_channels {in_channels} must be a multiple of deform_groups {deform_groups}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation, self.deform_groups = stride, padding, dilation, deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * 3 * kernel_size * kernel_size,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmcv's init_weights: uniform(+-1/sqrt(fan_in)) weight, zero bias, and a zero offset/mask conv so the layer
        # starts as a plain conv whose every tap has weight sigmoid(0) = 0.5.
        stdv = 1.0 / math.sqrt(self.in_channels * self.kernel_size**2)
        nn.init.uniform_(self.weight, -stdv, stdv)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offset_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mmcv's split of ``conv_offset(x)``.

        Args:
            x: (N, in_channels, H, W).

        Returns:
            ``offset`` (N, 2 * deform_groups * k * k, Ho, Wo), (y, x) per kernel point, and ``mask``
            (N, deform_groups * k * k, Ho, Wo) in (0, 1).
        """
        o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, Ho, Wo)."""
        from torchvision.ops import deform_conv2d

        offset, mask = self.offset_and_mask(x)
        s, p, d = self.stride, self.padding, self.dilation
        return deform_conv2d(x, offset, self.weight, self.bias, (s, s), (p, p), (d, d), mask)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, deform_groups={self.deform_groups}"
        )


def _conv3x3(
    cin: int, cout: int, stride: int, dilation: int, deform_groups: int | None
) -> nn.Conv2d | ModulatedDeformConv2dPack:
    if deform_groups is not None:
        return ModulatedDeformConv2dPack(cin, cout, 3, stride, dilation, dilation, deform_groups, bias=False)
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class _Block(nn.Module):
    """What both residual blocks share: the shortcut sum, the last ReLU and optional gradient checkpointing."""

    with_cp: bool
    relu: nn.ReLU

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, inplanes, H, W) -> (N, planes * expansion, H / stride, W / stride)."""
        if self.with_cp and x.requires_grad:
            return self.relu(grad_checkpoint(self._inner, x, use_reentrant=False))
        return self.relu(self._inner(x))


class BasicBlock(_Block):
    """mmdet's ``BasicBlock`` (two 3x3 convs; ResNet-18/34). mmdet has no DCN for it, nor do we.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Stride of the first conv.
        dilation: Dilation.
        downsample: Projection of the shortcut, or None.
        style: Unused (both styles are the same for this block).
        deform_groups: Must be None.
        with_cp: Gradient checkpointing of the block.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        deform_groups: int | None = None,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if deform_groups is not None:
            raise ValueError("BasicBlock (ResNet-18/34) has no DCN in mmdet; use ResNet-50 or deeper")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + identity


class Bottleneck(_Block):
    """mmdet's ``Bottleneck``: 1x1 -> 3x3 (DCNv2 where configured) -> 1x1 (x4 channels), BN after each.

    ``style='pytorch'`` puts the stride on the 3x3 conv, ``'caffe'`` on the first 1x1 conv (mmdet:
    ``conv1_stride, conv2_stride = (1, stride)`` for pytorch, ``(stride, 1)`` for caffe).

    Args:
        inplanes: Input channels.
        planes: Bottleneck width (output ``4 * planes``).
        stride: Block stride.
        dilation: Dilation of the 3x3 conv.
        downsample: Projection of the shortcut, or None.
        style: ``'pytorch'`` or ``'caffe'``.
        deform_groups: DCNv2 deform groups of the 3x3 conv, or None for a plain conv.
        with_cp: Gradient checkpointing of the block.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = "pytorch",
        deform_groups: int | None = None,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        conv1_stride, conv2_stride = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=conv1_stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, conv2_stride, dilation, deform_groups)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + identity


#: depth -> (block, blocks per stage), mmdet's ``arch_settings``.
RESNET_ARCHS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """mmdet's ResNet (no deep stem, no avg-down, BatchNorm) exposing what BEVFormerOcc reads.

    Layout: ``conv1`` (7x7 stride 2) + ``bn1`` + ReLU + 3x3 max pool (stride 2), then ``layer1..layer4``
    (``nn.Sequential`` of blocks; the first block of a stage carries the stride and a ``downsample`` 1x1 conv + BN).
    Stage i has ``base_channels * 2**i`` bottleneck width, stride 1 / 2 / 2 / 2, output stride 4 / 8 / 16 / 32.

    Frozen parts follow mmdet: ``frozen_stages=k`` puts the stem and ``layer1..layerk`` in eval mode with
    ``requires_grad=False`` (-1: nothing); ``norm_eval`` keeps every BatchNorm in eval mode while training;
    ``norm_requires_grad=False`` (the configs' ``norm_cfg=dict(type='BN2d', requires_grad=False)``) freezes every
    BatchNorm's affine parameters.

    Args:
        depth: 18, 34, 50, 101 or 152.
        stage_blocks: Blocks per stage overriding the depth's (an extension for small test models).
        base_channels: Width of stage 1 (64).
        stem_channels: Stem output channels (``base_channels``).
        style: ``'pytorch'`` or ``'caffe'`` (where a bottleneck puts its stride).
        frozen_stages: Stages frozen from the stem on (-1: none, 0: stem).
        norm_eval: BatchNorm in eval mode during training.
        norm_requires_grad: BatchNorm weights and biases trainable.
        stage_with_dcn: Per stage, DCNv2 for the 3x3 convs.
        deform_groups: DCNv2 deform groups.
        with_cp: Gradient checkpointing of every block.
        zero_init_residual: Zero the last BN of every block at init (mmdet's default).
    """

    def __init__(
        self,
        depth: int = 50,
        stage_blocks: Sequence[int] | None = None,
        base_channels: int = 64,
        stem_channels: int | None = None,
        style: str = "pytorch",
        frozen_stages: int = -1,
        norm_eval: bool = True,
        norm_requires_grad: bool = True,
        stage_with_dcn: Sequence[bool] = (False, False, False, False),
        deform_groups: int = 1,
        with_cp: bool = False,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if depth not in RESNET_ARCHS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_ARCHS)}, got {depth}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"ResNet style must be 'pytorch' or 'caffe', got {style!r}")
        block, blocks = RESNET_ARCHS[depth]
        blocks = tuple(int(b) for b in (blocks if stage_blocks is None else stage_blocks))
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"stage_blocks must be 4 positive counts, got {blocks}")
        if len(stage_with_dcn) != 4:
            raise ValueError(f"stage_with_dcn must have 4 flags, got {tuple(stage_with_dcn)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        self.depth, self.style = depth, style
        self.depths = blocks
        self.frozen_stages, self.norm_eval, self.zero_init_residual = frozen_stages, norm_eval, zero_init_residual
        self.stage_with_dcn = tuple(bool(s) for s in stage_with_dcn)
        stem = base_channels if stem_channels is None else stem_channels
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = stem
        self.feature_info: list[dict[str, Any]] = []
        for i, n in enumerate(blocks):
            planes, stride = base_channels * 2**i, 1 if i == 0 else 2
            dg = deform_groups if self.stage_with_dcn[i] else None
            out = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            layer = [block(inplanes, planes, stride, 1, downsample, style, dg, with_cp)]
            layer += [block(out, planes, 1, 1, None, style, dg, with_cp) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = out
            self.feature_info.append({"num_chs": out, "reduction": 4 * 2**i, "module": f"layer{i + 1}"})
        self.reset_parameters()
        if not norm_requires_grad:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(False)
        self._freeze_stages()

    @property
    def levels(self) -> list[nn.Sequential]:
        """The four stages (a plain list, so no extra state-dict keys; the engine's backbone finder looks for it)."""
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.depths))]

    def reset_parameters(self) -> None:
        """mmdet's init: Kaiming-normal (fan_out) convs, BatchNorm 1 / 0, DCN as mmcv, zero last BN per block."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # after the Kaiming pass, which would also hit conv_offset
            if isinstance(m, ModulatedDeformConv2dPack):
                m.reset_parameters()
            if self.zero_init_residual and isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_norm.weight)

    def _freeze_stages(self) -> None:
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen += [self.conv1, self.bn1]
        frozen += self.levels[: max(self.frozen_stages, 0)]
        for m in frozen:
            m.eval()
            m.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        """Training mode, keeping the frozen stages and (``norm_eval``) every BatchNorm in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        intermediates_only: bool = True,
        stop_early: bool = True,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (timm's ``forward_intermediates`` contract).

        Args:
            x: (N, 3, H, W) normalised images.
            indices: Stages to return (0-3); an int n means the last n; None all four.
            intermediates_only: Return only the stage outputs.
            stop_early: Skip the stages after the last requested one (only with ``intermediates_only``).

        Returns:
            The requested maps (N, feature_info[i]['num_chs'], H / 2**(i + 2), W / 2**(i + 2)) in stage order, or
            ``(last stage output, maps)`` when not ``intermediates_only``.
        """
        num = len(self.depths)
        if indices is None:
            wanted = list(range(num))
        elif isinstance(indices, int):
            wanted = list(range(num - indices, num))
        else:
            wanted = sorted(int(i) for i in indices)
        if not wanted or wanted[0] < 0 or wanted[-1] >= num:
            raise ValueError(f"ResNet stage indices must be in [0, {num - 1}], got {indices}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        last = wanted[-1] if stop_early and intermediates_only else num - 1
        maps = []
        for i, layer in enumerate(self.levels[: last + 1]):
            x = layer(x)
            if i in wanted:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All four stage outputs of (N, 3, H, W) images."""
        return self.forward_intermediates(x)


_NAME = re.compile(r"^resnet(\d+)$")


def is_resnet_name(name: str) -> bool:
    """Whether ``name`` is a backbone :func:`build_resnet` builds (``resnet18`` ... ``resnet152``)."""
    match = _NAME.match(name)
    return bool(match) and int(match.group(1)) in RESNET_ARCHS


def build_resnet(name: str, checkpoint_path: str | None = None, **overrides: Any) -> ResNet:
    """The ResNet ``resnet<depth>`` with mmdet's defaults updated by ``overrides``, and optional weights.

    Args:
        name: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101`` / ``resnet152``.
        checkpoint_path: Weights for :func:`load_resnet_checkpoint`, or None.
        **overrides: :class:`ResNet` arguments (e.g. :data:`OFFICIAL_RESNET_OVERRIDES`).

    Returns:
        The backbone.
    """
    if not is_resnet_name(name):
        raise ValueError(f"unknown ResNet {name!r}; known: {', '.join(f'resnet{d}' for d in RESNET_ARCHS)}")
    if "depth" in overrides:
        raise ValueError("the ResNet depth comes from the name (resnet<depth>), not from backbone_overrides")
    known = set(inspect.signature(ResNet).parameters) - {"depth"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown ResNet arguments {unknown}; known: {sorted(known)}")
    model = ResNet(int(_NAME.match(name).group(1)), **overrides)
    if checkpoint_path is not None:
        load_resnet_checkpoint(model, checkpoint_path)
    return model


def load_resnet_checkpoint(model: ResNet, path: str) -> list[str]:
    """Load ResNet weights strictly on the backbone's keys.

    Accepted layouts (read with ``torch.load(weights_only=True)`` or safetensors): torchvision / mmcv ImageNet
    state dicts (``conv1.weight``, ``layer1.0.conv1.weight``, ...; ``fc.*`` ignored), mmdet detectors
    (``state_dict`` with ``backbone.*``) and mmdet3d detectors such as ``r101_dcn_fcos3d_pretrain.pth``
    (``img_backbone.*``); their other parts (neck, heads) are set aside. Only the DCN offset convs (``conv_offset``,
    zero at init so the layer starts as a plain conv, which is how mmcv starts from ImageNet weights) and
    BatchNorm ``num_batches_tracked`` may be absent. Note torchvision's weights are pytorch style (stride in the
    3x3 conv) and RGB / std normalised: into a caffe-style ResNet they load but do not match the training setup.

    Returns:
        The absent (allowed) keys.

    Raises:
        ValueError: another key is missing, a shape differs, or the file holds no ResNet weights.
    """
    from ...models.checkpoint import detect_format, read_checkpoint

    _, sd = detect_format(read_checkpoint(path))
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    for prefix in ("img_backbone.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            rest = sum(not k.startswith(prefix) for k in sd)
            if rest:
                logger.info("%s: %d entries besides %s* set aside (neck / heads)", path, rest, prefix)
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    own = model.state_dict()
    extra = sorted(k for k in sd if k not in own and not k.startswith("fc."))
    if extra:
        raise ValueError(f"{path}: {len(extra)} keys the ResNet does not have (e.g. {extra[:3]})")
    wrong = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{path}: {k} has shape {tuple(sd[k].shape)}, the ResNet {tuple(own[k].shape)}")
    missing = [k for k in own if k not in sd]
    if len(missing) == len(own):
        raise ValueError(f"{path} holds no ResNet weights")
    required = [k for k in missing if ".conv_offset." not in k and not k.endswith("num_batches_tracked")]
    if required:
        raise ValueError(f"{path}: {len(required)} ResNet keys missing (e.g. {required[:3]})")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    if missing:
        logger.info("%s: %d ResNet keys kept at init (DCN offsets / BN counters)", path, len(missing))
    return missing
