"""Layer ids of the official detection layer-decay rule, which every detector answers through ``layer_id_fn``.

The rule is the original's ``detection/mmcv_custom/custom_layer_decay_optimizer_constructor.py`` on the official
parameter names (ours, with the InternImage at ``backbone.``, or Mask R-CNN's ``backbone.body.``): the backbone's
ids are :func:`~internimage.models.internimage.dense_layer_id`'s, DINO's ``level_embeds`` get 0, everything else
``num_layers + 1``. A composite backbone (CB-InternImage: ``backbone.cb_modules.i.levels...``) matches none of
the original's ``backbone.patch_embed`` / ``backbone.levels`` names, so the original trains it without layer decay.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ...models.internimage import dense_layer_id

__all__ = ["OFFSET_LR_KEYS", "detection_layer_id_fn"]

#: Parameters whose lr the original's ``offset_lr_scale`` multiplies.
OFFSET_LR_KEYS = ("sampling_offsets", "reference_points")


def detection_layer_id_fn(model: nn.Module) -> tuple[Callable[[str], int], int]:
    """``(parameter name -> layer id, number of ids)`` of ``model`` under the official detection rule.

    Raises:
        ValueError: the model holds no InternImage (a module with ``depths`` and ``levels``).
    """
    backbones = [(name, m) for name, m in model.named_modules() if hasattr(m, "depths") and hasattr(m, "levels")]
    if not backbones:
        raise ValueError("layer decay needs an InternImage backbone (a module with `depths` and `levels`)")
    prefix = backbones[0][0] + "." if backbones[0][0] else ""
    depths = list(backbones[0][1].depths)
    num_layers = sum(depths)
    composite = len(backbones) > 1

    def layer_id(name: str) -> int:
        if "level_embeds" in name:  # the original counts DINO's level embeddings with the stem
            return 0
        if composite or not name.startswith(prefix):
            return num_layers + 1
        return dense_layer_id(name[len(prefix) :], depths)

    return layer_id, num_layers + 2
