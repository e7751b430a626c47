"""The task protocol the :class:`~internimage.engine.Trainer` drives.

A task owns everything specific to a problem (model, data, loss, metrics); the trainer owns the loop
(distribution, AMP, accumulation, clipping, EMA, schedules, checkpoints, resume, logging). Subclass :class:`Task`
and implement the four abstract methods; the rest have working defaults. The engine knows no model: what it needs
to know of one (the block type sharded as FSDP units) the task says in :attr:`Task.fsdp_unit_types`.

Batches can be anything the collate function returns; :meth:`Task.batch_to_device` moves tensors found in
tuples/lists/dicts. A dict batch may carry ``num_skipped`` (unreadable samples dropped by the collate function);
the trainer sums it into the ``skipped`` metric and the log.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import TrainConfig, checkpoint_fields
from .distributed import DistInfo
from .optim import param_groups

__all__ = ["Task", "checkpoint_fields", "move_to_device"]


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Recursively move tensors in tuples, lists and dicts to ``device`` (other values unchanged)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


class Task(abc.ABC):
    """Base class of a trainable task.

    Args:
        cfg: The run's config (a :class:`TrainConfig` subclass carrying the task's own fields).
    """

    #: Metric (key of :meth:`evaluate`'s result) where higher is better; logged as the run's headline.
    primary_metric: str = "loss"
    #: Module types sharded as separate FSDP2 units (e.g. the backbone's block class); empty: the root only.
    fsdp_unit_types: tuple[type[nn.Module], ...] = ()

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------ must implement
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The model to train, on CPU, in train mode."""
        raise NotImplementedError

    @abc.abstractmethod
    def build_datasets(self, info: DistInfo) -> tuple[Dataset, Dataset | None]:
        """``(train, val)`` map-style datasets (``val`` may be None). Called on every rank."""
        raise NotImplementedError

    @abc.abstractmethod
    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Forward + loss of one micro-batch (already on the device, inside autocast).

        Returns:
            Scalar tensors; ``'loss'`` is back-propagated, every entry is logged (averaged over steps and ranks).
        """
        raise NotImplementedError

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, info: DistInfo) -> dict[str, float]:
        """Metrics over the whole ``loader`` (already sharded per rank), reduced over ranks.

        The loader's sampler pads the last rank's shard under distribution; use
        :func:`internimage.engine.sampler.real_sample_count` to count only real samples.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ defaults
    def collate_fn(self, train: bool) -> Callable[[list[Any]], Any] | None:
        """Collate function of the train / val loader (None: PyTorch's default)."""
        return None

    def batch_to_device(self, batch: Any, device: torch.device) -> Any:
        return move_to_device(batch, device)

    def train_sampler(self, train_set: Any, info: Any) -> Any:
        """A task's own train sampler (with ``set_epoch(epoch, start=0)``), or None for the engine's shuffling one."""
        return None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer groups (default: layer decay by ``cfg.layer_decay_rule``, no decay on 1-D params / biases)."""
        c = self.cfg
        return param_groups(
            model, c.weight_decay, c.layer_decay, c.layer_decay_rule, c.offset_lr_mul, c.backbone_lr_mult
        )

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        """Submodules sharded as separate FSDP2 units (default: every instance of :attr:`fsdp_unit_types`)."""
        types = self.fsdp_unit_types
        return [m for m in model.modules() if isinstance(m, types)] if types else []

    def export_metadata(self) -> dict[str, str]:
        """String metadata stored in the exported ``model.safetensors`` (e.g. model name, class names)."""
        return {}
