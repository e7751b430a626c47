"""Training checkpoints: atomic writes, keep-last-K rotation, full-state save/restore (also under FSDP2).

A training checkpoint is a ``torch.save`` dict readable with ``weights_only=True`` and, for its model part, by
:func:`internimage.models.load_checkpoint` (it follows the official layout: ``model``, ``model_ema``,
``optimizer``, ...). Additional keys: ``scheduler``, ``scaler``, ``step``, ``epoch``, ``batch_in_epoch``,
``rng`` (python/numpy/torch/cuda states), ``config``, ``metadata``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io import atomic_path, atomic_write
from ..models.checkpoint import refusal_message

__all__ = [
    "CheckpointManager",
    "capture_rng_state",
    "check_model_state",
    "full_model_state",
    "full_optimizer_state",
    "load_model_state",
    "load_optimizer_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(step|epoch)_(\d+)\.pth$")


def _is_fsdp(model: nn.Module) -> bool:
    # Not "any parameter is a DTensor": after a forward the FSDP2 root keeps plain, gathered parameters.
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded, unwrapped) CPU state dict; a collective under FSDP2, so call it on every rank.

    Under FSDP2 each sharded parameter is all-gathered in turn (``DTensor.full_tensor``; every rank walks the same
    keys in the same order) and only rank 0 keeps the result. This is done here rather than with
    ``get_model_state_dict(full_state_dict=True)``, which hands back the sharded DTensors when the model is sharded
    at the root only (no sub-units) and has just run a forward.
    """
    from torch.distributed.tensor import DTensor

    from .distributed import unwrap_model

    if not _is_fsdp(model):
        return {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}
    keep = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if keep:
            out[name] = full.detach().cpu().clone()
    return out


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into a plain, DDP or FSDP2 model (every rank passes the full dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if _is_fsdp(model):
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    from .distributed import unwrap_model

    unwrap_model(model).load_state_dict(state)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter names, unsharded; a collective under FSDP2."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=_is_fsdp(model))
    return get_optimizer_state_dict(model, optimizer, options=opts)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of :func:`full_optimizer_state` (every rank passes the full dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, in weights_only-loadable types."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npk = state["numpy"]
    np.random.set_state((npk[0], npk[1].numpy().astype(np.uint32), *npk[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Raise one ValueError line when ``state`` (a full state dict) was written for another architecture.

    Compares key names and (global) shapes with the model's own state dict, so a resume into a different model
    fails before anything is loaded, instead of with PyTorch's many-line ``load_state_dict`` report.
    """
    from .distributed import unwrap_model

    own = unwrap_model(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    conflicts = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or conflicts):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_preview(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
    if conflicts:
        k = conflicts[0]
        shapes = f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
        parts.append(f"{len(conflicts)} shape conflicts ({shapes}{', ...' if len(conflicts) > 1 else ''})")
    raise ValueError(
        f"checkpoint {source} was written for another architecture: {'; '.join(parts)}. Resume with the same "
        "model settings, or train into a new output folder"
    )


def saved_config(state: dict[str, Any]) -> dict[str, Any]:
    """The run config stored in a training checkpoint (empty when absent or unreadable)."""
    try:
        cfg = json.loads(state.get("config", "{}"))
    except (TypeError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _preview(keys: list[str], n: int = 3) -> str:
    more = f", +{len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _save_tensors(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a Python file, so that a full disk surfaces as OSError(ENOSPC), not RuntimeError."""
    with open(path, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as err:
            # torch reports a failed write as "[enforce fail at inline_container.cc] unexpected pos ..." with the
            # file's OSError as context; the OSError is what the caller (and the user) can act on.
            if isinstance(err.__context__, OSError):
                raise err.__context__ from err
            raise


class CheckpointManager:
    """Writes ``step_XXXXXXXX.pth`` / ``epoch_XXXX.pth`` into ``directory`` and keeps the last ``keep_last``.

    A small text file ``latest`` names the newest checkpoint; it is updated
    atomically after the checkpoint itself, so a kill at any moment leaves a readable latest checkpoint.

    Args:
        directory: Where checkpoints live (created).
        keep_last: How many step/epoch checkpoints to keep (older ones are deleted after a successful save).
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last

    def save(self, state: dict[str, Any], name: str) -> Path:
        """Atomically write ``state`` as ``name`` (e.g. ``step_00000100.pth``), update ``latest``, rotate.

        Raises:
            OSError: The folder cannot be written (full disk: "no space left on device while writing <path>");
                the previous checkpoints and ``latest`` are then untouched.
        """
        path = self.directory / name
        with atomic_path(path) as tmp:
            _save_tensors(state, tmp)
        atomic_write(self.directory / "latest", name + "\n")
        self._rotate()
        logger.info("saved checkpoint %s", path)
        return path

    def _rotate(self) -> None:
        ckpts = self.list()
        for old in ckpts[: max(len(ckpts) - self.keep_last, 0)]:
            old.unlink(missing_ok=True)

    def list(self) -> list[Path]:
        """Step/epoch checkpoints, oldest first (ordered by the training step stored in the name / mtime)."""
        found = [p for p in self.directory.glob("*.pth") if _NAME.match(p.name)]
        return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.directory / "latest"
        if pointer.is_file():
            path = self.directory / pointer.read_text().strip()
            if path.is_file():
                return path
        ckpts = self.list()
        return ckpts[-1] if ckpts else None

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that can be read, with its state; None when there is none.

        A latest checkpoint that cannot be read (a damaged file, a disk error) is logged and the next older kept
        checkpoint is tried, so one bad file costs the steps since the previous checkpoint, not the run.

        Raises:
            RuntimeError: Checkpoints exist but none can be read (names the newest and why).
        """
        newest = self.latest()
        candidates = ([newest] if newest is not None else []) + [p for p in reversed(self.list()) if p != newest]
        first_error: RuntimeError | None = None
        for path in candidates:
            try:
                state = self.load(path)
            except RuntimeError as err:
                first_error = first_error or err
                logger.warning("%s; trying the previous checkpoint", err)
                continue
            if path != newest:
                logger.warning("resuming from %s, the newest checkpoint that could be read", path.name)
            return path, state
        if first_error is not None:
            raise RuntimeError(f"no readable checkpoint in {self.directory} ({first_error})")
        return None

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Read a training checkpoint (``weights_only=True``)."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"checkpoint to resume from is a directory: {path}")
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            refused = refusal_message(path, err)
            if refused is not None:
                raise RuntimeError(refused) from err
            raise RuntimeError(f"cannot read training checkpoint {path}: {_first_line(err)}") from err
        if not isinstance(state, dict):
            raise RuntimeError(f"cannot read training checkpoint {path}: it holds a {type(state).__name__}, not a dict")
        return state
