"""Optimizer parameter groups (layer-wise lr decay, no-decay rules), optimizers and lr schedules.

A *layer-decay rule* maps ``(model, decay, offset_lr_mul)`` to a function ``name -> lr scale``. These ship:

* ``classification`` (the official ``classification/optimizer.py``): blocks counted backwards from the last block get
  ``decay**k``; ``patch_embed`` shares block 0's ratio, ``levels.i.downsample``/``levels.i.norm`` the ratio of the
  first block of level i+1, heads and ``post_norms`` keep 1. ``offset_lr_mul`` multiplies the lr of parameters whose
  name contains ``offset`` or ``center_feature_scale_proj`` (the official ``DCN_LR_MUL``, applied only with layer
  decay on).
* ``detection``, ``segmentation`` and ``occupancy`` (the official ``detection`` / ``segmentation`` / BEVFormer-Occ
  ``mmcv_custom/custom_layer_decay_optimizer_constructor.py``): the model answers its layer ids
  (``model.layer_id_fn()``: ``(name -> id, number of ids)``); scale ``decay ** (num_ids - 1 - id)``, times
  ``offset_lr_mul`` for the parameters the model names in ``offset_lr_keys`` (detectors: ``sampling_offsets``,
  ``reference_points``).

Register more with :func:`register_layer_decay_rule`. The matching *no-weight-decay* rules are in
:data:`NO_DECAY_RULES`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "LAYER_DECAY_RULES",
    "LambdaScheduler",
    "NO_DECAY_RULES",
    "build_optimizer",
    "build_scheduler",
    "param_groups",
    "register_layer_decay_rule",
]

logger = logging.getLogger(__name__)

LayerDecayRule = Callable[[nn.Module, float, float], Callable[[str], float]]
NoDecayRule = Callable[[str, torch.Tensor], bool]


def _find_backbone(model: nn.Module) -> tuple[str, nn.Module]:
    """``(prefix, module)`` of the first submodule with ``depths`` (an InternImage)."""
    for name, module in model.named_modules():
        if hasattr(module, "depths") and hasattr(module, "levels"):
            return (name + "." if name else ""), module
    raise ValueError("layer decay needs an InternImage backbone (a module with `depths` and `levels`)")


def _classification_rule(model: nn.Module, decay: float, offset_lr_mul: float) -> Callable[[str], float]:
    prefix, backbone = _find_backbone(model)
    matcher = backbone.group_matcher()
    last = sum(backbone.depths)

    def scale(name: str) -> float:
        if not name.startswith(prefix):
            return 1.0
        local = name[len(prefix) :]
        s = decay ** (last - matcher(local)[0])
        if decay < 1.0 and ("offset" in local or "center_feature_scale_proj" in local):
            s *= offset_lr_mul
        return s

    return scale


def _model_rule(model: nn.Module, decay: float, offset_lr_mul: float) -> Callable[[str], float]:
    # The model answers its own layer ids (detectors and segmentors: the official constructors' rules), and names
    # the parameters whose lr ``offset_lr_mul`` multiplies (the original's offset_lr_scale).
    layer_id, num_ids = model.layer_id_fn()
    offset_keys = tuple(getattr(model, "offset_lr_keys", ()))

    def scale(name: str) -> float:
        s = decay ** (num_ids - 1 - layer_id(name))
        if any(key in name for key in offset_keys):
            s *= offset_lr_mul
        return s

    return scale


def no_decay_bias_and_1d(name: str, param: torch.Tensor) -> bool:
    """No weight decay on biases and 1-D parameters (norms, layer scales): the classification recipe."""
    return param.ndim <= 1 or name.endswith(".bias")


def no_decay_bias_1d_and_norm(name: str, param: torch.Tensor) -> bool:
    """Also none on ``norm``, ``relative_position`` and ``sampling_offsets`` parameters: the official detection /
    segmentation constructors."""
    return (
        param.ndim <= 1
        or name.endswith(".bias")
        or any(key in name for key in ("norm", "relative_position", "sampling_offsets"))
    )


def no_decay_none(name: str, param: torch.Tensor) -> bool:
    """Weight decay on every parameter: mmcv's ``DefaultOptimizerConstructor`` without decay multipliers."""
    return False


#: The one registry of layer-decay rules (name -> rule) and of their no-weight-decay rules (same names).
LAYER_DECAY_RULES: dict[str, LayerDecayRule] = {}
NO_DECAY_RULES: dict[str, NoDecayRule] = {}


def register_layer_decay_rule(name: str, rule: LayerDecayRule, no_decay: NoDecayRule = no_decay_bias_and_1d) -> None:
    """Register a rule ``(model, decay, offset_lr_mul) -> (param name -> lr scale)`` and its no-decay rule.

    Args:
        name: What ``TrainConfig.layer_decay_rule`` names.
        rule: The layer-decay rule.
        no_decay: ``(param name, param) -> True`` for parameters without weight decay.
    """
    LAYER_DECAY_RULES[name] = rule
    NO_DECAY_RULES[name] = no_decay


register_layer_decay_rule("classification", _classification_rule, no_decay_bias_and_1d)
register_layer_decay_rule("detection", _model_rule, no_decay_bias_1d_and_norm)
register_layer_decay_rule("segmentation", _model_rule, no_decay_bias_1d_and_norm)
register_layer_decay_rule("occupancy", _model_rule, no_decay_bias_1d_and_norm)
# Official configs without the layer-decay constructor (e.g. DINO-L ``0.1x_backbone_lr``): decay on everything.
register_layer_decay_rule("mmcv_default", _model_rule, no_decay_none)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    rule: str = "classification",
    offset_lr_mul: float = 1.0,
    backbone_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups carrying ``lr_scale`` (read by the schedulers) and ``weight_decay``.

    Parameters with the same (lr scale, weight decay) share a group; the update is the same as the official
    one-group-per-parameter layout, with far fewer groups.

    Args:
        model: The bare model (not a DDP wrapper; FSDP2 modules are fine).
        weight_decay: Decay of matrices / conv kernels.
        layer_decay: Ratio per layer (1.0 = off).
        rule: Key of :data:`LAYER_DECAY_RULES` / :data:`NO_DECAY_RULES`.
        offset_lr_mul: DCN offset lr multiplier (classification rule, with layer decay).
        backbone_lr_mult: Lr multiplier of the InternImage backbone's parameters (on top of any layer decay).

    Returns:
        List of dicts with ``params``, ``lr_scale``, ``weight_decay`` and ``names`` (for logging).
    """
    if rule not in LAYER_DECAY_RULES:
        raise ValueError(f"unknown layer decay rule {rule!r}; known: {sorted(LAYER_DECAY_RULES)}")
    lr_scale = LAYER_DECAY_RULES[rule](model, layer_decay, offset_lr_mul) if layer_decay < 1.0 else None
    if lr_scale is None and offset_lr_mul != 1.0:
        logger.info("offset_lr_mul=%s ignored: it applies with layer decay only (as in the original)", offset_lr_mul)
    no_decay = NO_DECAY_RULES.get(rule, no_decay_bias_and_1d)
    backbone_prefix = _find_backbone(model)[0] if backbone_lr_mult != 1.0 else None
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = lr_scale(name) if lr_scale is not None else 1.0
        if backbone_prefix is not None and name.startswith(backbone_prefix):
            scale *= backbone_lr_mult
        wd = 0.0 if no_decay(name, param) else weight_decay
        group = groups.setdefault((scale, wd), {"params": [], "names": [], "lr_scale": scale, "weight_decay": wd})
        group["params"].append(param)
        group["names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["lr_scale"], g["weight_decay"]))


def build_optimizer(groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
    """AdamW (or SGD) over ``groups`` from :func:`param_groups`; ``cfg`` is a :class:`TrainConfig`."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(clean, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(clean, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


class LambdaScheduler:
    """Per-step schedule ``lr(step)`` with timm's ``step_update`` interface; groups get ``lr(step) * lr_scale``.

    Used for the mmcv-style schedules (poly, step, constant) whose linear warm-up multiplies the regular lr:
    ``lr = regular(t) * (1 - (1 - t / warmup) * (1 - ratio))`` for ``t < warmup``, as mmdet / mmseg do.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, fn: Callable[[int], float]) -> None:
        self.optimizer = optimizer
        self.fn = fn
        self.step_update(0)

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        value = self.fn(num_updates)
        for group in self.optimizer.param_groups:
            group["lr"] = value * group.get("lr_scale", 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless: the lr is a function of the step, which the trainer restores."""


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: Any,
    total_steps: int,
    steps_per_epoch: int,
    lr: float,
    batch_lr_factor: float,
) -> Any:
    """A per-optimizer-step scheduler (``step_update(step)``) honouring each group's ``lr_scale``.

    * ``cosine``: timm ``CosineLRScheduler`` (warm-up prefix from ``warmup_lr`` to ``lr``, then cosine to ``min_lr``),
      as the official classification recipe.
    * ``poly``: ``(lr - min_lr) * (1 - t / total) ** poly_power + min_lr`` (mmseg), mmcv linear warm-up.
    * ``step``: ``lr * decay_rate ** (milestones passed)`` (mmdet), mmcv linear warm-up.
    * ``constant``: ``lr`` after the mmcv linear warm-up.

    Args:
        optimizer: From :func:`build_optimizer`.
        cfg: :class:`TrainConfig` (``sched``, warm-up, ``min_lr``, ``poly_power``, milestones).
        total_steps: Optimizer steps of the whole schedule.
        steps_per_epoch: Optimizer steps per epoch (converts epoch-based settings).
        lr: Effective peak lr (already batch-scaled).
        batch_lr_factor: The linear batch scaling of ``lr`` (global batch / ``lr_base_batch``), applied to
            ``min_lr`` and ``warmup_lr`` too; each group's ``lr_scale`` (layer decay) multiplies on top.
    """
    from timm.scheduler import CosineLRScheduler

    warmup = cfg.warmup_iters if cfg.warmup_iters > 0 else int(round(cfg.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    warmup_lr = cfg.warmup_lr * batch_lr_factor if cfg.warmup_lr is not None else lr * cfg.warmup_ratio
    min_lr = cfg.min_lr * batch_lr_factor
    # timm reads each group's base lr from ``lr`` here and multiplies by ``lr_scale`` when stepping.
    for group in optimizer.param_groups:
        group["lr"] = lr
        group.pop("initial_lr", None)
    if cfg.sched == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=max(total_steps - warmup, 1),
            lr_min=min_lr,
            warmup_t=warmup,
            warmup_lr_init=warmup_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    ratio = warmup_lr / lr if lr > 0 else 1.0
    unit = 1 if cfg.iters > 0 else steps_per_epoch
    milestones = sorted(int(m * unit) for m in cfg.decay_milestones)

    def regular(t: int) -> float:
        if cfg.sched == "poly":
            return (lr - min_lr) * max(1.0 - t / max(total_steps, 1), 0.0) ** cfg.poly_power + min_lr
        if cfg.sched == "step":
            return lr * cfg.decay_rate ** sum(t >= m for m in milestones)
        return lr

    def fn(t: int) -> float:
        if t < warmup:
            return regular(t) * (1 - (1 - t / warmup) * (1 - ratio))
        return regular(t)

    if cfg.sched not in ("poly", "step", "constant"):
        raise ValueError(f"unknown schedule {cfg.sched!r}")
    return LambdaScheduler(optimizer, fn)
