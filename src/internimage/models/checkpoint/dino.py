"""DINO / CB-DINO weights: official mmdet DINO checkpoints, ours, or a classification backbone.

Our DINO parameter names are the official ones, so detector files (official ``state_dict`` or ours) load as they
are. A file without ``bbox_head.*`` tensors is a backbone checkpoint: it goes into the InternImage (both
InternImages of CB-InternImage, the lead one without its stem), non-strictly.
"""

from __future__ import annotations

import os

from torch import nn

from .core import LoadResult, _strip_wrappers, detect_format, load_backbone_bodies, load_fitting, read_checkpoint

__all__ = ["load_dino_weights"]


def load_dino_weights(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, use_ema: bool = False
) -> LoadResult:
    """Load a checkpoint into a DINO (``model.backbone``: an InternImage, or a CB-InternImage with ``cb_modules``).

    Args:
        model: A DINO of :mod:`internimage.detection.models.dino` (``model.composite`` says CB or not).
        path: Checkpoint file.
        strict: Raise if a model tensor is missing or a file tensor does not fit (detector files only).
        use_ema: Take the EMA weights of a training checkpoint.

    Returns:
        The :class:`~.core.LoadResult` (``format``: ``dino`` or ``backbone``).
    """
    _, sd = detect_format(read_checkpoint(path), use_ema=use_ema)
    sd = _strip_wrappers(sd)
    if any(k.startswith("bbox_head.") for k in sd):
        return load_fitting(model, sd, "dino", path, strict, "DINO detector")
    if model.composite:
        bodies = {f"backbone.cb_modules.{i}.": body for i, body in enumerate(model.backbone.cb_modules)}
    else:
        bodies = {"backbone.": model.backbone}
    return load_backbone_bodies(bodies, path, use_ema, "DINO")
