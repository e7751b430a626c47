"""The two-stage detector both Mask R-CNN and Cascade Mask R-CNN are: InternImage-FPN -> RPN -> RoI heads.

:class:`InternImageRCNN` is torchvision's ``GeneralizedRCNN`` with ``transform`` a :class:`PassThroughTransform`,
``backbone`` an :class:`InternImageFPN` (maps ``'0'..'3'`` and ``'pool'``, strides 4-64), ``rpn`` an
:class:`MMDetRPN` and ``roi_heads`` any module with torchvision's ``RoIHeads`` call signature; the detectors differ
only in their RoI heads. Its forward (:func:`detector_forward`) takes images the data pipeline already resized and
returns losses (train) or detections at the sizes before that resize (eval). :func:`build_fpn`,
:func:`build_detector_rpn` and :func:`build_roi_pools` build the parts both detectors share from their builders'
arguments.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from .backbone import InternImageFPN, build_internimage_body
from .layer_decay import OFFSET_LR_KEYS, detection_layer_id_fn
from .poolers import build_roi_pool
from .rpn import MMDetRPN, build_rpn
from .transform import PassThroughTransform

__all__ = [
    "ROI_FEATURE_MAPS",
    "InternImageRCNN",
    "build_detector_rpn",
    "build_fpn",
    "build_roi_pools",
    "detector_forward",
]

# RoIs are pooled from the stride 4-32 maps (mmdet's featmap_strides); the extra 'pool' level only feeds the RPN.
ROI_FEATURE_MAPS = ("0", "1", "2", "3")


class InternImageRCNN(GeneralizedRCNN):
    """InternImage-FPN + :class:`MMDetRPN` + RoI heads behind a :class:`PassThroughTransform`.

    Args:
        backbone: The FPN backbone (see :func:`build_fpn`).
        rpn: The RPN (see :func:`build_detector_rpn`).
        roi_heads: RoI heads called as torchvision's ``RoIHeads``.
        num_classes: Foreground classes (labels 1..num_classes; 0 is background).
    """

    #: How :func:`internimage.models.load_weights` reads checkpoints into this model.
    weights_layout = "rcnn"
    #: Parameters whose lr ``offset_lr_mul`` multiplies under layer decay.
    offset_lr_keys = OFFSET_LR_KEYS

    def layer_id_fn(self) -> tuple[Callable[[str], int], int]:
        """The official detection layer-decay rule for this model: ``(name -> layer id, number of ids)``."""
        return detection_layer_id_fn(self)

    def __init__(self, backbone: InternImageFPN, rpn: MMDetRPN, roi_heads: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, rpn, roi_heads, PassThroughTransform())
        self.num_classes = num_classes

    def forward(  # type: ignore[override]
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        orig_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """See :func:`detector_forward`."""
        return detector_forward(self, images, targets, orig_sizes)


def detector_forward(
    model: nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]] | None = None,
    orig_sizes: list[tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
    """Two-stage forward over ``model.transform/backbone/rpn/roi_heads``.

    Args:
        model: A detector with ``transform``, ``backbone``, ``rpn`` and ``roi_heads`` (:class:`InternImageRCNN`).
        images: (3, H_i, W_i) uint8 images (or float in [0, 1]), already resized by the data pipeline.
        targets: Training targets per image: ``boxes`` (K, 4) xyxy float, ``labels`` (K,) int64 in 1..num_classes,
            ``masks`` (K, H_i, W_i) uint8, optionally ``ignore_boxes`` (M, 4) xyxy regions that the RPN and RoI
            heads keep out of their negatives when built with ``ignore_iof_thr`` > 0.
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


def build_fpn(
    backbone: str,
    channels: int,
    checkpoint: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> InternImageFPN:
    """InternImage body (classifier pruned) + FPN.

    Args:
        backbone: Registered InternImage name (e.g. ``'internimage_t_1k_224'``).
        channels: FPN width.
        checkpoint: Classification or mmdet checkpoint for the body.
        overrides: InternImage arguments (the presets set ``layer_scale``, ``drop_path_rate``).
    """
    body = build_internimage_body(backbone, checkpoint, **(overrides or {}))
    return InternImageFPN(body, channels)


def build_detector_rpn(
    fpn: InternImageFPN,
    *,
    box_loss: str,
    allowed_border: float,
    pre_nms_top_n_train: int,
    post_nms_top_n_train: int,
    pre_nms_top_n_test: int,
    post_nms_top_n_test: int,
    batch_size_per_image: int,
    ignore_iof_thr: float = -1.0,
) -> MMDetRPN:
    """:func:`build_rpn` over the maps of ``fpn``, with the builders' per-mode proposal counts.

    Args:
        fpn: The backbone the RPN reads (its width and strides).
        box_loss: ``'l1'`` (Mask R-CNN) or ``'smooth_l1'`` (Cascade).
        allowed_border: -1 (Mask R-CNN) or 0 (Cascade), see :class:`MMDetRPN`.
        pre_nms_top_n_train: Proposals per level kept before NMS in training.
        post_nms_top_n_train: Proposals per image after NMS in training.
        pre_nms_top_n_test: As above, at test time.
        post_nms_top_n_test: As above, at test time.
        batch_size_per_image: Anchors sampled per image for the loss.
        ignore_iof_thr: See :func:`build_rpn`; -1 (the official configs) ignores nothing.
    """
    return build_rpn(
        fpn.out_channels,
        fpn.strides,
        box_loss=box_loss,
        allowed_border=allowed_border,
        pre_nms_top_n=dict(training=pre_nms_top_n_train, testing=pre_nms_top_n_test),
        post_nms_top_n=dict(training=post_nms_top_n_train, testing=post_nms_top_n_test),
        batch_size_per_image=batch_size_per_image,
        ignore_iof_thr=ignore_iof_thr,
    )


def build_roi_pools(fpn: InternImageFPN, kind: str = "mmdet") -> tuple[nn.Module, nn.Module]:
    """The box (7x7) and mask (14x14) poolers over :data:`ROI_FEATURE_MAPS`; ``kind`` as :func:`build_roi_pool`."""
    strides = fpn.strides[: len(ROI_FEATURE_MAPS)]
    return (
        build_roi_pool(ROI_FEATURE_MAPS, 7, kind, strides=strides),
        build_roi_pool(ROI_FEATURE_MAPS, 14, kind, strides=strides),
    )
