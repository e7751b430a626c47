"""The training loop shared by every task: DDP / FSDP2, AMP, accumulation, EMA, schedules, checkpoints, resume.

Launch with ``python`` (one process) or ``torchrun --nproc_per_node N`` (``--nnodes``/``--rdzv-endpoint`` for
several machines; the run directory must then be on a shared filesystem). A run is reproducible bit for bit on CPU
with ``deterministic=True`` and ``workers=0``, including across a kill and ``resume='auto'``: the checkpoint holds
model, EMA, optimizer, scheduler position, gradient scaler, sampler position and every rank's RNG states.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..io import atomic_write, remove_stale_temporaries
from .checkpoint import (
    CheckpointManager,
    capture_rng_state,
    check_model_state,
    full_model_state,
    full_optimizer_state,
    load_model_state,
    load_optimizer_state,
    restore_rng_state,
    saved_config,
)
from .config import TrainConfig, save_config
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed, unwrap_model, wrap_model
from .logger import MetricLogger
from .optim import build_optimizer, build_scheduler
from .sampler import EvalShardSampler, ResumableSampler
from .task import Task

__all__ = ["Trainer", "seed_everything"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class _Preemption:
    """Turns SIGTERM into a flag checked after each optimizer step (the loop then saves and returns)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to restore
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    """Runs a :class:`~internimage.engine.task.Task` under a :class:`~internimage.engine.config.TrainConfig`.

    Typical use::

        trainer = Trainer(cfg, MyTask(cfg))
        result = trainer.fit()          # trains, evaluates, writes cfg.output/{config.yaml,metrics.*,ckpt/,...}

    Outputs in ``cfg.output``: ``config.yaml`` (effective config), ``metrics.jsonl``/``metrics.csv`` (and ``tb/``),
    ``checkpoints/step_*.pth``/``epoch_*.pth`` (training state, official layout), ``model.safetensors`` and
    ``model_ema.safetensors`` (final weights with the task's metadata), ``result.json`` (final metrics).

    Attributes:
        info: This process's :class:`DistInfo` (after :meth:`setup`).
        model: The wrapped model being trained.
        ema: timm ``ModelEmaV3`` or None.
        step: Optimizer steps done.
        preempted: True when :meth:`fit` returned early because of SIGTERM.
    """

    def __init__(self, cfg: TrainConfig, task: Task) -> None:
        cfg.validate()
        self.cfg = cfg
        self.task = task
        self.output = Path(cfg.output)
        self.info: DistInfo | None = None
        self.model: nn.Module | None = None
        self.ema: Any = None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped = 0
        self.preempted = False
        self.fsdp = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Distributed init, seeding, model, data, optimizer, scheduler; restores a checkpoint if asked."""
        cfg = self.cfg
        self.info = info = init_distributed(cfg.device)
        if cfg.amp == "fp16" and info.device.type != "cuda":
            raise ValueError("amp=fp16 needs a GPU; use amp=bf16 on CPU")
        if cfg.amp != "none" and cfg.strategy == "fsdp" and info.distributed and info.device.type == "cpu":
            # Measured with torch 2.14 / gloo: FSDP2 + bf16 (autocast or MixedPrecisionPolicy) gives corrupt
            # gradient norms (1e35, NaN) on CPU while amp=none matches DDP exactly.
            raise ValueError("strategy=fsdp with amp on CPU gives corrupt gradients; use amp=none or strategy=ddp")
        # Same seed on every rank for the initial weights (FSDP shards them without a broadcast), then a
        # per-rank seed for everything random during training (augmentation, drop path).
        seed_everything(cfg.seed, cfg.deterministic)
        bare = self.task.build_model()
        seed_everything(cfg.seed + info.rank, cfg.deterministic)
        if cfg.grad_checkpointing:
            if not hasattr(bare, "set_grad_checkpointing"):
                raise ValueError(f"{type(bare).__name__} does not support gradient checkpointing")
            bare.set_grad_checkpointing(True)
        bare.to(info.device)
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(bare, decay=cfg.ema_decay)
        self.fsdp = info.distributed and cfg.strategy == "fsdp"
        model = wrap_model(bare, info, cfg.strategy, self.task.fsdp_units(bare))
        if self.ema is not None and self.fsdp:
            wrap_model(self.ema.module, info, "fsdp", self.task.fsdp_units(self.ema.module))
        if cfg.compile:
            model = torch.compile(model)
        self.model = model

        train_set, val_set = self.task.build_datasets(info)
        self.sampler = self.task.train_sampler(train_set, info) or ResumableSampler(
            len(train_set), info.rank, info.world_size, shuffle=True, seed=cfg.seed
        )
        self.train_loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            collate_fn=self.task.collate_fn(True),
            drop_last=True,
            pin_memory=info.device.type == "cuda",
            generator=torch.Generator(),
        )
        self.val_loader = None
        if val_set is not None and len(val_set) > 0:
            self.val_loader = DataLoader(
                val_set,
                batch_size=cfg.batch_size,
                sampler=EvalShardSampler(len(val_set), info.rank, info.world_size, pad=self.fsdp),
                num_workers=cfg.workers,
                collate_fn=self.task.collate_fn(False),
                pin_memory=info.device.type == "cuda",
            )
        self.steps_per_epoch = len(self.train_loader) // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training set ({len(train_set)} samples) is smaller than one optimizer step "
                f"({cfg.batch_size} x {info.world_size} processes x {cfg.accum_steps} accumulation)"
            )
        self.total_steps = cfg.iters if cfg.iters > 0 else cfg.epochs * self.steps_per_epoch

        self.global_batch = cfg.batch_size * info.world_size * cfg.accum_steps
        self.batch_lr_factor = self.global_batch / cfg.lr_base_batch if cfg.lr_base_batch > 0 else 1.0
        self.lr = cfg.lr * self.batch_lr_factor
        groups = self.task.param_groups(unwrap_model(model))
        self.optimizer = build_optimizer(groups, cfg)
        self.scheduler = build_scheduler(
            self.optimizer, cfg, self.total_steps, self.steps_per_epoch, self.lr, self.batch_lr_factor
        )
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")
        self.ckpt = CheckpointManager(self.output / "checkpoints", cfg.keep_last)
        if info.is_main:
            # Temporary files of writes a kill interrupted (checkpoint, config, metrics) are garbage.
            for folder in (self.output, self.ckpt.directory):
                for stale in remove_stale_temporaries(folder):
                    logger.info("removed %s, left by an interrupted write", stale)
        barrier()
        self.metrics = MetricLogger(self.output, enabled=info.is_main)
        logger.info(
            "%d process(es) on %s, global batch %d (%d x %d x %d accum), lr %.3g, %d steps (%d per epoch), "
            "%d param groups",
            info.world_size,
            info.device,
            self.global_batch,
            cfg.batch_size,
            info.world_size,
            cfg.accum_steps,
            self.lr,
            self.total_steps,
            self.steps_per_epoch,
            len(groups),
        )
        self._maybe_resume()
        if info.is_main:
            save_config(cfg, self.output / "config.yaml")

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        """Full training state (collectives under FSDP: call on every rank)."""
        assert self.info is not None and self.model is not None
        rng = capture_rng_state()
        if self.info.distributed:
            gathered: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        state = {
            "model": full_model_state(self.model),
            "optimizer": full_optimizer_state(unwrap_model(self.model), self.optimizer),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "skipped": self.skipped,
            "rng": rng_all,
            "world_size": self.info.world_size,
            "config": json.dumps(self.cfg.to_dict()),
            "metadata": self.task.export_metadata(),
        }
        if self.ema is not None:
            state["model_ema"] = full_model_state(self.ema.module)
        return state

    def save_checkpoint(self, name: str) -> Path | None:
        """Save the training state as ``checkpoints/<name>`` (main process writes; all ranks participate)."""
        state = self._state()
        self._last_saved_step = self.step
        path = None
        if self.info is not None and self.info.is_main:
            path = self.ckpt.save(state, name)
        barrier()
        return path

    def _maybe_resume(self) -> None:
        cfg = self.cfg
        if not cfg.resume:
            return
        if cfg.resume == "auto":
            found = self.ckpt.load_latest()
            if found is None:
                logger.info("resume=auto: no checkpoint in %s, starting fresh", self.ckpt.directory)
                self.metrics.rewind(0)  # rows a run killed before its first checkpoint logged
                return
            path, state = found
        else:
            path = Path(cfg.resume)
            state = CheckpointManager.load(path)
        assert self.info is not None and self.model is not None
        for key in ("model", "optimizer", "step", "epoch", "rng"):
            if key not in state:
                raise ValueError(f"{path} is not a training checkpoint of this package (no {key!r} entry)")
        self._check_architecture(path, state)
        load_model_state(self.model, state["model"])
        load_optimizer_state(unwrap_model(self.model), self.optimizer, state["optimizer"])
        if self.ema is not None:
            if "model_ema" not in state:
                raise RuntimeError(f"{path} has no EMA weights but ema=True")
            load_model_state(self.ema.module, state["model_ema"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch, self.skipped = int(state["batch_in_epoch"]), int(state.get("skipped", 0))
        self.scheduler.step_update(self.step)
        rngs = state["rng"]
        if int(state.get("world_size", len(rngs))) == self.info.world_size:
            restore_rng_state(rngs[self.info.rank])
        else:
            logger.warning("resuming with a different number of processes: RNG streams are re-seeded")
            seed_everything(self.cfg.seed + self.info.rank + self.step)
        self.metrics.rewind(self.step)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    def _check_architecture(self, path: Path, state: dict[str, Any]) -> None:
        """One line when the checkpoint's weights do not fit the model (names the saved ``model`` if it differs)."""
        try:
            check_model_state(self.model, state["model"], path)
        except ValueError as err:
            saved = saved_config(state).get("model")
            current = getattr(self.cfg, "model", None)
            if saved is not None and current is not None and saved != current:
                raise ValueError(f"{err} (it was saved with model={saved}, this run has model={current})") from None
            raise

    # ------------------------------------------------------------------ loop
    def _autocast(self) -> contextlib.AbstractContextManager:
        assert self.info is not None
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)

    def _no_sync(self, last_micro: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
        model = self.model
        if last_micro or self.info is None or not self.info.distributed:
            return contextlib.nullcontext()
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return model.no_sync()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return contextlib.nullcontext()

    def _optimizer_step(self) -> float | None:
        grad_norm = None
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            if self.fsdp:
                grad_norm = self._clip_sharded(self.cfg.clip_grad)
            else:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    @torch.no_grad()
    def _clip_sharded(self, max_norm: float) -> float:
        """Global-norm clipping over FSDP2 shards: sum of squared local shards, all-reduced.

        ``clip_grad_norm_`` on the DTensor gradients returned NaN under FSDP2 mixed precision on CPU/gloo.
        """
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        sq = torch.zeros((), dtype=torch.float64, device=local[0].device if local else None)
        for g in local:
            sq += g.double().pow(2).sum()
        norm = float(all_reduce_sum(sq).sqrt())
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in local:
                g.mul_(coef)
        return norm

    def fit(self) -> dict[str, Any]:
        """Train to the end of the schedule (or ``max_steps``, or SIGTERM), evaluating as configured.

        Returns:
            ``{'step', 'epoch', 'train_loss', 'preempted', **last evaluation metrics}``.
        """
        if self.model is None:
            self.setup()
        assert self.info is not None and self.model is not None
        cfg, info = self.cfg, self.info
        last_eval: dict[str, Any] = {}
        sums: dict[str, torch.Tensor] = {}
        stop_at = min(self.total_steps, cfg.max_steps) if cfg.max_steps > 0 else self.total_steps
        t_start = time.time()
        with _Preemption() as preempt:
            while self.step < stop_at:
                epoch_done = self._run_epoch(stop_at, preempt, sums)
                if self.preempted:
                    break
                if epoch_done:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if self._eval_due(epoch_end=True):
                        last_eval = self.evaluate()
                    self.save_checkpoint(f"epoch_{self.epoch:04d}.pth")
        if not self.preempted:
            if self._last_saved_step != self.step:
                self.save_checkpoint(f"step_{self.step:08d}.pth")
            if self.val_loader is not None and last_eval.get("_at_step") != self.step:
                last_eval = self.evaluate()
            self._export()
        result = {
            "step": self.step,
            "epoch": self.epoch,
            "train_loss": self._last_train_loss,
            "preempted": self.preempted,
            "train_time_s": round(time.time() - t_start, 2),
            "train_skipped_rank0": self.skipped,
            **{k: v for k, v in last_eval.items() if not k.startswith("_")},
        }
        if info.is_main:
            _write_json(self.output / "result.json", result)
        self.metrics.close()
        return result

    _last_train_loss: float = math.nan
    _last_saved_step: int = -1

    def _eval_due(self, epoch_end: bool) -> bool:
        every = self.cfg.eval_every
        if self.val_loader is None or every <= 0:
            return False
        if self.cfg.iters > 0:
            return not epoch_end and self.step % every == 0
        return epoch_end and self.epoch % every == 0

    def _run_epoch(self, stop_at: int, preempt: _Preemption, sums: dict[str, torch.Tensor]) -> bool:
        """One (possibly resumed, possibly partial) epoch; True when the epoch's data was exhausted."""
        from tqdm.auto import tqdm

        cfg, info = self.cfg, self.info
        assert info is not None and self.model is not None
        accum = cfg.accum_steps
        start_micro = self.batch_in_epoch * accum
        self.sampler.set_epoch(self.epoch, start=start_micro * cfg.batch_size)
        # Worker seeds come from this generator, so they depend on the epoch only, not on the global RNG.
        self.train_loader.generator.manual_seed(cfg.seed * 100003 + self.epoch)
        n_micro = self.steps_per_epoch * accum - start_micro
        self.model.train()
        bar = tqdm(
            itertools.islice(self.train_loader, n_micro),
            total=n_micro,
            desc=f"epoch {self.epoch}",
            disable=not info.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        t0 = time.time()
        for i, batch in enumerate(bar):
            last_micro = (i + 1) % accum == 0
            if isinstance(batch, dict) and "num_skipped" in batch:
                self.skipped += int(batch["num_skipped"])
            batch = self.task.batch_to_device(batch, info.device)
            with self._no_sync(last_micro):
                with self._autocast():
                    losses = self.task.training_step(self.model, batch)
                if "loss" not in losses:
                    raise RuntimeError("training_step must return a dict with a 'loss' entry")
                self.scaler.scale(losses["loss"] / accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64)) + v.detach().double().cpu() / accum
            if not last_micro:
                continue
            if hasattr(self.model, "set_requires_gradient_sync"):
                self.model.set_requires_gradient_sync(True)
            grad_norm = self._optimizer_step()
            self.step += 1
            self.batch_in_epoch += 1
            self.scheduler.step_update(self.step)
            if self.ema is not None:
                self.ema.update(unwrap_model(self.model), step=self.step)
            sums["_n"] = sums.get("_n", torch.zeros((), dtype=torch.float64)) + 1
            if self.step % cfg.log_every == 0 or self.step == stop_at:
                row = self._log_train(sums, grad_norm, time.time() - t0)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                sums.clear()
                t0 = time.time()
            if self._eval_due(epoch_end=False):
                self.evaluate()
            if cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0:
                self.save_checkpoint(f"step_{self.step:08d}.pth")
            if self._preempt_requested(preempt):
                self.preempted = True
                self.save_checkpoint(f"step_{self.step:08d}.pth")
                logger.warning("SIGTERM: saved step %d; continue with resume=auto", self.step)
                return False
            if self.step >= stop_at:
                return self.batch_in_epoch == self.steps_per_epoch
        return True

    def _preempt_requested(self, preempt: _Preemption) -> bool:
        if self.info is None or not self.info.distributed:
            return preempt.requested
        flag = torch.tensor([1.0 if preempt.requested else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.to(self.info.device)
        return bool(all_reduce_sum(flag).item() > 0)

    def _log_train(self, sums: dict[str, torch.Tensor], grad_norm: float | None, seconds: float) -> dict[str, Any]:
        assert self.info is not None
        keys = sorted(sums)
        packed = torch.stack([sums[k] for k in keys])
        if self.info.distributed:
            packed = packed.to(self.info.device) if dist.get_backend() == "nccl" else packed
            packed = all_reduce_sum(packed).cpu() / self.info.world_size
        values = dict(zip(keys, packed.tolist()))
        n = max(values.pop("_n"), 1.0)
        row: dict[str, Any] = {"split": "train", "step": self.step, "epoch": self.epoch}
        row.update({k: v / n for k, v in values.items()})
        row["lr"] = max(g["lr"] for g in self.optimizer.param_groups)
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        row["img_per_s"] = n * self.global_batch / max(seconds, 1e-9)
        skipped = torch.tensor([float(self.skipped)], dtype=torch.float64)
        if self.info.distributed:
            skipped = skipped.to(self.info.device) if dist.get_backend() == "nccl" else skipped
            skipped = all_reduce_sum(skipped).cpu()
        row["skipped"] = int(skipped.item())  # unreadable training images so far, all ranks
        self._last_train_loss = row["loss"]
        self.metrics.log(row)
        return row

    # ------------------------------------------------------------------ evaluation and export
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Evaluate the model (and its EMA) on the val loader; logs a ``val`` row and returns its metrics."""
        if self.model is None:
            self.setup()
        assert self.info is not None and self.model is not None
        if self.val_loader is None:
            return {}
        self.model.eval()
        # DDP's forward broadcasts buffers (a collective): evaluate the bare module, whose ranks may then run
        # different numbers of batches. FSDP2 modules must run sharded, with equal forwards on every rank.
        model = self.model if self.fsdp else unwrap_model(self.model)
        with self._autocast():
            metrics = dict(self.task.evaluate(model, self.val_loader, self.info))
            if self.ema is not None:
                self.ema.module.eval()
                ema_metrics = self.task.evaluate(self.ema.module, self.val_loader, self.info)
                metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        self.model.train()
        row = {"split": "val", "step": self.step, "epoch": self.epoch, **metrics}
        self.metrics.log(row)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        logger.info("eval at step %d (epoch %d): %s", self.step, self.epoch, shown)
        return {**metrics, "_at_step": self.step}

    def _export(self) -> None:
        """Write the final weights (``model.safetensors``, ``model_ema.safetensors``) with the task's metadata."""
        assert self.info is not None and self.model is not None
        sd = full_model_state(self.model)
        ema_sd = full_model_state(self.ema.module) if self.ema is not None else None
        if self.info.is_main:
            meta = {"format": "internimage", "step": str(self.step), **self.task.export_metadata()}
            _save_safetensors(sd, self.output / "model.safetensors", meta)
            if ema_sd is not None:
                _save_safetensors(ema_sd, self.output / "model_ema.safetensors", meta)
        barrier()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=float))


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Weights as safetensors, written atomically (the engine's own writer: it knows no model or checkpoint format)."""
    from safetensors.torch import save_file

    from ..io import atomic_write

    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
