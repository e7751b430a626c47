"""Export-ready forms of the three model families: one image tensor in, a fixed tuple of tensors out.

* classification: the InternImage classifier, ``images (N, 3, H, W) -> logits (N, K)``.
* segmentation: UperNet whole-image inference, ``images -> logits (N, K, H, W)`` (the auxiliary FCN head is a
  training-only branch and is dropped).
* detection: the dense part of Mask R-CNN / Cascade Mask R-CNN: InternImage + FPN + RPN head, ``images -> 5 FPN
  maps (strides 4..64) + RPN objectness and box deltas per level``. The rest of torchvision's two-stage inference
  (anchor decoding, NMS, RoIAlign, box/mask heads) cannot be captured by ``torch.export``: torchvision's
  ``batched_nms`` branches on the data-dependent number of boxes (``GuardOnDataDependentSymNode`` at
  ``torchvision/ops/boxes.py``), so it runs after the exported graph (see :func:`detection_postprocess`). The
  exported part holds every DCNv3 layer and nearly all the FLOPs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

__all__ = [
    "DETECTORS",
    "TASKS",
    "ExportAdaptiveAvgPool2d",
    "ExportableModel",
    "build_exportable",
    "detection_postprocess",
    "make_export_friendly",
]

logger = logging.getLogger(__name__)

TASKS = ("classification", "detection", "segmentation")
DETECTORS = ("mask_rcnn", "cascade", "dino", "cb_dino")
_FPN_LEVELS = ("0", "1", "2", "3", "pool")


class ExportAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` written with shape arithmetic, so it stays right for every exported input size.

    The exporters lower adaptive pooling to a fixed-kernel ``AveragePool`` computed from the traced example, which
    is silently wrong at other sizes (UperNet's pyramid pooling, scales 2/3/6). Here bin i of a side of length L
    averages ``[floor(i*L/s), ceil((i+1)*L/s))``, PyTorch's rule, as a (s, L) averaging matrix built from
    ``arange``: two small matmuls.

    Args:
        output_size: s, or (s_h, s_w).
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    @staticmethod
    def _bins(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
        i = torch.arange(bins, device=like.device).unsqueeze(1)
        start = (i * length) // bins
        end = ((i + 1) * length + bins - 1) // bins
        pos = torch.arange(length, device=like.device).unsqueeze(0)
        inside = ((pos >= start) & (pos < end)).to(like.dtype)
        return inside / inside.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, C, H, W). Returns: (N, C, s_h, s_w)."""
        rows = self._bins(x.shape[-2], self.output_size[0], x)  # (s_h, H)
        cols = self._bins(x.shape[-1], self.output_size[1], x)  # (s_w, W)
        return rows @ x @ cols.transpose(0, 1)


def make_export_friendly(module: nn.Module) -> nn.Module:
    """Swap every ``nn.AdaptiveAvgPool2d`` other than global pooling for :class:`ExportAdaptiveAvgPool2d`, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size not in (1, (1, 1)):
            setattr(module, name, ExportAdaptiveAvgPool2d(child.output_size))
        else:
            make_export_friendly(child)
    return module


def _in_chans(body: nn.Module) -> int:
    return int(body.patch_embed.conv1.in_channels)


@dataclasses.dataclass
class ExportableModel:
    """A module to export and what the exporters need to know about it.

    Attributes:
        module: Eval-mode module, ``forward(images) -> Tensor | tuple[Tensor, ...]``.
        output_names: One name per output tensor.
        task: ``classification``, ``detection`` or ``segmentation``.
        name: Model (or preset) name, for messages.
        in_chans: Image channels.
        size_multiple: Height and width must be multiples of this (the total stride, 32).
        full_model: The complete model the module was cut from (the detector), else ``module``.
        example_blocks: Side of the traced example in strides. Sizes seen in the example can be baked in where
            model code compares shapes (UperNet skips resizing maps that already have the target size, which
            would pin its 1/32 map to the example's), so segmentation traces a side of 4 strides, not 2.
        trace_context: Entered around ``torch.export``, inside :func:`internimage.ops.export_mode` (which already
            makes UperNet compare sizes statically).
        min_side: Smallest H and W the exported program is valid for (torch.export assumes dynamic sizes are not
            1: the detector's stride-64 level must be at least 2 pixels, so H, W >= 96 there).
        eager_given: How the check computes the eager outputs from the input and the exported file's outputs
            (default: ``module(images)``). DINO passes the exported run's query selection back, so that
            near-tied encoder tokens ranked in another order do not count as an export error.
    """

    module: nn.Module
    output_names: list[str]
    task: str
    name: str
    in_chans: int = 3
    size_multiple: int = 32
    full_model: nn.Module | None = None
    example_blocks: int = 2
    trace_context: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
    min_side: int = 64
    eager_given: Callable[[torch.Tensor, list[Any]], Any] | None = None

    @property
    def input_name(self) -> str:
        return "images"


class DetectionDense(nn.Module):
    """Backbone + FPN + RPN head of a torchvision-style two-stage detector, as one tensor-in/tensors-out graph.

    Args:
        detector: A detector from :func:`~internimage.models.detection.mask_rcnn.build_mask_rcnn` or
            :func:`~internimage.models.detection.cascade.build_cascade_mask_rcnn` (eval mode).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.rpn_head = detector.rpn.head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Args: images: (N, 3, H, W) normalised images, H and W multiples of 32.

        Returns:
            5 FPN maps ``(N, F, H/s, W/s)`` for s = 4, 8, 16, 32, 64; then 5 objectness maps ``(N, A, H/s, W/s)``;
            then 5 box-delta maps ``(N, 4A, H/s, W/s)`` (A anchors per location).
        """
        features = self.backbone(images)
        maps = [features[k] for k in _FPN_LEVELS]
        objectness, deltas = self.rpn_head(maps)
        return (*maps, *objectness, *deltas)


def detection_postprocess(
    detector: nn.Module, images: torch.Tensor, outputs: list[torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """Finish detection from the outputs of an exported :class:`DetectionDense` graph, with torchvision ops.

    Args:
        detector: The detector the graph was exported from (eval mode); its RPN and RoI heads are used.
        images: (N, 3, H, W) the normalised images given to the graph.
        outputs: The graph's 15 outputs, in order.

    Returns:
        Per image ``boxes`` (D, 4), ``labels`` (D,), ``scores`` (D,) and ``masks`` (D, 1, H, W), at input size.
    """
    from torchvision.models.detection.image_list import ImageList

    outputs = [torch.as_tensor(o) for o in outputs]
    features = dict(zip(_FPN_LEVELS, outputs[:5]))
    objectness, deltas = outputs[5:10], outputs[10:15]
    sizes = [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
    batch = ImageList(images, sizes)
    rpn = detector.rpn
    with torch.no_grad():
        anchors = rpn.anchor_generator(batch, list(features.values()))
        counts = [o[0].numel() for o in objectness]
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        flat_obj, flat_deltas = concat_box_prediction_layers(list(objectness), list(deltas))
        proposals = rpn.box_coder.decode(flat_deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, flat_obj, batch.image_sizes, counts)
        detections, _ = detector.roi_heads(features, boxes, batch.image_sizes)
    return detector.transform.postprocess(detections, batch.image_sizes, sizes)


def _classification(name: str, checkpoint: str | None, num_classes: int | None, **overrides: Any) -> ExportableModel:
    from ..models import create_model

    if num_classes is not None:
        overrides["num_classes"] = num_classes
    model = create_model(name, checkpoint_path=checkpoint, **overrides).eval()
    return ExportableModel(model, ["logits"], "classification", name, in_chans=_in_chans(model))


def _segmentation(name: str, checkpoint: str | None, num_classes: int | None, **overrides: Any) -> ExportableModel:
    from ..configs.segmentation import list_presets
    from ..models import load_weights
    from ..models.internimage import _MODEL_SPECS, ARCHS
    from ..segmentation import SegTrainConfig, build_segmentor

    # The one segmentor builder: a preset gives its head (UperNet or Mask2Former) and widths; a bare backbone name
    # gives the UperNet of the official configs (512 wide, 150 classes).
    fields = {} if num_classes is None else {"num_classes": num_classes}
    preset = name in list_presets()
    cfg = SegTrainConfig.from_preset(name, **fields) if preset else SegTrainConfig(model=name, **fields)
    if (not preset or cfg.layer_scale is None) and cfg.model in _MODEL_SPECS:
        overrides.setdefault("layer_scale", ARCHS[_MODEL_SPECS[cfg.model][0]].layer_scale)  # the backbone's own
    model = build_segmentor(cfg, load_pretrained=False, backbone_overrides=overrides)
    body = model.backbone
    if checkpoint is not None:
        result = load_weights(model, checkpoint, strict=True)
        logger.info("loaded %s into %s: %s", checkpoint, name, result.summary())
    model.auxiliary_head = None  # training-only branch
    make_export_friendly(model)
    return ExportableModel(
        model.eval(),
        ["logits"],
        "segmentation",
        name,
        in_chans=_in_chans(body),
        example_blocks=4,
    )


def _detection(
    name: str, checkpoint: str | None, num_classes: int | None, detector: str = "mask_rcnn", **overrides: Any
) -> ExportableModel:
    num_classes = num_classes if num_classes is not None else 80
    if detector in ("dino", "cb_dino"):
        from ..models.detection.dino import export_dino

        return export_dino(name, checkpoint, num_classes, detector, **overrides)
    if detector == "mask_rcnn":
        from ..models.detection.mask_rcnn import build_mask_rcnn as build
    elif detector == "cascade":
        from ..models.detection.cascade import build_cascade_mask_rcnn as build
    else:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    overrides.setdefault("layer_scale", 1.0)  # every official detection config (and `eval`'s default)
    model = build(name, num_classes, backbone_overrides=overrides)
    if checkpoint is not None:
        # The loader `internimage eval` uses: ours, training checkpoints and official mmdet files, strictly.
        from ..models.detection import load_detector_weights

        result = load_detector_weights(model, checkpoint, strict=True)
        logger.info("loaded %s (%s) into %s on %s", checkpoint, result.format, detector, name)
    model.eval()
    names = [f"fpn_{k}" for k in _FPN_LEVELS]
    names += [f"rpn_objectness_{k}" for k in _FPN_LEVELS] + [f"rpn_deltas_{k}" for k in _FPN_LEVELS]
    body = model.backbone.body
    # 4 strides a side: at 2 the max-pooled level would be 1x1, a size torch.export bakes in.
    module = DetectionDense(model).eval()
    return ExportableModel(
        module, names, "detection", name, _in_chans(body), full_model=model, example_blocks=4, min_side=96
    )


def build_exportable(
    task: str,
    name: str,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    detector: str = "mask_rcnn",
    **overrides: Any,
) -> ExportableModel:
    """Build the export-ready module of ``task``.

    Args:
        task: ``classification``, ``detection`` or ``segmentation``.
        name: An InternImage name (all tasks) or a segmentation preset (e.g. ``upernet_internimage_t_512_160k_ade20k``).
        checkpoint: Weights of the whole model (classifier, segmentor or detector).
        num_classes: Classes (default: the model's / preset's; 150 for segmentation, 80 for detection).
        detector: ``mask_rcnn`` or ``cascade`` (detection only).
        **overrides: InternImage arguments (e.g. ``layer_scale=1.0``).

    Returns:
        The :class:`ExportableModel`, in eval mode.
    """
    if task == "classification":
        return _classification(name, checkpoint, num_classes, **overrides)
    if task == "segmentation":
        return _segmentation(name, checkpoint, num_classes, **overrides)
    if task == "detection":
        return _detection(name, checkpoint, num_classes, detector, **overrides)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
