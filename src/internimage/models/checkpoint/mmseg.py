"""Loading weights into a :class:`~internimage.segmentation.models.Segmentor`.

Accepted sources (read with ``weights_only=True`` or safetensors, through :mod:`internimage.models.checkpoint`):

* official mmseg UperNet checkpoints ``{'state_dict': {backbone.*, decode_head.*, auxiliary_head.*}}``: the head
  modules carry mmseg's names (``psp_modules.i.1.conv``, ``bottleneck``, ``lateral_convs``, ``fpn_convs``,
  ``fpn_bottleneck``, ``conv_seg``, ``convs.0``), so the mapping is the identity on heads; SyncBN buffers land in
  BatchNorm;
* official mmseg Mask2Former checkpoints (``decode_head.pixel_decoder.*``, ``decode_head.transformer_decoder.*``,
  query/class/mask embeddings): :class:`~internimage.segmentation.models.mask2former.Mask2FormerHead` uses the
  mmcv container names, so this is the identity too;
* our own segmentor files (same layout, safetensors);
* classification checkpoints (official, HF, plain): backbone only, the classifier is dropped and the heads keep
  their initialisation. Missing ``gamma1/2`` (T's classification weights under the seg configs' ``layer_scale=1.0``)
  stay at their initial 1.0, which is what the official ``init_weights(strict=False)`` does too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .core import LoadResult, detect_format, load_fitting, normalize_state_dict, read_checkpoint

__all__ = ["load_segmentation_checkpoint", "map_mmseg_state_dict"]

logger = logging.getLogger(__name__)

_HEAD_PREFIXES = ("decode_head.", "auxiliary_head.")
# Classifier parts of a classification checkpoint: never part of a segmentation backbone.
_CLS_PREFIXES = ("head.", "conv_head.", "dcnv3_head_x4.", "dcnv3_head_x3.", "clip_projector.", "fc_norm.")
_CLASSIFIERS = ("decode_head.conv_seg.", "auxiliary_head.conv_seg.")


def map_mmseg_state_dict(sd: Mapping[str, torch.Tensor], fmt: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a segmentation (mmseg / ours) or classification state dict to the :class:`Segmentor` layout.

    Args:
        sd: The state dict as found in the file.
        fmt: Its format from :func:`~internimage.models.checkpoint.detect_format`, detected if None.

    Returns:
        ``(state_dict, kind)``: keys ``backbone.*``/``decode_head.*``/``auxiliary_head.*``; ``kind`` is
        ``'segmentor'`` when the source had heads, ``'backbone'`` for a classification checkpoint. Keys that
        belong to neither (e.g. a detector's neck) keep their names and show up as unexpected.
    """
    backbone, rest = normalize_state_dict(sd, fmt)
    backbone = {k: v for k, v in backbone.items() if not k.startswith(_CLS_PREFIXES)}
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    kind = "segmentor" if any(k.startswith(_HEAD_PREFIXES) for k in rest) else "backbone"
    out.update(rest)
    return out, kind


def load_segmentation_checkpoint(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, new_classes: bool = False
) -> LoadResult:
    """Load a segmentation or classification checkpoint into a segmentor.

    Args:
        model: The segmentor.
        path: Checkpoint file (``.pth``/``.pt``/``.safetensors``).
        strict: For segmentation checkpoints, raise on any missing/unexpected/mis-shaped key. Classification
            checkpoints are always loaded into the backbone only (heads are expected to be missing).
        new_classes: Skip the two ``conv_seg`` classifiers (fine-tuning to another label set).

    Returns:
        The :class:`~internimage.models.checkpoint.LoadResult` (``format`` is the source format).

    Raises:
        CheckpointError: unreadable file, or keys that do not fit (one line naming them).
    """
    fmt, raw = detect_format(read_checkpoint(path))
    sd, kind = map_mmseg_state_dict(raw, fmt)
    if new_classes:
        sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIERS)}
    gammas = [
        k for k in model.state_dict() if kind == "backbone" and k.endswith((".gamma1", ".gamma2")) and k not in sd
    ]
    if gammas:
        # Layer-scale gammas absent from a classification checkpoint keep their init, like the original.
        logger.info("%d layer-scale parameters not in %s keep their initial value", len(gammas), Path(path).name)

    def needed(key: str) -> bool:
        if new_classes and key.startswith(_CLASSIFIERS):
            return False
        return kind != "backbone" or (key.startswith("backbone.") and key not in gammas)

    result = load_fitting(model, sd, fmt, path, strict, "segmentor", needed=needed)
    logger.info("loaded %s (%s, %s) into the segmentor", Path(path).name, fmt, kind)
    return result
