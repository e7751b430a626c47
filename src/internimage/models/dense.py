"""The backbone every dense task (detection, segmentation, occupancy) builds on: InternImage without classifier."""

from __future__ import annotations

from typing import Any

from .checkpoint import load_checkpoint
from .factory import create_model
from .internimage import InternImage

__all__ = ["build_internimage_body"]


def build_internimage_body(
    name: str, checkpoint_path: str | None = None, use_ema: bool = False, **overrides: Any
) -> InternImage:
    """An InternImage without classifier, for dense tasks.

    Args:
        name: A registered model name (e.g. ``'internimage_t_1k_224'``).
        checkpoint_path: Backbone weights: a classification checkpoint (its head is ignored) or an mmdet/mmseg
            checkpoint (its ``backbone.*`` part; neck and heads are set aside). Keys the checkpoint lacks, such as
            the ``gamma1/2`` that ``layer_scale=1.0`` adds to T, keep their initial values.
        use_ema: Take the EMA weights of a training checkpoint.
        **overrides: Any InternImage argument (``layer_scale``, ``drop_path_rate``, ``with_cp``, ...).

    Returns:
        The body, with ``conv_head``/``head`` (or the H/G projector) removed.
    """
    overrides.setdefault("num_classes", 0)
    body = create_model(name, **overrides)
    body.prune_intermediate_layers(len(body.levels), prune_head=True)
    if checkpoint_path is not None:
        # Not strict: classification checkpoints carry a head, detection configs add layer-scale gammas (§1.4).
        result = load_checkpoint(body, checkpoint_path, strict=False, ignore_head=True)
        mismatched = [k for k, _, _ in result.mismatched]
        if mismatched:
            raise ValueError(f"backbone checkpoint {checkpoint_path} does not fit {name}: {result.summary()}")
        if len(result.missing) == len(body.state_dict()):
            raise ValueError(f"backbone checkpoint {checkpoint_path} holds no InternImage backbone weights")
    return body
