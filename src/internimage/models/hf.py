"""transformers Auto classes for InternImage: OpenGVLab's Hub repositories without remote code (extra ``[hf]``).

::

    import internimage  # registers lazily: the Auto classes know 'internimage' once transformers is used
    from internimage.models.hf import image_processor_for
    from transformers import AutoModelForImageClassification, pipeline

    model = AutoModelForImageClassification.from_pretrained("path/to/internimage_t_1k_224")  # no trust_remote_code
    processor = image_processor_for("internimage_t_1k_224")
    classify = pipeline("image-classification", model=model, image_processor=processor)

The official Hub layout (``classification/huggingface/`` of the original): ``config.json`` with model type
``'internimage'`` and the fields of :class:`~internimage.models.hf_config.InternImageConfig`, weights
``pytorch_model.bin`` / ``model.safetensors`` holding the official classification state dict with every key
prefixed ``model.`` and ``gamma1/2`` named ``layer_scale1/2``. Both classes here hold our
:class:`~internimage.models.internimage.InternImage` as ``model``; the layer-scale names are mapped on load (through
``from_pretrained``'s ``key_mapping``) and back on save, so ``save_pretrained`` writes the official names again.
Outputs follow the original's: the base model returns the four level maps, the classifier adds ``logits`` (and
``loss`` with ``labels``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

try:
    from transformers import PreTrainedModel
    from transformers import initialization as init
    from transformers.modeling_outputs import (
        BaseModelOutputWithPoolingAndNoAttention,
        ImageClassifierOutputWithNoAttention,
    )
except ImportError as err:  # not installed, or older than 5.x
    raise ImportError(f"internimage.models.hf needs transformers>=5.25: pip install 'internimage[hf]' ({err})") from err

from ..ops.dcnv3 import DCNv3
from ..ops.dcnv4 import DCNv4
from .checkpoint import CheckpointError
from .hf_config import MODEL_TYPE, InternImageConfig, register_config
from .internimage import ARCHS, MODEL_SPECS, CrossAttention, InternImage, InternImageBlock

__all__ = [
    "InternImageConfig",
    "InternImageClassifierOutput",
    "InternImageForImageClassification",
    "InternImageModel",
    "InternImagePreTrainedModel",
    "config_for",
    "image_processor_for",
    "register",
]

logger = logging.getLogger(__name__)

#: Hub weight name -> ours (after the common ``model.`` prefix): the original's HF export renamed the layer scales.
HUB_KEY_MAPPING = {"layer_scale1": "gamma1", "layer_scale2": "gamma2"}
_OURS_TO_HUB = {f".{ours}": f".{hub}" for hub, ours in HUB_KEY_MAPPING.items()}


_BACKBONE_PREFIXES = ("model.patch_embed.", "model.levels.")


def _preview(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", +{len(keys) - n} more" if len(keys) > n else "")


def _hub_name(key: str) -> str:
    for ours, hub in _OURS_TO_HUB.items():
        if key.endswith(ours):
            return key[: -len(ours)] + hub
    return key


def _reconcile_labels(config: InternImageConfig) -> None:
    """Make ``num_classes`` and ``id2label`` agree after either was set on a read config (``from_pretrained``
    passes ``num_classes=`` / ``id2label=`` that way): named labels decide, generic ``LABEL_i`` ones follow."""
    if config.id2label is None or len(config.id2label) == config.num_classes:
        return
    if all(label == f"LABEL_{i}" for i, label in config.id2label.items()):
        config.num_labels = config.num_classes
    else:
        logger.info("num_classes %d -> %d from id2label", config.num_classes, len(config.id2label))
        config.num_classes = len(config.id2label)


@dataclass
class InternImageClassifierOutput(ImageClassifierOutputWithNoAttention):
    """Output of :class:`InternImageForImageClassification`: the original's fields.

    Attributes:
        loss: Classification loss, with ``labels``.
        logits: (N, num_classes).
        hidden_states: The four level maps, NCHW: (N, C * 2**i, H / 2**(i+2), W / 2**(i+2)).
        last_hidden_state: The last level map, (N, 8C, H/32, W/32).
        pooler_output: The pooled pre-logits features: (N, 8C * cls_scale), or (N, clip_out_dim) for H/G.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


class InternImagePreTrainedModel(PreTrainedModel):
    """Shared loading, saving and weight init of the InternImage transformers classes."""

    config_class = InternImageConfig
    config: InternImageConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["InternImageBlock"]
    supports_gradient_checkpointing = True

    def _build(self, config: InternImageConfig, num_classes: int) -> InternImage:
        if num_classes:
            _reconcile_labels(config)
        kwargs = config.internimage_kwargs()
        kwargs["num_classes"] = config.num_classes if num_classes else 0
        try:
            return InternImage(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"InternImageConfig describes no valid model: {err}") from err

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *args: Any, **kwargs: Any):
        """``PreTrainedModel.from_pretrained`` that reads the Hub's ``layer_scale1/2`` names and refuses misfits.

        Everything else is transformers' own loader (``.bin`` files are read with ``weights_only=True``); a
        ``key_mapping`` given is applied as well. Weights missing for the classifier or its pre-logits head are
        initialised (a new head: transformers' load report lists them); weights missing for the backbone, or
        weights the model does not have, mean the checkpoint is not the model ``config.json`` describes.

        Raises:
            CheckpointError: missing backbone weights, unknown weights, or (without ``ignore_mismatched_sizes``)
                weights of other shapes, in one line.
        """
        kwargs["key_mapping"] = {**HUB_KEY_MAPPING, **(kwargs.get("key_mapping") or {})}
        want_info = kwargs.pop("output_loading_info", False)
        where = os.fspath(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else "weights"
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err):
                raise
            raise CheckpointError(
                f"{where}: weights of other shapes than its config.json describes (see the load report above); "
                "ignore_mismatched_sizes=True re-initialises them"
            ) from None
        missing = sorted(_hub_name(k) for k in info["missing_keys"] if k.startswith(_BACKBONE_PREFIXES))
        unexpected = sorted(_hub_name(k) for k in info["unexpected_keys"])
        if missing or unexpected:
            parts = [
                f"{len(keys)} {what} ({_preview(keys)})"
                for what, keys in (("backbone weights missing", missing), ("unknown weights", unexpected))
                if keys
            ]
            raise CheckpointError(f"{where} does not fit the model its config.json describes: {'; '.join(parts)}")
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.save_pretrained`` writing the official Hub weight names (``layer_scale1/2``)."""
        state_dict = kwargs.pop("state_dict", None)
        if state_dict is None:
            state_dict = self.state_dict()
        kwargs["state_dict"] = {_hub_name(k): v for k, v in state_dict.items()}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute every block in backward (the model's own checkpointing; the kwargs are not used)."""
        self.model.set_grad_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self.model.set_grad_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self.model.grad_checkpointing)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The init of :class:`InternImage` (used by transformers for tensors a checkpoint does not provide)."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Conv2d):
            module.reset_parameters()  # torch's default, as InternImage leaves it (transformers guards loaded tensors)
        elif isinstance(module, (DCNv3, DCNv4)):
            module.reset_parameters()  # after its Linear children, as in InternImage.__init__
        elif isinstance(module, InternImageBlock) and module.layer_scale:
            init.constant_(module.gamma1, self.config.layer_scale)
            init.constant_(module.gamma2, self.config.layer_scale)
        elif isinstance(module, CrossAttention):
            for bias in (module.q_bias, module.k_bias, module.v_bias):
                init.zeros_(bias)


class InternImageModel(InternImagePreTrainedModel):
    """InternImage without the classifier (``AutoModel``), as the original's ``InternImageModel``.

    It keeps the pre-logits head (conv head, or the H/G projector), so ``pooler_output`` is the pooled feature the
    classifier reads; the original's base model has no head and returns ``pooler_output=None``.
    """

    # Hub checkpoints are classifier checkpoints: their final Linear is not part of the base model.
    _keys_to_ignore_on_load_unexpected = [r"^model\.head\."]

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__(config)
        self.model = self._build(config, num_classes=0)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple[torch.Tensor, ...]:
        """Features of a batch.

        Args:
            pixel_values: (N, 3, H, W) normalised images.
            output_hidden_states: Return the four level maps (default: yes, as the original always does).
            return_dict: Return a ``ModelOutput`` (default ``config.return_dict``) instead of a tuple.

        Returns:
            ``last_hidden_state`` (N, 8C, H/32, W/32), the last level map; ``pooler_output`` (N, D), the pooled
            pre-logits features; ``hidden_states``, the four NCHW level maps.
        """
        features, maps = self.model.forward_intermediates(pixel_values)  # one pass: features and the NCHW maps
        out = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=maps[-1],
            pooler_output=self.model.forward_head(features, pre_logits=True),
            hidden_states=tuple(maps) if output_hidden_states is not False else None,
        )
        return out if (return_dict if return_dict is not None else self.config.return_dict) else out.to_tuple()


class InternImageForImageClassification(InternImagePreTrainedModel):
    """InternImage classifier (``AutoModelForImageClassification``), as the original's
    ``InternImageModelForImageClassification``: logits equal :func:`internimage.create_model`'s with the same weights.
    """

    def __init__(self, config: InternImageConfig) -> None:
        super().__init__(config)
        self.model = self._build(config, num_classes=config.num_classes)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> InternImageClassifierOutput | tuple[torch.Tensor, ...]:
        """Classify a batch.

        Args:
            pixel_values: (N, 3, H, W) normalised images.
            labels: (N,) class indices (or targets of ``config.problem_type``); adds ``loss``.
            output_hidden_states: Return the four level maps (default: yes, as the original always does).
            return_dict: Return a ``ModelOutput`` (default ``config.return_dict``) instead of a tuple.

        Returns:
            :class:`InternImageClassifierOutput`: ``logits`` (N, num_classes), ``loss``, the level maps,
            ``last_hidden_state`` and ``pooler_output``.
        """
        features, maps = self.model.forward_intermediates(pixel_values)  # one pass: features and the NCHW maps
        pooled = self.model.forward_head(features, pre_logits=True)
        logits = self.model.head(pooled)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        out = InternImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=tuple(maps) if output_hidden_states is not False else None,
            last_hidden_state=maps[-1],
            pooler_output=pooled,
        )
        return out if (return_dict if return_dict is not None else self.config.return_dict) else out.to_tuple()


def register() -> None:
    """Make ``AutoConfig``, ``AutoModel`` and ``AutoModelForImageClassification`` know ``'internimage'``.

    Idempotent. ``import internimage`` arranges this call lazily (:mod:`internimage.models.hf_hook`); call it
    yourself only to see why a registration failed.

    Raises:
        ValueError: another class already holds the model type.
    """
    from transformers.models.auto.modeling_auto import AutoModel, AutoModelForImageClassification

    register_config()
    # Registering the same pair again replaces it by itself: idempotent.
    AutoModel.register(InternImageConfig, InternImageModel)
    AutoModelForImageClassification.register(InternImageConfig, InternImageForImageClassification)
    logger.debug("registered %s with AutoModel and AutoModelForImageClassification", MODEL_TYPE)


# --------------------------------------------------------------------------------------------- from our registry
_TRAINING_ONLY = ("drop_rate", "drop_path_rate", "drop_path_type", "with_cp")


def config_for(name: str, **overrides: Any) -> InternImageConfig:
    """The :class:`InternImageConfig` of a registered model name (what the Hub ``config.json`` of it holds).

    Args:
        name: A name of :func:`internimage.list_models` (test variants included).
        **overrides: Config fields to change (e.g. ``num_classes``, ``id2label``).

    Raises:
        ValueError: unknown name.
    """
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown InternImage model {name!r}; see internimage.list_models()")
    arch_name, cfg = MODEL_SPECS[name]
    arch = ARCHS[arch_name].kwargs()
    block_ids = arch.pop("level2_post_norm_block_ids")
    fields: dict[str, Any] = {
        **arch,
        "depths": list(arch["depths"]),
        "groups": list(arch["groups"]),
        "level2_post_norm": bool(block_ids),
        "level2_post_norm_block_ids": list(block_ids) if block_ids else None,
        "num_classes": cfg["num_classes"],
    }
    fields.update(overrides)
    return InternImageConfig(**fields)


def _structure(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in _TRAINING_ONLY}


def _pretrained_cfg(name_or_config: str | InternImageConfig) -> dict[str, Any]:
    if isinstance(name_or_config, str):
        if name_or_config not in MODEL_SPECS:
            raise ValueError(f"unknown InternImage model {name_or_config!r}; see internimage.list_models()")
        return MODEL_SPECS[name_or_config][1]
    if not isinstance(name_or_config, InternImageConfig):
        raise TypeError(f"image_processor_for takes a model name or an InternImageConfig, got {type(name_or_config)}")
    want = _structure(name_or_config.internimage_kwargs())
    cfgs = [
        cfg
        for name in MODEL_SPECS
        if _structure(config_for(name).internimage_kwargs()) == want
        for cfg in [MODEL_SPECS[name][1]]
    ]
    sizes = {cfg["input_size"] for cfg in cfgs}
    if len(sizes) != 1:
        found = "no registered model has this architecture" if not cfgs else f"its models use {sorted(sizes)}"
        raise ValueError(f"image_processor_for: cannot tell the input size ({found}); pass image_size")
    return cfgs[0]


def image_processor_for(name_or_config: str | InternImageConfig, image_size: int | None = None) -> Any:
    """A transformers image processor doing timm's evaluation transform of a model.

    It is ``CLIPImageProcessorPil``, the class the official Hub repositories name (``preprocessor_config.json``),
    set from the timm pretrained cfg: resize the shorter side to ``floor(size / crop_pct)`` with PIL bicubic
    (``interpolation``), centre-crop ``size`` x ``size``, scale to [0, 1], normalise with ``mean``/``std``. On uint8
    RGB images this matches timm's ``create_transform`` to float rounding, except that for a crop margin of 3, 7,
    11, ... pixels the crop starts one pixel earlier (transformers floors half the margin, torchvision rounds it to
    even). The official ``preprocessor_config.json`` read by ``AutoImageProcessor`` gives the same steps on
    transformers' torchvision backend, whose bicubic resize differs from PIL's by up to a few 1e-2.

    Args:
        name_or_config: A registered model name, or an :class:`InternImageConfig` whose architecture is that of
            registered models of one input size (e.g. any Hub ``config.json`` except H-1k's, at 384 and 640).
        image_size: Crop size to use instead of the registered one (ImageNet mean/std and bicubic for a config
            that matches no registered model).

    Returns:
        The processor; ``pipeline("image-classification", model=..., image_processor=...)`` takes it.

    Raises:
        ValueError: unknown name, or a config whose input size is not known and no ``image_size``.
    """
    from transformers import CLIPImageProcessorPil
    from transformers.image_utils import PILImageResampling

    try:
        cfg = dict(_pretrained_cfg(name_or_config))
    except ValueError:
        if image_size is None or isinstance(name_or_config, str):
            raise
        cfg = dict(MODEL_SPECS["internimage_t_1k_224"][1])  # the defaults shared by every registered model
    size = image_size if image_size is not None else int(cfg["input_size"][-1])
    resample = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}[cfg["interpolation"]]
    return CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": math.floor(size / cfg["crop_pct"])},
        resample=resample,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
        do_convert_rgb=True,
    )
