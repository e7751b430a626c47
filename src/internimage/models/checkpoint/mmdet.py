"""Detector weights: official mmdet 2.x checkpoints (InternImage Mask R-CNN / Cascade Mask R-CNN), ours, backbones.

Renames, and the layout changes between mmdet and torchvision:

* ``backbone.*`` -> ``backbone.body.*`` (the official backbone layout is ours).
* FPN: ``neck.lateral_convs.i.conv`` -> ``backbone.fpn.inner_blocks.i.0``; ``neck.fpn_convs.i.conv`` ->
  ``backbone.fpn.layer_blocks.i.0``. Both use a stride-2 max pool of the last map as the fifth level.
* RPN: ``rpn_head.rpn_conv`` -> ``rpn.head.conv.0.0``, ``rpn_cls`` -> ``cls_logits``, ``rpn_reg`` -> ``bbox_pred``.
  Both score anchors with one sigmoid logit, anchors ordered ratio-major; a softmax RPN (two logits per anchor,
  foreground first) is converted exactly to a sigmoid one (``w_fg - w_bg``).
* Mask R-CNN box head: ``shared_fcs.0/1`` -> ``box_head.fc6/fc7``. ``fc_cls`` has background LAST in mmdet and
  FIRST in torchvision: rows are rotated. ``fc_reg`` has 4 rows per foreground class (or 4 if class-agnostic);
  torchvision's ``bbox_pred`` has 4 per class including background: the background rows are zero (never used).
* Mask R-CNN mask head: ``convs.i.conv`` -> ``mask_head.i.0``, ``upsample`` -> ``mask_predictor.conv5_mask``,
  ``conv_logits`` (one map per foreground class) -> ``mask_fcn_logits`` (background map first, zero, never used).
* Cascade: ``roi_head.bbox_head.s.*`` -> ``roi_heads.box_heads.s.*`` and ``roi_head.mask_head.s.*`` ->
  ``roi_heads.mask_heads.s.*`` (our module names follow mmdet's); ``fc_cls`` rows are rotated. ``fc_reg`` keeps
  mmdet's rows: the official InternImage configs regress per class (``reg_class_agnostic=False``, 4 x 80 rows,
  class c of our 1..K at rows 4(c-1)..4c-1, no background rows); a class-agnostic head (mmdet's R-50 Cascade
  configs, 4 rows) loaded into a class-specific one is repeated for every class, which predicts the same boxes.

mmdet's ``target_stds`` (0.1, 0.1, 0.2, 0.2) equal torchvision's box-coder weights (10, 10, 5, 5), so regression
weights need no rescaling.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .core import (
    CheckpointError,
    LoadResult,
    _strip_wrappers,
    detect_format,
    load_backbone_bodies,
    load_fitting,
    read_checkpoint,
)
from .dino import load_dino_weights

__all__ = [
    "MappedState",
    "load_detector_weights",
    "load_mmdet_detector",
    "map_mmdet_state_dict",
]

logger = logging.getLogger(__name__)

# (mmdet pattern, our template); applied in order, first match wins.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.(.+)$", r"backbone.body.\1"),
    (r"^neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.layer_blocks.\1.0.\2"),
    (r"^rpn_head\.rpn_conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1"),
    (r"^rpn_head\.rpn_cls\.(weight|bias)$", r"rpn.head.cls_logits.\1"),
    (r"^rpn_head\.rpn_reg\.(weight|bias)$", r"rpn.head.bbox_pred.\1"),
    # Cascade (per-stage lists; names mirror mmdet's).
    (r"^roi_head\.bbox_head\.(\d+)\.(.+)$", r"roi_heads.box_heads.\1.\2"),
    (r"^roi_head\.mask_head\.(\d+)\.(.+)$", r"roi_heads.mask_heads.\1.\2"),
    # Mask R-CNN (torchvision modules).
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)$", r"roi_heads.box_head.fc6.\1"),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)$", r"roi_heads.box_head.fc7.\1"),
    (r"^roi_head\.bbox_head\.fc_cls\.(weight|bias)$", r"roi_heads.box_predictor.cls_score.\1"),
    (r"^roi_head\.bbox_head\.fc_reg\.(weight|bias)$", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"^roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)$", r"roi_heads.mask_head.\1.0.\2"),
    (r"^roi_head\.mask_head\.upsample\.(weight|bias)$", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (r"^roi_head\.mask_head\.conv_logits\.(weight|bias)$", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
)


@dataclass
class MappedState:
    """Result of :func:`map_mmdet_state_dict`.

    Attributes:
        state_dict: Tensors under our names, converted to our layouts.
        source: Our name -> the mmdet name it came from.
        unmapped: mmdet names no rule covers (e.g. heads of another architecture).
        ignored: mmdet entries deliberately skipped (EMA shadow buffers).
    """

    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _rename(key: str) -> str | None:
    for pattern, template in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, template, key)
    return None


def _background_first(t: torch.Tensor) -> torch.Tensor:
    """mmdet classifier rows [fg_1..fg_K, bg] -> torchvision [bg, fg_1..fg_K]."""
    return torch.cat([t[-1:], t[:-1]])


def _with_background_rows(t: torch.Tensor, per_class: int, num_classes: int) -> torch.Tensor:
    """Prepend zero rows for the background class; a class-agnostic tensor is repeated per class first."""
    if t.shape[0] == per_class:  # class-agnostic regression: every class uses the same deltas
        t = t.repeat(num_classes, *([1] * (t.dim() - 1)))
    if t.shape[0] != per_class * num_classes:
        return t  # leave it; the shape check names the conflict
    return torch.cat([t.new_zeros((per_class, *t.shape[1:])), t])


def _convert(ours: str, t: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Layout changes for the few tensors whose meaning differs (see the module docstring)."""
    if ours.endswith(("box_predictor.cls_score.weight", "box_predictor.cls_score.bias")) or re.search(
        r"box_heads\.\d+\.fc_cls\.", ours
    ):
        return _background_first(t)
    if ours.startswith("roi_heads.box_predictor.bbox_pred."):
        num_fg = target.shape[0] // 4 - 1 if target is not None else t.shape[0] // 4
        return _with_background_rows(t, 4, num_fg)
    if re.search(r"box_heads\.\d+\.fc_reg\.", ours) and target is not None and t.shape[0] == 4 < target.shape[0]:
        return t.repeat(target.shape[0] // 4, *([1] * (t.dim() - 1)))  # class-agnostic -> the same deltas per class
    if ours.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        return _with_background_rows(t, 1, t.shape[0])
    if ours.startswith("rpn.head.cls_logits.") and target is not None and t.shape[0] == 2 * target.shape[0]:
        # softmax RPN, per anchor [fg, bg] logits: sigmoid(fg - bg) is the same probability.
        return t[0::2] - t[1::2]
    return t


def map_mmdet_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> MappedState:
    """Rename and convert an mmdet 2.x Mask R-CNN / Cascade Mask R-CNN state dict to our detectors' layout.

    Args:
        sd: The checkpoint's ``state_dict`` (``module.`` wrappers are stripped).
        model: The target detector; used to pick between the Mask R-CNN and Cascade names and for shapes.

    Returns:
        The :class:`MappedState`.
    """
    own = model.state_dict() if model is not None else {}
    out = MappedState()
    for key, value in _strip_wrappers(sd).items():
        if key.startswith("ema_"):
            out.ignored.append(key)
            continue
        ours = _rename(key)
        if ours is None:
            out.unmapped.append(key)
            continue
        if ours in out.state_dict:
            raise CheckpointError(f"two checkpoint tensors map to {ours}: {out.source[ours]} and {key}")
        out.state_dict[ours] = _convert(ours, value, own.get(ours))
        out.source[ours] = key
    return out


def load_mmdet_detector(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadResult:
    """Load an official mmdet detection checkpoint into a Mask R-CNN or Cascade Mask R-CNN of this package.

    Args:
        model: The detector.
        path: The ``.pth`` (``{'state_dict': ...}``) or a safetensors file with mmdet names.
        strict: Raise unless every checkpoint tensor finds exactly one model tensor of the same shape and every
            model tensor is covered.

    Raises:
        CheckpointError: in strict mode, a one-line list of the problems.
    """
    _, sd = detect_format(read_checkpoint(path))
    mapped = map_mmdet_state_dict(sd, model)
    if mapped.ignored:
        logger.info("ignored %d EMA shadow buffers of %s", len(mapped.ignored), os.fspath(path))
    return load_fitting(model, mapped.state_dict, "mmdet", path, strict, "detector", mapped.unmapped)


_MMDET_HEADS = ("neck.", "rpn_head.", "roi_head.")
_OUR_HEADS = ("backbone.fpn.", "rpn.", "roi_heads.")


def _class_specific_regression(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Our Cascade checkpoints from before class-specific regression had 4 ``fc_reg`` rows per stage: repeating them
    for every class predicts exactly the same boxes."""
    own = model.state_dict()
    out = dict(sd)
    for k, v in sd.items():
        if re.search(r"box_heads\.\d+\.fc_reg\.", k) and k in own and v.shape[0] == 4 < own[k].shape[0]:
            out[k] = v.repeat(own[k].shape[0] // 4, *([1] * (v.dim() - 1)))
    return out


def load_detector_weights(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, use_ema: bool = False
) -> LoadResult:
    """Load a checkpoint into a Mask R-CNN, Cascade Mask R-CNN or DINO of this package.

    Args:
        model: The detector (DINO is recognised by ``model.weights_layout == 'dino'``).
        path: Our ``model.safetensors`` / training checkpoint, an official mmdet detector checkpoint, or a
            classification / backbone checkpoint (then only the backbone is loaded).
        strict: Raise if any model tensor is missing or any file tensor does not fit (use False to fine-tune
            from a checkpoint with another number of classes: mis-shaped tensors are skipped and logged).
        use_ema: Take the EMA weights of a training checkpoint.

    Returns:
        The :class:`~.core.LoadResult` (``format``: ``ours``, ``mmdet``, ``dino`` or ``backbone``).

    Raises:
        CheckpointError: unreadable file, or (strict) a one-line list of what does not fit.
    """
    if getattr(model, "weights_layout", None) == "dino":
        return load_dino_weights(model, path, strict=strict, use_ema=use_ema)
    _, sd = detect_format(read_checkpoint(path), use_ema=use_ema)
    sd = _strip_wrappers(sd)
    if any(k.startswith(_OUR_HEADS) for k in sd):
        return load_fitting(model, _class_specific_regression(sd, model), "ours", path, strict, "detector")
    if any(k.startswith(_MMDET_HEADS) for k in sd):
        mapped = map_mmdet_state_dict(sd, model)
        return load_fitting(model, mapped.state_dict, "mmdet", path, strict, "detector", mapped.unmapped)
    return load_backbone_bodies({"backbone.body.": model.backbone.body}, path, use_ema, "detector")
