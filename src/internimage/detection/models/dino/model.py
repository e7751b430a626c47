"""DINO detector on InternImage and CB-InternImage: backbone -> ChannelMapper -> DINO head.

* Backbone: the one :class:`~internimage.models.internimage.InternImage` class read at levels 1-3 (strides 8-32),
  as the official ``out_indices=(1, 2, 3)``; or :class:`CBInternImage`, the composite backbone of CBNetV2
  (``detection/mmdet_custom/models/backbones/cbnet.py``): an assisting and a lead InternImage of the same class.
* Neck: mmdet ``ChannelMapper`` (1x1 conv + GroupNorm(32) per level, one extra stride-2 3x3 conv + GN on the last
  backbone map): 4 levels of 256 channels.
* Head: :class:`~internimage.detection.models.dino.head.DINOHead`.

Parameter names are the official ones (``backbone.*``, ``neck.convs.i.conv/gn``, ``neck.extra_convs.0``,
``bbox_head.*``; the CB models' neck is a one-element list, ``neck.0.*``), so released checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ....models.internimage import InternImage
from ..backbone import build_internimage_body
from ..layer_decay import OFFSET_LR_KEYS, detection_layer_id_fn
from ..transform import PassThroughTransform
from .head import DINOHead

__all__ = [
    "CBInternImage",
    "ChannelMapper",
    "InternImageDINO",
    "build_cb_dino",
    "build_dino",
]

OUT_INDICES = [1, 2, 3]  # backbone levels fed to the neck (strides 8, 16, 32), the official ``out_indices``


class ConvGN(nn.Module):
    """mmcv ``ConvModule`` with GroupNorm(32) and no activation: ``conv`` (no bias) then ``gn``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=False)
        self.gn = nn.GroupNorm(32, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x))


class ChannelMapper(nn.Module):
    """mmdet ``ChannelMapper(kernel_size=1, norm_cfg=GN(32), act_cfg=None, num_outs)``.

    Args:
        in_channels: Channels of each backbone map, finest first.
        out_channels: Width of every output (256; a multiple of 32).
        num_outs: Outputs; the ones beyond ``len(in_channels)`` are stride-2 convs, the first on the last input.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 4) -> None:
        super().__init__()
        if out_channels % 32:
            raise ValueError(f"ChannelMapper: out_channels must be a multiple of 32 (GroupNorm), got {out_channels}")
        self.convs = nn.ModuleList(ConvGN(c, out_channels, 1) for c in in_channels)
        extra = [
            ConvGN(in_channels[-1] if i == len(in_channels) else out_channels, out_channels, 3, 2)
            for i in range(len(in_channels), num_outs)
        ]
        self.extra_convs = nn.ModuleList(extra) if extra else None
        # mmdet's ChannelMapper init_cfg: Xavier uniform on the convs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Args: inputs: maps (N, C_i, H_i, W_i). Returns: ``num_outs`` maps (N, out_channels, ., .)."""
        outs = [conv(x) for conv, x in zip(self.convs, inputs)]
        if self.extra_convs is not None:
            for i, conv in enumerate(self.extra_convs):
                outs.append(conv(inputs[-1] if i == 0 else outs[-1]))
        return outs


class CBInternImage(nn.Module):
    """Composite backbone (CBNetV2 "DHLC"): assisting ``cb_modules.0`` and lead ``cb_modules.1`` InternImages.

    The lead has no stem: it starts from the assisting stem's output. Before each lead level i, the assisting
    outputs of levels i..3, mapped to level i's channels by 1x1 convs (``cb_linears.i.j``; identity for j = 0)
    and nearest-resized to level i's input size, are summed and added with a zero-initialised per-channel
    ``gamma{i}``. The official code rounds gamma to float16 before the product (``gamma.half()``); so do we.

    Args:
        name: Registered InternImage name.
        indices: Levels returned by both backbones (1, 2, 3 for DINO).
        **overrides: InternImage arguments.
    """

    def __init__(self, name: str, indices: Sequence[int] = tuple(OUT_INDICES), **overrides: Any) -> None:
        super().__init__()
        assist = build_internimage_body(name, **overrides)
        lead = build_internimage_body(name, **overrides)
        del lead.patch_embed
        channels = [info["num_chs"] for info in assist.feature_info]
        for i, c in enumerate(channels):
            lead.register_parameter(f"gamma{i}", nn.Parameter(torch.zeros(c)))
        self.cb_modules = nn.ModuleList([assist, lead])
        levels = len(channels)
        self.cb_linears = nn.ModuleList(
            nn.ModuleList(
                nn.Identity() if j == 0 else nn.Conv2d(channels[i + j], channels[i], 1) for j in range(levels - i)
            )
            for i in range(levels)
        )
        self.indices = list(indices)
        self.out_channels = [channels[i] for i in self.indices]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Args: x: (N, 3, H, W). Returns: ``(assisting maps, lead maps)`` at ``indices``, NCHW."""
        assist, lead = self.cb_modules
        stem = assist.pos_drop(assist.patch_embed(x))  # NHWC
        feats = _run_levels(assist, stem)
        sizes = []
        h, w = stem.shape[1:3]
        for _ in feats:
            sizes.append((h, w))
            h, w = h // 2, w // 2
        nchw = [f.permute(0, 3, 1, 2) for f in feats]
        y = stem
        lead_out = []
        for i, level in enumerate(lead.levels):
            feed = 0
            for j, conv in enumerate(self.cb_linears[i]):
                t = conv(nchw[i + j])
                if t.shape[-2:] != sizes[i]:
                    t = F.interpolate(t, size=sizes[i], mode="nearest")
                feed = feed + t.permute(0, 2, 3, 1)
            gamma = getattr(lead, f"gamma{i}")
            y = y + gamma.half().to(y.dtype) * feed
            y = level(y)
            lead_out.append(y)
            if level.downsample is not None:
                y = level.downsample(y)
        pick = self.indices
        return [nchw[i].contiguous() for i in pick], [lead_out[i].permute(0, 3, 1, 2).contiguous() for i in pick]


def _run_levels(body: InternImage, x: torch.Tensor) -> list[torch.Tensor]:
    """Every level's NHWC output (pre-downsample) from the stem output ``x`` (NHWC)."""
    feats = []
    for level in body.levels:
        x = level(x)
        feats.append(x)
        if level.downsample is not None:
            x = level.downsample(x)
    return feats


class InternImageDINO(nn.Module):
    """DINO with an InternImage or CB-InternImage backbone.

    Inputs follow the package's detector contract
    (:func:`~internimage.detection.models.generalized_rcnn.detector_forward`):
    a list of (3, H_i, W_i) uint8 (or [0, 1] float) images, already resized; targets with ``boxes`` (G, 4) xyxy
    pixels and ``labels`` (G,) in 1..num_classes; predictions returned at ``orig_sizes`` with labels 1..K.

    Args:
        backbone: An InternImage body (read at levels 1-3, the official ``out_indices``) or :class:`CBInternImage`.
        neck: :class:`ChannelMapper` (wrapped in a one-element ``ModuleList`` for CB, as the official config's
            ``neck=[...]``).
        bbox_head: :class:`DINOHead`.
        cb_first_weight: Weight of the assisting backbone's losses (CB only; 0.5).
    """

    #: How :func:`internimage.models.load_weights` reads checkpoints into this model.
    weights_layout = "dino"
    #: Parameters whose lr ``offset_lr_mul`` multiplies under layer decay.
    offset_lr_keys = OFFSET_LR_KEYS

    def layer_id_fn(self) -> tuple[Callable[[str], int], int]:
        """The official detection layer-decay rule for this model: ``(name -> layer id, number of ids)``."""
        return detection_layer_id_fn(self)

    def __init__(self, backbone: nn.Module, neck: nn.Module, bbox_head: DINOHead, cb_first_weight: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head
        self.transform = PassThroughTransform()
        self.cb_first_weight = cb_first_weight
        self.num_classes = bbox_head.num_classes

    def set_class_frequencies(self, image_counts: Any) -> None:
        """Per-class training image counts (K,) for the head's federated loss (see :class:`DINOHead`)."""
        self.bbox_head.set_class_frequencies(image_counts)

    @property
    def uses_class_frequencies(self) -> bool:
        """True when the head's federated loss is on and needs :meth:`set_class_frequencies`."""
        return self.bbox_head.fed_loss_num_classes > 0

    @property
    def composite(self) -> bool:
        return isinstance(self.backbone, CBInternImage)

    def _neck(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.neck[0](maps) if isinstance(self.neck, nn.ModuleList) else self.neck(maps)

    def features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Neck maps of the normalised batch (N, 3, H, W): one list, or (assisting, lead) for CB."""
        if not self.composite:
            maps = self.backbone.forward_intermediates(x, indices=OUT_INDICES, intermediates_only=True, stop_early=True)
            return [self._neck(maps)]
        out = self.backbone(x)
        if self.composite:
            return [self._neck(out[0]), self._neck(out[1])]
        return [self._neck(out)]

    def forward_tensor(
        self, x: torch.Tensor, query_index: torch.Tensor | None = None, return_index: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Inference on an unpadded normalised batch (what ONNX export traces).

        Args:
            x: (N, 3, H, W) normalised images, H and W multiples of 32.
            query_index: (N, Q) encoder tokens to select instead of the top-Q scored ones.
            return_index: Also return the selected tokens.

        Returns:
            ``(scores (N, D), labels (N, D) in 0..K-1, boxes (N, D, 4) xyxy pixels)``, then the selected tokens
            (N, Q) if ``return_index``.
        """
        feats = self.features(x)[-1]
        classes, boxes, _, _, index = self.bbox_head(feats, None, query_index=query_index)
        one = x.new_ones(())
        sizes = torch.stack((one * x.shape[-2], one * x.shape[-1])).expand(x.shape[0], 2)
        out = self.bbox_head.decode(classes[-1], boxes[-1], sizes)
        return (*out, index) if return_index else out

    @staticmethod
    def _masks(batch: torch.Tensor, sizes: Sequence[tuple[int, int]], feats: Sequence[torch.Tensor]):
        if all(tuple(s) == tuple(batch.shape[-2:]) for s in sizes):
            return None
        img = batch.new_ones(batch.shape[0], *batch.shape[-2:])
        for i, (h, w) in enumerate(sizes):
            img[i, :h, :w] = 0
        return [F.interpolate(img[None], size=f.shape[-2:]).to(torch.bool)[0] for f in feats]

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        orig_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training: the official loss dict (CB: ``*0_w0.5`` assisting and ``*1`` lead terms, already weighted);
        the training loss is their sum. Eval: per image ``boxes`` (D, 4), ``labels`` (D,) in 1..K, ``scores`` (D,) at
        ``orig_sizes``."""
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, _ = self.transform(images, None)
        x = batch.tensors
        all_feats = self.features(x)
        masks = self._masks(x, sizes, all_feats[-1])
        if self.training:
            boxes = [t["boxes"].to(x.dtype) for t in targets]
            labels = [t["labels"].long() - 1 for t in targets]
            for lab in labels:
                if len(lab) and (lab.min() < 0 or lab.max() >= self.num_classes):
                    raise ValueError(f"target labels must be in 1..{self.num_classes}")
            losses: dict[str, torch.Tensor] = {}
            weights = [self.cb_first_weight, 1.0] if self.composite else [1.0]
            # One federated-loss class set per batch (None when disabled): the assisting and lead passes see the
            # same targets, so they also share the sampled negatives.
            fed_classes = self.bbox_head.sample_fed_classes(labels)
            for idx, (feats, weight) in enumerate(zip(all_feats, weights)):
                part = self.bbox_head.loss(feats, masks, boxes, labels, sizes, fed_classes=fed_classes)
                if self.composite:
                    suffix = f"{idx}" + (f"_w{weight}" if weight != 1 else "")
                    part = {f"{k}{suffix}": v * weight for k, v in part.items()}
                losses.update(part)
            return losses
        classes, boxes, _, _, _ = self.bbox_head(all_feats[-1], masks)
        size_t = x.new_tensor(sizes)
        scores, labels, xyxy = self.bbox_head.decode(classes[-1], boxes[-1], size_t)
        results = []
        for i, (h, w) in enumerate(sizes):
            oh, ow = orig_sizes[i] if orig_sizes is not None else (h, w)
            scale = xyxy.new_tensor([ow / w, oh / h, ow / w, oh / h])
            results.append({"boxes": xyxy[i] * scale, "labels": labels[i] + 1, "scores": scores[i]})
        return results


def _head(num_classes: int, head_kwargs: dict[str, Any] | None) -> DINOHead:
    return DINOHead(num_classes, **(head_kwargs or {}))


def build_dino(
    backbone: str,
    num_classes: int,
    *,
    neck_channels: int = 256,
    backbone_checkpoint: str | None = None,
    backbone_overrides: dict[str, Any] | None = None,
    **head_kwargs: Any,
) -> InternImageDINO:
    """DINO-4scale with an InternImage backbone (levels 1-3 + one extra neck level).

    Args:
        backbone: Registered InternImage name (``'internimage_t_1k_224'``, ...).
        num_classes: Foreground classes (80 for COCO).
        neck_channels: Neck and transformer width (256).
        backbone_checkpoint: Classification or mmdet checkpoint for the backbone.
        backbone_overrides: InternImage arguments (the official configs set ``layer_scale``, ``drop_path_rate``).
        **head_kwargs: :class:`DINOHead` arguments (``num_queries``, ``num_dn_queries``, ``max_per_img``, ...).
    """
    body = build_internimage_body(backbone, backbone_checkpoint, **(backbone_overrides or {}))
    in_channels = [body.feature_info[i]["num_chs"] for i in OUT_INDICES]
    neck = ChannelMapper(in_channels, neck_channels, 4)
    return InternImageDINO(body, neck, _head(num_classes, dict(head_kwargs, dim=neck_channels)))


def build_cb_dino(
    backbone: str,
    num_classes: int,
    *,
    neck_channels: int = 256,
    backbone_overrides: dict[str, Any] | None = None,
    cb_first_weight: float = 0.5,
    **head_kwargs: Any,
) -> InternImageDINO:
    """DINO-4scale with CB-InternImage (``dino_4scale_cbinternimage_*``); see :func:`build_dino`."""
    cb = CBInternImage(backbone, **(backbone_overrides or {}))
    neck = nn.ModuleList([ChannelMapper(cb.out_channels, neck_channels, 4)])
    return InternImageDINO(cb, neck, _head(num_classes, dict(head_kwargs, dim=neck_channels)), cb_first_weight)
