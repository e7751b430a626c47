"""Encoder-decoder segmentor: one InternImage backbone + a decode head (+ an auxiliary head).

The backbone is the package's single :class:`~internimage.models.internimage.InternImage` class, read through
``forward_intermediates`` (NCHW maps at strides 4/8/16/32, exactly the maps of the official mmseg backbone); its
classifier is pruned. Attribute names ``backbone``/``decode_head``/``auxiliary_head`` match mmseg's
``EncoderDecoder``, so an official mmseg state dict maps onto this module key for key.

Inference follows mmseg 0.x: ``whole`` (one pass, logits resized to the input) or ``slide`` (overlapping crops,
logits averaged where they overlap); :meth:`Segmentor.predict` adds keep-ratio rescaling to a test scale,
rounding up to a multiple of 32, multi-scale ratios and horizontal flip, averaging softmax probabilities at the
original resolution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models.internimage import InternImage, dense_layer_id
from .heads import FCNHead, SegformerHead, UPerHead

__all__ = ["Segmentor", "build_mask2former", "build_segformer", "build_upernet", "mmseg_layer_id", "rescale_size"]

logger = logging.getLogger(__name__)

_M2F_LAYER0 = ("mask_embed", "cls_embed", "level_embed", "query_embed", "query_feat")


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """Keep-ratio size that fits ``scale`` (mmcv ``rescale_size``): long edge <= max(scale), short <= min(scale).

    Returns:
        ``(new_height, new_width)``.
    """
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(height, width), short_max / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class Segmentor(nn.Module):
    """InternImage + UperNet (or another decode head) for semantic segmentation.

    Args:
        backbone: An InternImage; its classifier is removed here.
        decode_head: Head taking the list of 4 maps and returning (N, K, H/4, W/4) logits.
        auxiliary_head: Optional head trained with ``aux_loss_weight`` (FCN on stage 3 in the official configs).
        aux_loss_weight: Weight of the auxiliary cross entropy (0.4 officially).
        ignore_index: Label value excluded from the loss and the metrics.
        avg_non_ignore: Average the cross entropy over labelled pixels only. mmseg 0.27 (the official code)
            averages over all pixels, ignored ones counting as zero loss; that is the default here.
        align_corners: ``align_corners`` of the logit upsampling.
    """

    #: How :func:`internimage.models.load_weights` reads checkpoints into this model.
    weights_layout = "segmentor"

    def __init__(
        self,
        backbone: InternImage,
        decode_head: nn.Module,
        auxiliary_head: nn.Module | None = None,
        aux_loss_weight: float = 0.4,
        ignore_index: int = 255,
        avg_non_ignore: bool = False,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        backbone.prune_intermediate_layers(len(backbone.levels), prune_head=True)
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_loss_weight = aux_loss_weight
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.align_corners = align_corners
        self.num_classes = decode_head.num_classes

    # ----------------------------------------------------------------------------------------- training
    def extract_feat(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Args: images: (N, 3, H, W). Returns: 4 NCHW maps at strides 4, 8, 16, 32."""
        return self.backbone.forward_intermediates(images, intermediates_only=True)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Whole-image logits, or the training losses when ``labels`` are given (so DDP/FSDP wrap one call).

        Args:
            images: (N, 3, H, W) normalised images.
            labels: Optional (N, H, W) int64 labels; see :meth:`forward_train`.

        Returns:
            (N, K, H, W) logits, or the loss dict of :meth:`forward_train`.
        """
        if labels is not None:
            return self.forward_train(images, labels)
        logits = self.decode_head(self.extract_feat(images))
        return self._upsample(logits, images.shape[-2:])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone blocks in backward (the heads are cheap)."""
        self.backbone.set_grad_checkpointing(enable)

    def _upsample(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self._upsample(logits, labels.shape[-2:])
        loss = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index, reduction="none")
        if self.avg_non_ignore:
            return loss.sum() / (labels != self.ignore_index).sum().clamp(min=1)
        return loss.mean()

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch.

        Args:
            images: (N, 3, H, W) normalised images.
            labels: (N, H, W) int64 class ids, ``ignore_index`` for unlabelled pixels.

        Returns:
            ``loss`` (the weighted total to backpropagate), ``loss_decode``, ``loss_aux`` (if an auxiliary head)
            and ``acc_seg`` (pixel accuracy of the decode head in percent, detached).
        """
        if labels.dim() == 4:
            labels = labels.squeeze(1)
        feats = self.extract_feat(images)
        if hasattr(self.decode_head, "loss"):  # set-prediction heads (Mask2Former) own their losses
            out = self.decode_head.loss(feats, labels, self.ignore_index)
            out["loss"] = out.pop("loss_decode")
            return out
        logits = self.decode_head(feats)
        out = {"loss_decode": self._ce(logits, labels)}
        if self.auxiliary_head is not None:
            out["loss_aux"] = self.aux_loss_weight * self._ce(self.auxiliary_head(feats), labels)
        out["loss"] = sum(out.values())
        with torch.no_grad():
            pred = self._upsample(logits, labels.shape[-2:]).argmax(1)
            valid = labels != self.ignore_index
            out["acc_seg"] = 100.0 * (pred[valid] == labels[valid]).float().sum() / valid.sum().clamp(min=1)
        return out

    # ----------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def inference(
        self,
        images: torch.Tensor,
        mode: str = "whole",
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits at the input resolution, one pass or sliding window.

        Args:
            images: (N, 3, H, W) normalised images.
            mode: ``'whole'`` or ``'slide'``.
            crop_size: (h, w) window of ``slide``.
            stride: (h, w) step of ``slide``.

        Returns:
            (N, K, H, W) logits.
        """
        if mode == "whole":
            return self(images)
        if mode != "slide":
            raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
        if crop_size is None or stride is None:
            raise ValueError("slide inference needs crop_size and stride")
        return self._slide(images, tuple(crop_size), tuple(stride))

    def _slide(self, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
        n, _, h, w = images.shape
        (ch, cw), (sh, sw) = crop, stride
        rows = max(h - ch + sh - 1, 0) // sh + 1
        cols = max(w - cw + sw - 1, 0) // sw + 1
        logits = images.new_zeros((n, self.num_classes, h, w))
        count = images.new_zeros((1, 1, h, w))
        for r in range(rows):
            for c in range(cols):
                # The last window is shifted back inside the image, as in mmseg, so every window is full-size.
                y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                logits[:, :, y1:y2, x1:x2] += self(images[:, :, y1:y2, x1:x2])
                count[:, :, y1:y2, x1:x2] += 1
        return logits / count

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        scale: Sequence[int] | None = (2048, 512),
        ratios: Sequence[float] = (1.0,),
        flip: bool = False,
        mode: str = "whole",
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        size_divisor: int = 32,
    ) -> torch.Tensor:
        """Class probabilities at the original resolution, with optional multi-scale + flip TTA.

        Each augmented view is resized keep-ratio to ``scale * ratio`` (then up to a multiple of
        ``size_divisor``), run with :meth:`inference`, softmaxed, resized back and averaged.

        Args:
            images: (N, 3, H, W) normalised images at their original size.
            scale: Test scale (long, short) as in mmseg's ``img_scale``; None keeps the input size.
            ratios: Scale ratios (``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)`` for the official multi-scale test).
            flip: Also run horizontally flipped views.
            mode, crop_size, stride: See :meth:`inference`.
            size_divisor: Round resized sides up to a multiple of this (0 to disable).

        Returns:
            (N, K, H, W) probabilities.
        """
        n, _, h, w = images.shape
        probs = images.new_zeros((n, self.num_classes, h, w))
        views = 0
        for ratio in ratios:
            size = (h, w) if scale is None else rescale_size(h, w, [int(s * ratio) for s in scale])
            if scale is None and ratio != 1.0:
                size = (int(h * ratio + 0.5), int(w * ratio + 0.5))
            if size_divisor:
                size = tuple(math.ceil(s / size_divisor) * size_divisor for s in size)
            view = images if tuple(size) == (h, w) else F.interpolate(images, size=size, mode="bilinear")
            for flipped in (False, True) if flip else (False,):
                x = view.flip(-1) if flipped else view
                logits = self.inference(x, mode, crop_size, stride)
                logits = logits.flip(-1) if flipped else logits
                probs += F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=self.align_corners).softmax(
                    1
                )
                views += 1
        return probs / views

    # ----------------------------------------------------------------------------------------- optimisation
    def layer_id_fn(self) -> tuple[Callable[[str], int], int]:
        """The official layer-decay rule for this model: ``(name -> layer id, number of ids)``."""
        depths = self.backbone.depths
        num_layers = sum(depths)
        return (lambda name: mmseg_layer_id(name, depths, num_layers)), num_layers + 2


def mmseg_layer_id(name: str, depths: Sequence[int], num_layers: int) -> int:
    """Layer id of a segmentor parameter under the official segmentation layer-decay rule.

    Backbone parameters get :func:`~internimage.models.internimage.dense_layer_id`'s ids (the rule detection
    shares); Mask2Former's query / class / mask embeddings 0, as the original puts them with the stem; the other
    head parameters ``num_layers + 1`` (scale 1). The lr scale of id ``i`` is ``decay ** (num_layers + 1 - i)``.
    """
    parts = name.split(".")
    if parts[0] == "decode_head" and parts[1] in _M2F_LAYER0:
        return 0  # the original rule puts Mask2Former's query/class/mask embeddings with the stem (scale decay**(n+1))
    if parts[0] != "backbone":
        return num_layers + 1
    return dense_layer_id(name[len("backbone.") :], depths)


def build_upernet(
    backbone: InternImage,
    num_classes: int,
    channels: int = 512,
    aux_channels: int = 256,
    aux: bool = True,
    **kwargs: Any,
) -> Segmentor:
    """InternImage + UperNet (+ FCN auxiliary head on stage 3), the official ADE20K model.

    Args:
        backbone: The InternImage (classifier removed here).
        num_classes: Output classes.
        channels: UperNet width (512 officially).
        aux_channels: Auxiliary FCN width (256 officially); only used with ``aux``.
        aux: Build the auxiliary head.
        **kwargs: :class:`Segmentor` options (``aux_loss_weight``, ``ignore_index``, ``avg_non_ignore``).
    """
    in_channels = [backbone.channels * 2**i for i in range(len(backbone.levels))]
    decode = UPerHead(in_channels, channels=channels, num_classes=num_classes)
    auxiliary = FCNHead(in_channels[2], channels=aux_channels, num_classes=num_classes, in_index=2) if aux else None
    return Segmentor(backbone, decode, auxiliary, **kwargs)


def build_segformer(
    backbone: InternImage,
    num_classes: int,
    channels: int = 256,
    dropout_ratio: float = 0.1,
    **kwargs: Any,
) -> Segmentor:
    """InternImage + SegFormer head (no auxiliary head), the official ``segformer_internimage_*`` model.

    Args:
        backbone: The InternImage (classifier removed here).
        num_classes: Output classes.
        channels: Head width (256 officially, from mmseg's ``segformer_mit-b0`` base config).
        dropout_ratio: Dropout2d before the classifier (0.1 officially).
        **kwargs: :class:`Segmentor` options (``ignore_index``, ``avg_non_ignore``).
    """
    in_channels = [backbone.channels * 2**i for i in range(len(backbone.levels))]
    head = SegformerHead(
        in_channels, channels=channels, num_classes=num_classes, in_index=range(len(in_channels)),
        dropout_ratio=dropout_ratio,
    )  # fmt: skip
    return Segmentor(backbone, head, **kwargs)


def build_mask2former(
    backbone: InternImage,
    num_classes: int,
    dim: int = 256,
    num_queries: int = 100,
    heads: int = 8,
    hidden: int = 1024,
    dec_hidden: int | None = None,
    **kwargs: Any,
) -> Segmentor:
    """InternImage + Mask2Former (no auxiliary head), e.g. ``dim=1024, num_queries=200, heads=32, hidden=4096``
    for the official InternImage-H model. ``kwargs`` go to :class:`Mask2FormerHead`.

    ``dec_hidden`` is the FFN width of the transformer decoder when it differs from the pixel decoder's ``hidden``:
    the 256-wide H configs (Mapillary, Cityscapes, NYU, Pascal Context) use 1024 in the pixel-decoder encoder and
    2048 in the transformer decoder (None: ``hidden`` in both, as the 1024-wide configs).
    """
    from ...models.layers import FFN
    from .mask2former import Mask2FormerHead

    in_channels = [backbone.channels * 2**i for i in range(len(backbone.levels))]
    head = Mask2FormerHead(
        in_channels, num_classes, dim=dim, num_queries=num_queries, heads=heads, hidden=hidden, **kwargs
    )
    if dec_hidden is not None and dec_hidden != hidden:
        for layer in head.transformer_decoder.layers:
            layer.ffns[0] = FFN(dim, dec_hidden)
    return Segmentor(backbone, head)
