"""``create_model`` / ``list_models`` / ``load_weights``: the package's model entry points."""

from __future__ import annotations

import fnmatch
import logging
import os
from typing import Any

from torch import nn

from .checkpoint import LoadResult, load_checkpoint, load_detector_weights, load_segmentation_checkpoint
from .internimage import MODEL_NAMES, InternImage, _create

__all__ = ["create_model", "list_models", "load_weights"]

logger = logging.getLogger(__name__)


def list_models(pattern: str = "*", include_test: bool = False) -> list[str]:
    """Registered InternImage names matching a glob ``pattern`` (tiny ``*_test_*`` variants on request)."""
    names = [n for n in MODEL_NAMES if fnmatch.fnmatch(n, pattern)]
    return [n for n in names if include_test or "_test" not in n]


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    use_ema: bool = False,
    **overrides: Any,
) -> InternImage:
    """Build a registered InternImage, optionally with weights.

    Args:
        name: A name from :func:`list_models` (e.g. ``'internimage_t_1k_224'``).
        pretrained: Load the official weights through timm's hub machinery (needs network or a hub cache).
        checkpoint_path: A local checkpoint in any supported format (official, HF, mmdet/mmseg, safetensors).
        use_ema: With ``checkpoint_path``, load the EMA weights of a training checkpoint.
        **overrides: Any :class:`~internimage.models.internimage.InternImage` argument, e.g. ``num_classes``,
            ``depths``, ``drop_path_rate``, ``layer_scale``, ``with_cp``.

    Returns:
        The model (train mode, like ``torch.nn`` modules).

    Raises:
        ValueError: unknown name or bad override. CheckpointError: a checkpoint that does not fit.
    """
    if name not in MODEL_NAMES:
        close = [n for n in MODEL_NAMES if n.split("_")[1] == name.split("_")[1]] if "_" in name else []
        hint = f"; did you mean one of {close}" if close else f"; see list_models() ({len(MODEL_NAMES)} names)"
        raise ValueError(f"unknown InternImage model {name!r}{hint}")
    if pretrained and checkpoint_path is not None:
        raise ValueError("pass either pretrained=True or checkpoint_path, not both")
    try:
        model = _create(name, pretrained=pretrained, **overrides)
    except TypeError as err:
        raise ValueError(f"bad argument for {name}: {err}") from err
    if checkpoint_path is not None:
        new_head = "num_classes" in overrides
        result = load_checkpoint(model, checkpoint_path, strict=True, use_ema=use_ema, ignore_head=new_head)
        logger.info("loaded %s (%s format) into %s", checkpoint_path, result.format, name)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True, use_ema: bool = False) -> LoadResult:
    """Load a checkpoint of any supported format into any of our models: the one entry point, by model kind.

    * an :class:`~internimage.models.internimage.InternImage` (classifier or backbone): official, HF, timm,
      training-run or safetensors files (:func:`~internimage.models.checkpoint.load_checkpoint`);
    * a segmentor (``weights_layout = 'segmentor'``: UperNet, Mask2Former): mmseg, ours, or a classification
      checkpoint for the backbone only (:func:`~internimage.models.checkpoint.load_segmentation_checkpoint`);
    * a detector (``weights_layout`` ``'rcnn'`` or ``'dino'``: Mask R-CNN, Cascade, DINO): mmdet, ours, or a
      classification checkpoint for the backbone (:func:`~internimage.models.checkpoint.load_detector_weights`).

    Args:
        model: The model to fill.
        path: Checkpoint file.
        strict: Every tensor of the model must be found (``False``: start from what fits, e.g. a backbone).
        use_ema: Take the EMA weights of a training checkpoint (classifiers and detectors).

    Returns:
        The :class:`~internimage.models.checkpoint.LoadResult` (``format``, ``missing``, ...).

    Raises:
        ValueError: a model of another kind, or ``use_ema`` for a segmentor.
    """
    layout = getattr(model, "weights_layout", None)
    if isinstance(model, InternImage):
        return load_checkpoint(model, path, strict=strict, use_ema=use_ema)
    if layout == "segmentor":
        if use_ema:
            raise ValueError("use_ema is not supported for segmentors (export the EMA weights of the run instead)")
        return load_segmentation_checkpoint(model, path, strict=strict)
    if layout in ("rcnn", "dino"):
        return load_detector_weights(model, path, strict=strict, use_ema=use_ema)
    raise ValueError(f"load_weights: {type(model).__name__} is not an InternImage, a segmentor or a detector")
