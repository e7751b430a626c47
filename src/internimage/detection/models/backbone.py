"""InternImage + FPN as a torchvision detection backbone.

The backbone is the one :class:`~internimage.models.internimage.InternImage` class, read through its
``forward_intermediates`` API (NCHW level outputs after the level norm, before the downsample, strides 4-32), which
is exactly what the official mmdet backbone returns (``detection/mmdet_custom/models/backbones/intern_image.py``).
The classification head is pruned, so the body's state dict is the official ``backbone.*`` layout minus the
``backbone.`` prefix.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ...models.factory import create_model
from ...models.internimage import InternImage

__all__ = ["InternImageFPN", "build_internimage_body"]


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
    from ...models.checkpoint import load_checkpoint

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


class InternImageFPN(nn.Module):
    """InternImage levels -> FPN with an extra max-pooled level (``'0'..'3'`` and ``'pool'``, strides 4-64).

    Exposes ``out_channels`` as torchvision's detection models require. Parameter names follow torchvision's
    ``BackboneWithFPN`` (``body.*``, ``fpn.inner_blocks.*``, ``fpn.layer_blocks.*``).

    Args:
        body: An InternImage (classifier pruned); see :func:`build_internimage_body`.
        out_channels: FPN width (256 in the official configs).
        indices: Levels fed to the FPN.
    """

    def __init__(self, body: InternImage, out_channels: int = 256, indices: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.body = body
        self.indices = list(indices)
        in_channels = [body.feature_info[i]["num_chs"] for i in self.indices]
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = [body.feature_info[i]["reduction"] for i in self.indices] + [
            2 * body.feature_info[self.indices[-1]]["reduction"]
        ]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Args: x: (N, 3, H, W) normalised images, H and W divisible by 32.

        Returns:
            ``{'0': (N, F, H/4, W/4), ..., '3': (N, F, H/32, W/32), 'pool': (N, F, H/64, W/64)}``.
        """
        maps = self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True, stop_early=True)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
