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
    "TASKS",
    "ExportAdaptiveAvgPool2d",
    "ExportableModel",
    "build_exportable",
    "detection_postprocess",
    "dino_exportable",
    "make_export_friendly",
]

logger = logging.getLogger(__name__)

TASKS = ("classification", "detection", "segmentation")
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
        detector: A detector from :func:`~internimage.detection.models.mask_rcnn.build_mask_rcnn` or
            :func:`~internimage.detection.models.cascade.build_cascade_mask_rcnn` (eval mode).
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


class DinoExport(nn.Module):
    """The whole DINO inference as one graph: ``images (N, 3, H, W) normalised -> scores, labels, boxes, queries``.

    No NMS is needed: the decoding is a top-k over queries x classes (the detector's ``forward_tensor``).
    Labels are 0..K-1, boxes xyxy pixels of the input, ``query_index`` (N, Q) the encoder tokens the two-stage
    selection took (what makes a fair comparison with PyTorch possible: see :func:`dino_exportable`).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor, query_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return self.detector.forward_tensor(images, query_index, return_index=True)


def dino_exportable(model: nn.Module, name: str, min_side: int = 224):
    """The :class:`~internimage.export.models.ExportableModel` of a built DINO or CB-DINO.

    The traced example is 256 x 256 and inputs must be at least 224 a side: the two-stage query selection takes
    the top ``num_queries`` (900) encoder tokens, so the four levels must hold at least that many.

    That selection is where onnxruntime and PyTorch can part: they compute the encoder scores to ~2e-6 (as PyTorch
    on 1 and 2 threads do), so tokens scored closer than that may be ranked in another order; and since DINO pairs
    the i-th selected token with the i-th content query, the detections then differ, not only their order. The
    export therefore also outputs the selection (``query_index``), and its check runs PyTorch with the exported
    run's selection. Given the same selection, full-size DINO-T agrees within 7e-5 px at 320 x 480 and 384 x 384,
    1.8e-4 px (1.4e-7 of the side: float32 rounding) at 800 x 1344 (``benchmarks/dino_onnx_parity.py``).
    """
    model.eval()
    body = model.backbone.cb_modules[0] if model.composite else model.backbone
    in_chans = int(body.patch_embed.conv1.in_channels)
    module = DinoExport(model).eval()

    def eager_given(images: torch.Tensor, exported: list[Any]) -> tuple[torch.Tensor, ...]:
        return module(images, torch.as_tensor(exported[3]).long())

    return ExportableModel(
        module,
        ["scores", "labels", "boxes", "query_index"],
        "detection",
        name,
        in_chans,
        full_model=model,
        example_blocks=8,
        min_side=min_side,
        eager_given=eager_given,
    )


def _classification(name: str, checkpoint: str | None, num_classes: int | None, **overrides: Any) -> ExportableModel:
    from ..models import create_model

    if num_classes is not None:
        overrides["num_classes"] = num_classes
    model = create_model(name, checkpoint_path=checkpoint, **overrides).eval()
    return ExportableModel(model, ["logits"], "classification", name, in_chans=_in_chans(model))


def _stored_fields(checkpoint: str | None, meta_key: str, config_cls: Any) -> dict[str, Any]:
    """The model fields ``internimage train`` stored with ``checkpoint`` (empty for official or bare weights)."""
    if checkpoint is None:
        return {}
    from ..engine.task import checkpoint_fields

    return checkpoint_fields(checkpoint, meta_key, config_cls)


def _task_config(
    config_cls: Any, presets: list[str], name: str | None, checkpoint: str | None, num_classes: int | None
) -> tuple[Any, bool]:
    """The config of the model to export: defaults <- preset ``name`` <- fields stored in ``checkpoint`` <- classes.

    Returns:
        ``(config, described)``: ``described`` is True when ``name`` is a preset or the checkpoint stores its fields.

    Raises:
        ValueError: no name and nothing stored, or a name that contradicts the checkpoint's backbone.
    """
    from ..engine.config import apply_overrides

    stored = _stored_fields(checkpoint, config_cls.meta_key, config_cls)
    if name is None and not stored:
        raise ValueError("name a model or preset to export (the checkpoint stores no model description)")
    preset = name in presets
    cfg = config_cls.from_preset(name) if preset else config_cls(model=stored.get("model") or name)
    if stored:
        if name is not None and name != stored["model"] and not preset:
            raise ValueError(
                f"checkpoint {checkpoint} holds a model on {stored['model']}, not {name}; "
                "name that backbone or omit the name"
            )
        cfg = apply_overrides(cfg, stored)
    if num_classes is not None and num_classes != cfg.num_classes:
        cfg = apply_overrides(cfg, {"num_classes": num_classes, "classes": []})
    return cfg, preset or bool(stored)


def _segmentation(
    name: str | None, checkpoint: str | None, num_classes: int | None, **overrides: Any
) -> ExportableModel:
    from ..models import ARCHS, load_weights
    from ..models.internimage import MODEL_SPECS
    from ..segmentation import SegmentationConfig, build_segmentor
    from ..segmentation.presets import list_presets

    # The one segmentor builder, on the model the checkpoint describes (``internimage train`` stores its fields),
    # else on a preset's head and widths, else on the UperNet of the official configs (512 wide, 150 classes).
    cfg, described = _task_config(SegmentationConfig, list_presets(), name, checkpoint, num_classes)
    if (not described or cfg.layer_scale is None) and cfg.model in MODEL_SPECS:
        overrides.setdefault("layer_scale", ARCHS[MODEL_SPECS[cfg.model][0]].layer_scale)  # the backbone's own
    model = build_segmentor(cfg, load_pretrained=False, backbone_overrides=overrides)
    body = model.backbone
    if checkpoint is not None:
        result = load_weights(model, checkpoint, strict=True)
        logger.info("loaded %s into %s: %s", checkpoint, name or cfg.model, result.summary())
    model.auxiliary_head = None  # training-only branch
    make_export_friendly(model)
    return ExportableModel(
        model.eval(),
        ["logits"],
        "segmentation",
        name or cfg.model,
        in_chans=_in_chans(body),
        example_blocks=4,
    )


def _detection(
    name: str | None,
    checkpoint: str | None,
    num_classes: int | None,
    arch: str | None = None,
    **overrides: Any,
) -> ExportableModel:
    from ..detection import ARCHITECTURES, DetectionConfig, build_detector_from_config
    from ..detection.models import load_detector_weights
    from ..detection.presets import list_presets
    from ..engine.config import apply_overrides

    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    # The model the checkpoint describes (arch, widths, classes, layer scale), else a preset's, else the official
    # Mask R-CNN / Cascade / DINO of ``arch`` on the backbone ``name`` (layer_scale=1.0, as every official
    # detection config).
    cfg, described = _task_config(DetectionConfig, list_presets(), name, checkpoint, num_classes)
    if arch is not None and arch != cfg.arch:
        if described:
            raise ValueError(f"{checkpoint or name} is a {cfg.arch} detector, not --arch {arch}")
        cfg = apply_overrides(cfg, {"arch": arch})
    if overrides:
        cfg = apply_overrides(cfg, {"layer_scale": overrides.pop("layer_scale", cfg.layer_scale)})
    if overrides:
        raise ValueError(f"unknown detection export arguments: {sorted(overrides)}")
    model = build_detector_from_config(cfg, load_pretrained=False)
    if checkpoint is not None:
        # The loader `internimage eval` uses: ours, training checkpoints and official mmdet files, strictly.
        result = load_detector_weights(model, checkpoint, strict=True)
        logger.info("loaded %s (%s) into %s on %s", checkpoint, result.format, cfg.arch, cfg.model)
    model.eval()
    if cfg.arch in ("dino", "cb_dino"):
        return dino_exportable(model, name or cfg.model)
    names = [f"fpn_{k}" for k in _FPN_LEVELS]
    names += [f"rpn_objectness_{k}" for k in _FPN_LEVELS] + [f"rpn_deltas_{k}" for k in _FPN_LEVELS]
    body = model.backbone.body
    # 4 strides a side: at 2 the max-pooled level would be 1x1, a size torch.export bakes in.
    module = DetectionDense(model).eval()
    return ExportableModel(
        module, names, "detection", name or cfg.model, _in_chans(body), full_model=model, example_blocks=4,
        min_side=96,
    )  # fmt: skip


def build_exportable(
    task: str,
    name: str | None,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    arch: str | None = None,
    **overrides: Any,
) -> ExportableModel:
    """Build the export-ready module of ``task``: the model ``checkpoint`` describes, as ``eval`` builds it.

    Args:
        task: ``classification``, ``detection`` or ``segmentation``.
        name: An InternImage name (all tasks) or a detection / segmentation preset (e.g.
            ``upernet_internimage_t_512_160k_ade20k``); may be None for a checkpoint written by ``internimage train``
            (its stored model fields: architecture, widths, layer scale, classes, say what to build).
        checkpoint: Weights of the whole model (classifier, segmentor or detector).
        num_classes: Classes (default: the checkpoint's, else the model's / preset's; 150 for segmentation, 80
            for detection).
        arch: A detection architecture of :data:`internimage.detection.ARCHITECTURES` (detection only; default:
            the checkpoint's or preset's, else ``mask_rcnn``).
        **overrides: InternImage arguments (e.g. ``layer_scale=1.0``).

    Returns:
        The :class:`ExportableModel`, in eval mode.
    """
    if task == "classification":
        if name is None:
            raise ValueError("name the classification model to export (e.g. internimage_t_1k_224)")
        return _classification(name, checkpoint, num_classes, **overrides)
    if task == "segmentation":
        return _segmentation(name, checkpoint, num_classes, **overrides)
    if task == "detection":
        return _detection(name, checkpoint, num_classes, arch, **overrides)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
