"""``torch.distributed`` plumbing for runs launched by ``torchrun`` (or plain ``python`` for one process).

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``; multi-node runs only add
``--nnodes``/``--rdzv-endpoint`` on the command line. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "is_main_process",
    "unwrap_model",
    "wrap_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits.

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank within the node (selects the GPU).
        device: Device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group if launched by ``torchrun``; pick the device.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Returns:
        The :class:`DistInfo` of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
        logger.info("process group: rank %d/%d, backend %s", rank, world, dist.get_backend())
    return DistInfo(rank, world, local_rank, dev)


def cleanup_distributed() -> None:
    """Leave the process group (no-op for single-process runs)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (identity for one process) and return it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def wrap_model(
    model: nn.Module,
    info: DistInfo,
    strategy: str = "ddp",
    shard_modules: list[nn.Module] | None = None,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Wrap for data parallelism.

    Args:
        model: The model, already on ``info.device``.
        info: From :func:`init_distributed`.
        strategy: ``ddp`` (``DistributedDataParallel``) or ``fsdp`` (FSDP2 ``fully_shard``, ZeRO-3 style).
        shard_modules: FSDP units sharded separately before the root (e.g. every block); default: none.
        param_dtype: FSDP2 ``MixedPrecisionPolicy`` compute dtype (gradients reduced in float32); the trainer uses
            autocast instead and leaves this None.

    Returns:
        The wrapped model (``model`` itself for one process; FSDP2 shards ``model`` in place and returns it).
    """
    if not info.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
        for module in shard_modules or []:
            fully_shard(module, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model
    if strategy != "ddp":
        raise ValueError(f"unknown strategy {strategy!r} (ddp | fsdp)")
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under DDP / ``torch.compile`` wrappers (FSDP2 modules are their own)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
