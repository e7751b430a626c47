"""Resumable, rank-sharded samplers.

Unlike ``DistributedSampler`` the training sampler can start mid-epoch, which is what an exact resume needs: the
permutation depends only on ``(seed, epoch)``, and ``start`` skips the samples already consumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EvalShardSampler", "ResumableSampler", "real_sample_count"]


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one rank, restartable at any position of an epoch.

    Every rank gets ``ceil(N / world)`` indices (the permutation is padded by wrapping around, like
    ``DistributedSampler``), so all ranks run the same number of steps.

    Args:
        length: Dataset size N.
        rank: This process's rank.
        world_size: Number of processes.
        shuffle: Shuffle with a permutation seeded by ``seed + epoch``.
        seed: Base seed, identical on every rank.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0) -> None:
        if length <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(length / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` samples of this rank."""
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.length))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


class EvalShardSampler(Sampler[int]):
    """Ordered shard ``rank::world_size`` of an evaluation set.

    With ``pad`` (needed by FSDP, whose forward runs collectives), every rank gets the same number of indices by
    repeating the last index; evaluation code then counts only the first :attr:`num_real` samples of this rank
    (see :func:`real_sample_count`). Without it (DDP evaluates its bare module) ranks may differ by one sample.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1, pad: bool = False) -> None:
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.real = list(range(rank, length, world_size))
        self.per_rank = math.ceil(length / world_size) if length else 0
        extra = self.per_rank - len(self.real) if pad and length else 0
        self.indices = self.real + [length - 1] * extra

    @property
    def num_real(self) -> int:
        return len(self.real)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def real_sample_count(loader: object) -> int | None:
    """Number of non-padding samples of a loader on a padded :class:`EvalShardSampler` (None: no padding)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, EvalShardSampler) and sampler.pad and len(sampler) > sampler.num_real:
        return sampler.num_real
    return None
