"""Training checkpoints: atomic writes, keep-last-K rotation, full-state save/restore (also under FSDP2).

A training checkpoint is a ``torch.save`` dict readable with ``weights_only=True`` and, for its model part, by
:func:`internimage.models.load_checkpoint` (it follows the official layout: ``model``, ``model_ema``,
``optimizer``, ...). Additional keys: ``scheduler``, ``scaler``, ``step``, ``epoch``, ``batch_in_epoch``,
``rng`` (python/numpy/torch/cuda states), ``config``, ``metadata``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CheckpointManager",
    "capture_rng_state",
    "full_model_state",
    "full_optimizer_state",
    "load_model_state",
    "load_optimizer_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(step|epoch)_(\d+)\.pth$")


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded, unwrapped) CPU state dict; a collective under FSDP2, so call it on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if _is_fsdp(model):
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts)
    from .distributed import unwrap_model

    return {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}


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
        """Atomically write ``state`` as ``name`` (e.g. ``step_00000100.pth``), update ``latest``, rotate."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _write_text_atomic(self.directory / "latest", name + "\n")
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

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Read a training checkpoint (``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RuntimeError(f"cannot read training checkpoint {path}: {str(err).splitlines()[0]}") from err


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
