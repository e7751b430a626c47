"""Training configuration: one dataclass per task, YAML round trip, ``key=value`` overrides.

The engine reads only :class:`TrainConfig`'s fields; tasks subclass it to add theirs (model, data, augmentation).
A config is saved as ``config.yaml`` next to every run, and the same file (or a shipped preset) can be loaded back.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..io import atomic_write

__all__ = [
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "checkpoint_fields",
    "get_preset_in",
    "list_presets_in",
    "load_config",
    "save_config",
]

C = TypeVar("C", bound="TrainConfig")


@dataclass
class TrainConfig:
    """Hyper-parameters the engine understands (task-agnostic).

    Schedule length: ``iters > 0`` makes the run iteration-based (segmentation's 160k); otherwise it runs
    ``epochs`` epochs. Warm-up likewise: ``warmup_iters`` if > 0, else ``warmup_epochs``.

    Attributes:
        output: Run directory (checkpoints, logs, ``config.yaml``).
        epochs: Training epochs (ignored when ``iters > 0``).
        iters: Optimizer steps for iteration-based schedules (0 = epoch-based).
        batch_size: Images per process per micro-batch.
        accum_steps: Micro-batches per optimizer step (gradient accumulation).
        lr: Peak learning rate, for a global batch of ``lr_base_batch`` (scaled linearly; 0 = no scaling).
        lr_base_batch: Global batch size at which ``lr`` is given (512 in the official classification recipe).
        min_lr: Final lr of cosine/poly, given at ``lr_base_batch`` like ``lr``.
        warmup_lr: Lr at the start of warm-up, given at ``lr_base_batch`` (None: ``lr * warmup_ratio``).
        warmup_ratio: Start of warm-up as a fraction of ``lr`` when ``warmup_lr`` is None.
        warmup_epochs: Linear warm-up length in epochs.
        warmup_iters: Linear warm-up length in steps (takes precedence when > 0).
        sched: ``cosine`` | ``poly`` | ``step`` | ``constant``.
        poly_power: Exponent of the poly schedule.
        decay_milestones: ``step`` schedule milestones, in epochs (or steps when ``iters > 0``).
        decay_rate: Multiplier applied at each milestone.
        optimizer: ``adamw`` | ``sgd``.
        weight_decay: Decoupled weight decay (1-D parameters and biases get none).
        betas: AdamW betas.
        eps: AdamW eps.
        momentum: SGD momentum.
        layer_decay: Layer-wise lr decay ratio (1.0 = off).
        layer_decay_rule: Name of a rule registered in :mod:`internimage.engine.optim`.
        offset_lr_mul: Lr multiplier of the DCN offset / centre-scale parameters (``DCN_LR_MUL``; with layer decay).
        backbone_lr_mult: Lr multiplier of every backbone parameter (mmcv's ``custom_keys={'backbone': lr_mult}``).
        clip_grad: Max gradient norm (None or 0 = off).
        amp: ``none`` | ``bf16`` | ``fp16`` (fp16 needs a GPU and uses a gradient scaler).
        grad_checkpointing: Recompute activations in backward.
        ema: Keep an EMA of the weights (timm ``ModelEmaV3``).
        ema_decay: EMA decay per optimizer step.
        strategy: ``ddp`` | ``fsdp`` (FSDP2 ``fully_shard``); single-process runs ignore it.
        device: ``auto`` | ``cpu`` | ``cuda``.
        workers: DataLoader workers per process (default: 4, at most the machine's core count).
        seed: Base seed (each rank adds its rank).
        deterministic: ``torch.use_deterministic_algorithms(True)`` and no cuDNN benchmarking.
        log_every: Steps between log lines / metric rows.
        eval_every: Epochs between evaluations (steps when ``iters > 0``); 0 = only at the end.
        ckpt_every: Steps between checkpoints (0 = only at epoch ends / the end).
        keep_last: Step/epoch checkpoints to keep.
        resume: ``auto`` (latest in ``output`` if any), a checkpoint path, or empty for a fresh run.
        max_steps: Stop after this many optimizer steps even if the schedule is longer (0 = no limit; for tests).
        compile: ``torch.compile`` the model.
    """

    output: str = "runs/run"
    epochs: int = 300
    iters: int = 0
    batch_size: int = 128
    accum_steps: int = 1
    lr: float = 5e-4
    lr_base_batch: int = 512
    min_lr: float = 5e-6
    warmup_lr: float | None = 5e-7
    warmup_ratio: float = 1e-3
    warmup_epochs: float = 20.0
    warmup_iters: int = 0
    sched: str = "cosine"
    poly_power: float = 1.0
    decay_milestones: list[int] = field(default_factory=list)
    decay_rate: float = 0.1
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    layer_decay: float = 1.0
    layer_decay_rule: str = "classification"
    offset_lr_mul: float = 1.0
    backbone_lr_mult: float = 1.0
    clip_grad: float | None = 5.0
    amp: str = "none"
    grad_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    strategy: str = "ddp"
    device: str = "auto"
    workers: int = field(default_factory=lambda: _default_workers())
    seed: int = 0
    deterministic: bool = False
    log_every: int = 50
    eval_every: int = 1
    ckpt_every: int = 0
    keep_last: int = 3
    resume: str = ""
    max_steps: int = 0
    compile: bool = False

    def __post_init__(self) -> None:
        """Check every field's type and range as soon as the config is built (subclasses' fields included)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(hints[f.name], getattr(self, f.name), f.name))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        choices = {
            "sched": ("cosine", "poly", "step", "constant"),
            "optimizer": ("adamw", "sgd"),
            "amp": ("none", "bf16", "fp16"),
            "strategy": ("ddp", "fsdp"),
            "device": ("auto", "cpu", "cuda"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("batch_size", "accum_steps", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.iters <= 0 and self.epochs <= 0:
            raise ValueError("set epochs > 0 or iters > 0")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        for name in _NON_NEGATIVE:
            value = getattr(self, name, None)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0 <= self.ema_decay <= 1:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {list(self.betas)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples become lists) suitable for YAML/JSON."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict, rejecting unknown keys (typos must not be ignored silently)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config keys for {cls.__name__}: {unknown}")
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(hints[k], v, k) for k, v in data.items()}
        return cls(**values)


# Counts, steps and rates for which a negative value has no meaning.
_NON_NEGATIVE = (
    "epochs",
    "iters",
    "lr",
    "lr_base_batch",
    "min_lr",
    "warmup_lr",
    "warmup_ratio",
    "warmup_epochs",
    "warmup_iters",
    "weight_decay",
    "eps",
    "momentum",
    "offset_lr_mul",
    "backbone_lr_mult",
    "clip_grad",
    "workers",
    "eval_every",
    "ckpt_every",
    "max_steps",
)


def _default_workers() -> int:
    """Four loader processes, fewer on a machine with fewer cores."""
    return max(1, min(4, os.cpu_count() or 1))


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_type(hint: Any, value: Any, name: str) -> Any:
    """``value`` if it is of the annotated type (ints accepted as floats, lists as tuples), else TypeError.

    A float where an int is expected is refused unless it is integral (``epochs=1.7`` must not become 1), and a
    boolean is never taken for a number (``batch_size=true``).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for inner in (a for a in args if a is not type(None)):
            try:
                return _check_type(inner, value, name)
            except TypeError as err:
                errors.append(err)
        raise errors[0]
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise TypeError(f"{name} must have {len(args)} values, got {len(value)}: {list(value)!r}")
        if not args:
            return tuple(value) if origin is tuple else list(value)
        fixed = origin is tuple and args[-1] is not Ellipsis
        inner_hints = list(args) if fixed else [args[0]] * len(value)
        items = [_check_type(h, v, f"{name}[{i}]") for i, (h, v) in enumerate(zip(inner_hints, value))]
        return tuple(items) if origin is tuple else list(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{name} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {value!r}")
        return value
    return value


def _coerce(hint: Any, value: Any, name: str) -> Any:
    """Convert YAML/CLI values to the annotated type (tuples from lists, numbers from strings).

    Only conversions that lose nothing happen here; :meth:`TrainConfig.__post_init__` refuses the rest.
    """
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name) if len(inner) == 1 else value
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) == len(value):
            return tuple(_coerce(a, v, name) for a, v in zip(args, value))
        return origin(_coerce(args[0], v, name) for v in value) if args else origin(value)
    if hint is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise TypeError(f"{name} must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if hint in (int, float) and isinstance(value, str):
        try:
            return hint(value)
        except ValueError as err:
            kind = "an integer" if hint is int else "a number"
            raise TypeError(f"{name} must be {kind}, got {value!r}") from err
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a YAML scalar such as `resume: 100` or `model: 1`
    return value


def apply_overrides(cfg: C, overrides: list[str] | dict[str, Any]) -> C:
    """Return a copy of ``cfg`` with ``key=value`` strings (YAML-parsed values) or a dict applied."""
    import yaml

    if isinstance(overrides, dict):
        items = dict(overrides)
    else:
        items = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form key=value")
            key, raw = item.split("=", 1)
            items[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw else ""
    data = cfg.to_dict()
    data.update(items)
    return type(cfg).from_dict(data)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML atomically."""
    import yaml

    return atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    """Read a YAML file written by :func:`save_config` (or a preset) into ``cls``."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config {path} is a directory, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"config {path} is not valid YAML{line}: {problem}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config {path} is not a mapping")
    return cls.from_dict(data)


def checkpoint_fields(path: str, meta_key: str, config_cls: Any) -> dict[str, Any]:
    """Model fields a run stored with its weights: safetensors metadata (``Task.export_metadata``) or ``config.yaml``.

    Args:
        path: Checkpoint file: a run's ``model.safetensors`` or ``<run>/checkpoints/step_N.pth``.
        meta_key: safetensors metadata key holding the JSON model fields.
        config_cls: Training config class whose ``model_fields()`` a run's ``config.yaml`` yields.

    Returns:
        The fields found (empty if the checkpoint carries none).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta[meta_key]) if meta_key in meta else {}
    run_config = p.parent.parent / "config.yaml"  # the trainer's layout: <run>/checkpoints/step_N.pth
    if run_config.is_file():
        return load_config(config_cls, run_config).model_fields()
    return {}


# ------------------------------------------------------------------------------------------------- presets
def _preset_modules(package: str) -> dict[str, str]:
    """Preset name -> module name; a module whose official name is no Python identifier (``..._0.1x_...``) says
    it in ``NAME``."""
    path = importlib.import_module(package).__path__
    out = {}
    for m in pkgutil.iter_modules(path):
        if not m.name.startswith("_"):
            out[getattr(importlib.import_module(f"{package}.{m.name}"), "NAME", m.name)] = m.name
    return out


def list_presets_in(package: str) -> list[str]:
    """Names of the presets of ``package`` (a task's ``presets`` package: ``<name>.py`` defining ``PRESET``)."""
    return sorted(_preset_modules(package))


def get_preset_in(package: str, name: str) -> dict[str, Any]:
    """The ``PRESET`` dict (a copy) of the preset ``name`` of ``package``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    modules = _preset_modules(package)
    if name not in modules:
        parts = package.split(".")
        task = f"{parts[-2]} " if len(parts) > 2 and parts[-1] == "presets" else ""  # internimage.<task>.presets
        raise ValueError(f"unknown {task}preset {name!r}; known: {', '.join(sorted(modules))}")
    return dict(importlib.import_module(f"{package}.{modules[name]}").PRESET)


T = TypeVar("T", bound="TaskConfig")


class TaskConfig:
    """Presets and stored model fields for a task's :class:`TrainConfig` subclass (mixed in before it).

    The subclass sets ``presets_package`` (the dotted name of its ``presets`` package) and ``meta_key`` (the
    safetensors metadata key its :class:`~internimage.engine.Task` stores the model fields under).
    """

    meta_key: ClassVar[str] = ""
    presets_package: ClassVar[str] = ""

    @classmethod
    def list_presets(cls) -> list[str]:
        """Names of the task's shipped presets."""
        return list_presets_in(cls.presets_package)

    @classmethod
    def preset_fields(cls, name: str) -> dict[str, Any]:
        """The fields (a copy) of the preset ``name``."""
        return get_preset_in(cls.presets_package, name)

    @classmethod
    def from_preset(cls: type[T], name: str, **overrides: Any) -> T:
        """The official recipe ``name`` (see :meth:`list_presets`) plus ``overrides``, validated."""
        cfg = apply_overrides(apply_overrides(cls(), cls.preset_fields(name)), overrides)
        cfg.validate()
        return cfg

    @classmethod
    def from_checkpoint(cls: type[T], path: str | Path, **overrides: Any) -> T:
        """The model fields stored with ``path`` (our ``model.safetensors`` or a run checkpoint) plus ``overrides``."""
        cfg = apply_overrides(apply_overrides(cls(), checkpoint_fields(str(path), cls.meta_key, cls)), overrides)
        cfg.validate()
        return cfg
