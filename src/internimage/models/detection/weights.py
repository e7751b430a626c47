"""Load any supported weights into a detector: ours, official mmdet detectors, or classification backbones."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checkpoint import CheckpointError, detect_format, load_checkpoint, read_checkpoint
from .mmdet_keys import map_mmdet_state_dict

__all__ = ["DetectorLoadResult", "load_detector_weights"]

logger = logging.getLogger(__name__)

_MMDET_HEADS = ("neck.", "rpn_head.", "roi_head.")
_OUR_HEADS = ("backbone.body.", "backbone.fpn.", "rpn.", "roi_heads.")


@dataclass
class DetectorLoadResult:
    """What :func:`load_detector_weights` loaded.

    Attributes:
        format: ``ours``, ``mmdet`` (full official detector) or ``backbone`` (classification / backbone only).
        missing: Model tensors the file did not provide.
        skipped: File tensors not loaded (unknown name or other shape, e.g. another number of classes).
    """

    format: str
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


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
) -> DetectorLoadResult:
    """Load a checkpoint into a detector from :mod:`internimage.models.detection`.

    Args:
        model: The detector.
        path: Our ``model.safetensors`` / training checkpoint, an official mmdet detector checkpoint, or a
            classification / backbone checkpoint (then only ``backbone.body`` is loaded).
        strict: Raise if any model tensor is missing or any file tensor does not fit (use False to fine-tune
            from a checkpoint with another number of classes: mis-shaped tensors are skipped and logged).
        use_ema: Take the EMA weights of a training checkpoint.

    Returns:
        The :class:`DetectorLoadResult`.

    Raises:
        CheckpointError: unreadable file, or (strict) a one-line list of what does not fit.
    """
    from .dino import InternImageDINO, load_dino_weights

    if isinstance(model, InternImageDINO):  # official key layout: no mapping needed
        return load_dino_weights(model, path, strict=strict, use_ema=use_ema)
    _, sd = detect_format(read_checkpoint(path), use_ema=use_ema)
    sd = _strip(sd)
    if any(k.startswith(_OUR_HEADS[1:]) for k in sd):
        kind = "ours"
        sd = _class_specific_regression(sd, model)
    elif any(k.startswith(_MMDET_HEADS) for k in sd):
        kind = "mmdet"
        sd = map_mmdet_state_dict(sd, model).state_dict
    else:
        # A classification or backbone-only checkpoint: the backbone loader handles every layout.
        body = model.backbone.body
        res = load_checkpoint(body, path, strict=False, use_ema=use_ema, ignore_head=True)
        if res.mismatched or len(res.missing) == len(body.state_dict()):
            raise CheckpointError(f"{os.fspath(path)} does not fit the detector's backbone: {res.summary()}")
        missing = [f"backbone.body.{k}" for k in res.missing]
        return DetectorLoadResult("backbone", missing=missing, skipped=list(res.unexpected))
    own = model.state_dict()
    fits = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    result = DetectorLoadResult(kind, [k for k in own if k not in fits], [k for k in sd if k not in fits])
    if strict and (result.missing or result.skipped):
        parts = []
        for label, keys in (("missing", result.missing), ("not fitting", result.skipped)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        raise CheckpointError(f"{os.fspath(path)} ({kind}) does not fit the detector: {'; '.join(parts)}")
    model.load_state_dict(fits, strict=False)
    if result.missing or result.skipped:
        logger.warning(
            "loaded %s (%s) partially: %d missing, %d skipped (e.g. %s)",
            os.fspath(path), kind, len(result.missing), len(result.skipped), (result.skipped or result.missing)[:3],
        )  # fmt: skip
    return result
