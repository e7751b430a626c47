"""``InternImageConfig``: the transformers configuration of OpenGVLab's Hub repositories, read without remote code.

Field names, defaults and meanings are those of the official ``configuration_internimage.py`` (model type
``'internimage'``), so an official ``config.json`` loads as is and ``save_pretrained`` writes the same fields.
:meth:`InternImageConfig.internimage_kwargs` is the one place that maps them to
:class:`~internimage.models.internimage.InternImage` arguments. Five fields are ours (the original hard-codes them):
``clip_embed_dim``, ``clip_out_dim``, ``clip_num_heads`` (the H/G head) and ``mlp_fc2_bias``, ``dcn_output_bias``
(FlashInternImage, ``core_op='DCNv4'``); their defaults are the original's values.

This module needs only ``transformers.configuration_utils``, so ``AutoConfig`` can learn the model type without
importing the modeling code (see :mod:`internimage.models.hf_hook`).
"""

from __future__ import annotations

import logging
from typing import Any

try:
    from transformers.configuration_utils import PreTrainedConfig
except ImportError as err:  # not installed, or a transformers 4.x (PretrainedConfig only)
    raise ImportError(f"internimage.models.hf needs transformers>=5.25: pip install 'internimage[hf]' ({err})") from err

__all__ = ["MODEL_TYPE", "InternImageConfig", "register_config"]

logger = logging.getLogger(__name__)

#: The ``model_type`` of the official Hub repositories.
MODEL_TYPE = "internimage"

#: ``core_op`` values: the original's ``'DCNv3'`` and ``'DCNv3_pytorch'`` (the same operator, two kernels) and our
#: ``'DCNv4'`` (FlashInternImage).
_CORE_OPS = {"DCNv3": "DCNv3", "DCNv3_pytorch": "DCNv3", "DCNv4": "DCNv4"}
_DEFAULT_NUM_CLASSES = 1000


class InternImageConfig(PreTrainedConfig):
    """Configuration of an InternImage (model type ``'internimage'``), field for field the official one.

    Attributes:
        core_op: ``'DCNv3'`` (``'DCNv3_pytorch'`` is read as the same operator) or ``'DCNv4'`` (FlashInternImage).
        depths: Blocks per level.
        groups: DCN groups per level; level i has ``channels * 2**i`` channels, which each must divide.
        channels: Width C of level 0.
        dw_kernel_size: Depthwise kernel of the offset branch (None: 3 for DCNv3, no depthwise conv for DCNv4).
        layer_scale: Initial layer-scale value (None: no layer scale). Its weights are ``layer_scale1/2`` on the Hub.
        offset_scale: DCN offset scale.
        mlp_ratio: MLP hidden width ratio.
        post_norm: Post-norm residuals.
        res_post_norm: Residual post norm (H).
        level2_post_norm: Whether ``level2_post_norm_block_ids`` is used (H/G).
        level2_post_norm_block_ids: Blocks of level 2 followed by an extra LayerNorm.
        center_feature_scale: DCN centre-feature gate (H/G).
        use_clip_projector: H/G head (level 3/4 fusion and attention pooling) instead of the conv head.
        remove_center: Drop the DCN centre sampling point.
        num_classes: Classifier outputs. None: ``len(id2label)`` if given, else 1000. A ``num_labels`` argument
            (``from_pretrained(..., num_labels=10)``) sets it; ``id2label``/``label2id`` follow it.
        drop_rate: Dropout rate.
        drop_path_rate: Maximum stochastic depth.
        drop_path_type: ``'linear'`` or ``'uniform'``.
        act_layer: Activation; ``'GELU'`` only (as every released model).
        norm_layer: Normalisation; ``'LN'`` only (as every released model).
        cls_scale: Width ratio of the conv head.
        with_cp: Gradient checkpointing of every block.
        clip_embed_dim: Ours: width of the H/G projector input (the original's 1024).
        clip_out_dim: Ours: width of the H/G projector output (768).
        clip_num_heads: Ours: heads of the H/G attention pooling (16).
        mlp_fc2_bias: Ours: bias of every ``mlp.fc2`` (False for FlashInternImage-T/S/B).
        dcn_output_bias: Ours: bias of every DCNv4 ``output_proj`` (False for FlashInternImage-T/S/B).
    """

    model_type = MODEL_TYPE

    core_op: str = "DCNv3"
    depths: list[int] | tuple[int, ...] = (4, 4, 18, 4)
    groups: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    channels: int = 64
    dw_kernel_size: int | None = None
    layer_scale: float | None = None
    offset_scale: float = 1.0
    mlp_ratio: float = 4.0
    post_norm: bool = False
    res_post_norm: bool = False
    level2_post_norm: bool = False
    level2_post_norm_block_ids: list[int] | tuple[int, ...] | None = None
    center_feature_scale: bool = False
    use_clip_projector: bool = False
    remove_center: bool = False
    num_classes: int | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    drop_path_type: str = "linear"
    act_layer: str = "GELU"
    norm_layer: str = "LN"
    cls_scale: float = 1.5
    with_cp: bool = False
    clip_embed_dim: int = 1024
    clip_out_dim: int = 768
    clip_num_heads: int = 16
    mlp_fc2_bias: bool = True
    dcn_output_bias: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        num_labels = kwargs.pop("num_labels", None)
        if num_labels is not None:
            self.num_classes = int(num_labels)
            if self.id2label is not None and len(self.id2label) != self.num_classes:
                self.id2label = self.label2id = None
        elif self.id2label is not None:
            if self.num_classes is None:
                self.num_classes = len(self.id2label)
            elif len(self.id2label) != self.num_classes:
                raise ValueError(
                    f"InternImageConfig: num_classes={self.num_classes} but id2label has {len(self.id2label)} labels"
                )
        elif self.num_classes is None:
            self.num_classes = _DEFAULT_NUM_CLASSES
        if self.id2label is None:
            kwargs["num_labels"] = self.num_classes
        elif self.label2id is None:
            self.label2id = {label: int(i) for i, label in self.id2label.items()}
        super().__post_init__(**kwargs)
        self.internimage_kwargs()  # refuse a config that describes no valid model, in one line

    def internimage_kwargs(self) -> dict[str, Any]:
        """The :class:`~internimage.models.internimage.InternImage` arguments this configuration describes.

        Returns:
            Keyword arguments (``num_classes`` included).

        Raises:
            ValueError: fields that describe no valid model (one line naming the field).
        """
        core_op = _CORE_OPS.get(self.core_op)
        if core_op is None:
            raise ValueError(f"InternImageConfig: core_op must be one of {sorted(_CORE_OPS)}, got {self.core_op!r}")
        if self.act_layer != "GELU":
            raise ValueError(f"InternImageConfig: act_layer {self.act_layer!r} is not supported (GELU only)")
        if self.norm_layer != "LN":
            raise ValueError(f"InternImageConfig: norm_layer {self.norm_layer!r} is not supported (LN only)")
        depths, groups = _ints("depths", self.depths), _ints("groups", self.groups)
        if len(depths) != len(groups) or not depths:
            raise ValueError(
                f"InternImageConfig: depths {list(depths)} and groups {list(groups)} must have one entry per level"
            )
        if not isinstance(self.channels, int) or self.channels <= 0:
            raise ValueError(f"InternImageConfig: channels must be a positive integer, got {self.channels!r}")
        for i, g in enumerate(groups):
            width = self.channels * 2**i
            if g <= 0 or width % g:
                raise ValueError(f"InternImageConfig: level {i} has {width} channels, not divisible by groups={g}")
        if self.drop_path_type not in ("linear", "uniform"):
            raise ValueError(
                f"InternImageConfig: drop_path_type must be 'linear' or 'uniform', got {self.drop_path_type!r}"
            )
        if self.num_classes is None or self.num_classes < 0:
            raise ValueError(f"InternImageConfig: num_classes must be >= 0, got {self.num_classes!r}")
        block_ids = None
        if self.level2_post_norm and self.level2_post_norm_block_ids:
            block_ids = _ints("level2_post_norm_block_ids", self.level2_post_norm_block_ids)
            level2 = depths[2] if len(depths) > 2 else 0
            if any(not 0 <= b < level2 for b in block_ids):
                raise ValueError(
                    f"InternImageConfig: level2_post_norm_block_ids {list(block_ids)} must lie in [0, {level2}) "
                    "(the blocks of level 2)"
                )
        if self.use_clip_projector and self.clip_embed_dim % self.clip_num_heads:
            raise ValueError(
                f"InternImageConfig: clip_embed_dim {self.clip_embed_dim} is not divisible by "
                f"clip_num_heads {self.clip_num_heads}"
            )
        return dict(
            num_classes=int(self.num_classes),
            channels=self.channels,
            depths=depths,
            groups=groups,
            mlp_ratio=float(self.mlp_ratio),
            offset_scale=float(self.offset_scale),
            layer_scale=None if self.layer_scale is None else float(self.layer_scale),
            post_norm=bool(self.post_norm),
            dw_kernel_size=self.dw_kernel_size,
            res_post_norm=bool(self.res_post_norm),
            level2_post_norm_block_ids=block_ids,
            center_feature_scale=bool(self.center_feature_scale),
            use_clip_projector=bool(self.use_clip_projector),
            cls_scale=float(self.cls_scale),
            remove_center=bool(self.remove_center),
            drop_rate=float(self.drop_rate),
            drop_path_rate=float(self.drop_path_rate),
            drop_path_type=self.drop_path_type,
            with_cp=bool(self.with_cp),
            clip_embed_dim=self.clip_embed_dim,
            clip_out_dim=self.clip_out_dim,
            clip_num_heads=self.clip_num_heads,
            core_op=core_op,
            mlp_fc2_bias=bool(self.mlp_fc2_bias),
            dcn_output_bias=bool(self.dcn_output_bias),
        )


def _ints(name: str, values: Any) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"InternImageConfig: {name} must be a list of integers, got {values!r}")
    return tuple(values)


def register_config() -> None:
    """Make ``AutoConfig`` read ``model_type: 'internimage'`` as :class:`InternImageConfig` (idempotent).

    Raises:
        ValueError: another class already holds the model type (e.g. a future transformers release).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, AutoConfig

    if MODEL_TYPE in CONFIG_MAPPING and CONFIG_MAPPING[MODEL_TYPE] is InternImageConfig:
        return
    AutoConfig.register(MODEL_TYPE, InternImageConfig)
    logger.debug("registered %s with AutoConfig", MODEL_TYPE)
