"""Pieces shared by the Mask R-CNN and Cascade Mask R-CNN detectors.

* :class:`LevelRoIAlign`: mmdet's ``SingleRoIExtractor`` semantics (RoIAlign ``aligned=True``, adaptive sampling,
  level = floor(log2(sqrt(area) / 56)) clamped to the levels), so official weights see the features they were
  trained on. torchvision's ``MultiScaleRoIAlign`` maps RoIs to the same levels but samples with
  ``aligned=False`` and ``sampling_ratio=2``; it remains available with ``roi_align='torchvision'``.
* :class:`PassThroughTransform`: normalise and batch only; resizing and flipping are the data pipeline's job
  (mmdet order), which is what the 3x multi-scale + crop recipe needs.
* :func:`detector_forward`: torchvision's two-stage forward, with predictions returned at the original image
  size given by the data pipeline.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align

__all__ = [
    "LevelRoIAlign",
    "PassThroughTransform",
    "build_roi_pool",
    "detector_forward",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LevelRoIAlign(nn.Module):
    """Multi-level RoIAlign with mmdet's level rule and ``aligned=True`` sampling.

    Args:
        featmap_names: Feature maps to pool from, finest first.
        output_size: Side of the pooled square (7 for boxes, 14 for masks).
        sampling_ratio: Samples per bin side; 0 means adaptive (mmdet's default).
        aligned: Half-pixel shift of the RoI corners (mmcv's default, ``True``).
        finest_scale: RoIs with sqrt(area) below ``2 * finest_scale`` go to the finest level.
        strides: Stride of each map; inferred from the map and image sizes (as torchvision does) if None.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int,
        sampling_ratio: int = 0,
        aligned: bool = True,
        finest_scale: float = 56.0,
        strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.finest_scale = finest_scale
        self.strides = list(strides) if strides is not None else None
        if self.strides is not None and len(self.strides) != len(self.featmap_names):
            raise ValueError(f"LevelRoIAlign: {len(self.strides)} strides for {len(self.featmap_names)} maps")

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """Args: boxes: (K, 4) xyxy. Returns: (K,) level index per box."""
        scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.featmap_names) - 1).long()

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Args:
            x: Feature maps by name, (N, C, H_l, W_l).
            boxes: Per image (K_i, 4) xyxy boxes in input-image pixels.
            image_shapes: Per image (H, W) before padding (used to infer each map's stride).

        Returns:
            (sum K_i, C, S, S) pooled features, in the order of the concatenated boxes.
        """
        feats = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        if rois.shape[0] == 0:
            return out
        max_h = max(s[0] for s in image_shapes)
        levels = self.levels(rois[:, 1:])
        for level, feat in enumerate(feats):
            if self.strides is not None:
                scale = 1.0 / self.strides[level]
            else:  # maps are at power-of-two strides of the padded batch: round the padding away
                scale = 2.0 ** round(math.log2(feat.shape[-2] / max_h))
            idx = torch.where(levels == level)[0]
            if idx.numel():
                pooled = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, self.aligned)
                out[idx] = pooled.to(out.dtype)
        return out


def build_roi_pool(
    featmap_names: Sequence[str], output_size: int, kind: str = "mmdet", strides: Sequence[int] | None = None
) -> nn.Module:
    """``'mmdet'``: :class:`LevelRoIAlign` (official numerics); ``'torchvision'``: ``MultiScaleRoIAlign``."""
    if kind == "mmdet":
        return LevelRoIAlign(featmap_names, output_size, strides=strides)
    if kind == "torchvision":
        return MultiScaleRoIAlign(list(featmap_names), output_size, sampling_ratio=2)
    raise ValueError(f"roi_align must be 'mmdet' or 'torchvision', got {kind!r}")


class PassThroughTransform(GeneralizedRCNNTransform):
    """Normalise (ImageNet mean/std; uint8 or [0, 1] float input) and pad-batch to a multiple of 32; never resize."""

    def __init__(
        self,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        size_divisible: int = 32,
    ) -> None:
        super().__init__(
            min_size=800, max_size=1333, image_mean=list(image_mean), image_std=list(image_std),
            size_divisible=size_divisible,
        )  # fmt: skip

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Args: image: (3, H, W) uint8 in [0, 255] or float in [0, 1]. Returns: the normalised float image."""
        if not image.is_floating_point():
            image = image.float().div_(255.0)
        return super().normalize(image)

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


def detector_forward(
    model: nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]] | None = None,
    orig_sizes: list[tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
    """Two-stage forward over ``model.transform/backbone/rpn/roi_heads``.

    Args:
        images: (3, H_i, W_i) uint8 images (or float in [0, 1]), already resized by the data pipeline.
        targets: Training targets per image: ``boxes`` (K, 4) xyxy float, ``labels`` (K,) int64 in 1..num_classes,
            ``masks`` (K, H_i, W_i) uint8.
        orig_sizes: (H, W) to map predictions back to (the size before the pipeline's resize); default: input size.

    Returns:
        Training: a dict of scalar losses. Eval: per image ``boxes`` (D, 4), ``labels`` (D,), ``scores`` (D,),
        ``masks`` (D, 1, H, W) probabilities at ``orig_sizes``.
    """
    if model.training and targets is None:
        raise ValueError("targets are required in training mode")
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    batch, targets = model.transform(images, targets)
    features = model.backbone(batch.tensors)
    device_type = batch.tensors.device.type
    amp = torch.is_autocast_enabled(device_type)
    if amp:
        # Box decoding, losses and NMS in bf16/fp16 lose whole pixels on large images (mmdet's force_fp32 does the
        # same): under autocast only the backbone and FPN run in low precision.
        features = OrderedDict((k, v.float()) for k, v in features.items())
    with torch.autocast(device_type, enabled=False) if amp else contextlib.nullcontext():
        proposals, rpn_losses = model.rpn(batch, features, targets)
        detections, roi_losses = model.roi_heads(features, proposals, batch.image_sizes, targets)
    if model.training:
        return {**rpn_losses, **roi_losses}
    return model.transform.postprocess(detections, batch.image_sizes, orig_sizes or sizes)
