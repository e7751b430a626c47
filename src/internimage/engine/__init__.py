"""Task-agnostic training engine on ``torch.distributed`` (launched by ``torchrun``), shared by every task.

* :class:`Trainer` runs the loop; a :class:`Task` supplies model, data, loss and metrics.
* :class:`TrainConfig` holds the engine's hyper-parameters (tasks subclass it); YAML round trip and
  ``key=value`` overrides via :func:`load_config` / :func:`save_config` / :func:`apply_overrides`.
* :func:`param_groups` builds layer-decayed optimizer groups with a pluggable rule (:data:`LAYER_DECAY_RULES`:
  ``classification``, ``detection``; add more with :func:`register_layer_decay_rule`).
* Schedules: cosine, poly, multi-step, constant, each with linear warm-up, epoch- or iteration-based.
* Checkpoints (:class:`CheckpointManager`): atomic, keep-last-K, exact resume, SIGTERM-safe.

Minimal task::

    class MyTask(Task):
        def build_model(self): ...
        def build_datasets(self, info): return train_set, val_set
        def training_step(self, model, batch): return {"loss": F.cross_entropy(model(batch[0]), batch[1])}
        def evaluate(self, model, loader, info): return {"acc": ...}

    Trainer(cfg, MyTask(cfg)).fit()
"""

from .checkpoint import CheckpointManager
from .config import TrainConfig, apply_overrides, load_config, save_config
from .distributed import DistInfo, all_reduce_sum, init_distributed, unwrap_model, wrap_model
from .logger import MetricLogger, read_metrics
from .optim import (
    LAYER_DECAY_RULES,
    NO_DECAY_RULES,
    build_optimizer,
    build_scheduler,
    param_groups,
    register_layer_decay_rule,
)
from .sampler import EvalShardSampler, ResumableSampler, real_sample_count
from .task import Task, move_to_device
from .trainer import Trainer, seed_everything

__all__ = [
    "LAYER_DECAY_RULES",
    "NO_DECAY_RULES",
    "CheckpointManager",
    "DistInfo",
    "EvalShardSampler",
    "MetricLogger",
    "ResumableSampler",
    "Task",
    "TrainConfig",
    "Trainer",
    "all_reduce_sum",
    "apply_overrides",
    "build_optimizer",
    "build_scheduler",
    "init_distributed",
    "load_config",
    "move_to_device",
    "param_groups",
    "read_metrics",
    "real_sample_count",
    "register_layer_decay_rule",
    "save_config",
    "seed_everything",
    "unwrap_model",
    "wrap_model",
]
