"""Training configuration: one dataclass per task, YAML round trip, ``key=value`` overrides.

The engine reads only :class:`TrainConfig`'s fields; tasks subclass it to add theirs (model, data, augmentation).
A config is saved as ``config.yaml`` next to every run, and the same file (or a shipped preset) can be loaded back.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["TrainConfig", "apply_overrides", "load_config", "save_config"]

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
        clip_grad: Max gradient norm (None or 0 = off).
        amp: ``none`` | ``bf16`` | ``fp16`` (fp16 needs a GPU and uses a gradient scaler).
        grad_checkpointing: Recompute activations in backward.
        ema: Keep an EMA of the weights (timm ``ModelEmaV3``).
        ema_decay: EMA decay per optimizer step.
        strategy: ``ddp`` | ``fsdp`` (FSDP2 ``fully_shard``); single-process runs ignore it.
        device: ``auto`` | ``cpu`` | ``cuda``.
        workers: DataLoader workers per process.
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
    clip_grad: float | None = 5.0
    amp: str = "none"
    grad_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    strategy: str = "ddp"
    device: str = "auto"
    workers: int = 4
    seed: int = 0
    deterministic: bool = False
    log_every: int = 50
    eval_every: int = 1
    ckpt_every: int = 0
    keep_last: int = 3
    resume: str = ""
    max_steps: int = 0
    compile: bool = False

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


def _coerce(hint: Any, value: Any, name: str) -> Any:
    """Convert YAML/CLI values to the annotated type (tuples from lists, floats from ints/strings)."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name) if len(inner) == 1 else value
    if origin is tuple:
        return tuple(_coerce(args[0], v, name) for v in value)
    if origin is list:
        return [(_coerce(args[0], v, name) if args else v) for v in value]
    if hint is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name}: expected a boolean, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if hint in (int, float, str) and not isinstance(value, bool):
        try:
            return hint(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: expected {hint.__name__}, got {value!r}") from err
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

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)
    return path


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    """Read a YAML file written by :func:`save_config` (or a preset) into ``cls``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} is not a mapping")
    return cls.from_dict(data)
