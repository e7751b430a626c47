"""Class-aware training sampler (mmdet 2.x ``ClassAwareSampler``, the OpenImages configs' ``class_aware_sampler``).

Per epoch, with a generator seeded by ``seed + epoch`` (the same on every rank): the classes that occur in the
training set are visited in a shuffled cycle (a new shuffle each time the cycle is exhausted), and for each visited
class ``num_sample_class`` images are taken from that class's own shuffled cycle of images. Every class is thus drawn
equally often whatever its frequency, and each drawn image contains its class. The epoch has mmdet's length: each of
the ``num_replicas`` ranks gets ``ceil(N / num_replicas / samples_per_gpu) * samples_per_gpu`` indices (N = dataset
size), the contiguous slice ``rank`` of the epoch's list.

The random draws (one ``randperm`` of the classes, then one per class in ascending class order, re-shuffling a cycle
only when its next element is asked for after exhaustion) follow mmdet's order, so with the same seed the indices are
mmdet's for label sets in the same order.

Note: in mmdet 2.28 ``build_dataloader`` honours ``class_aware_sampler`` only with an ``EpochBasedRunner``; the
OpenImages config runs an ``IterBasedRunner``, for which it builds an ``InfiniteGroupBatchSampler`` and ignores the
class-aware setting.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ClassAwareSampler", "image_label_sets"]


class _ShuffledCycle:
    """Endless walk over ``items``: a random order, re-drawn from ``generator`` when exhausted (lazily, on the next
    request, so the generator's draws interleave with the other cycles' exactly as requests arrive)."""

    def __init__(self, items: Sequence[int], generator: torch.Generator) -> None:
        self.items = list(items)
        self.generator = generator
        self.order = torch.randperm(len(self.items), generator=generator).tolist()
        self.pos = 0

    def next(self) -> int:
        if self.pos == len(self.order):
            self.order = torch.randperm(len(self.items), generator=self.generator).tolist()
            self.pos = 0
        item = self.items[self.order[self.pos]]
        self.pos += 1
        return item


def image_label_sets(dataset: Any) -> list[np.ndarray]:
    """Per index of ``dataset``, the labels of its image (what the sampler draws from).

    Understands :class:`~internimage.detection.datasets.base.DetectionDataset` (``records[i].labels``), repeat
    wrappers with ``dataset`` and ``indices`` (:class:`~internimage.detection.datasets.lvis.ClassBalancedDataset`:
    index i is image ``indices[i]``, as mmdet's wrapper maps ``get_cat_ids``) and ``ConcatDataset``-like ``datasets``.

    Returns:
        One int array per index (labels 1..K for the package's datasets; any ints are fine).
    """
    if hasattr(dataset, "records"):
        return [np.asarray(r.labels).reshape(-1) for r in dataset.records]
    if hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        inner = image_label_sets(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if hasattr(dataset, "datasets"):
        return [labels for part in dataset.datasets for labels in image_label_sets(part)]
    raise TypeError(f"image_label_sets: cannot read per-image labels from {type(dataset).__name__}")


class ClassAwareSampler(Sampler[int]):
    """mmdet's ``ClassAwareSampler``: classes uniformly (in shuffled cycles), then images of the drawn class.

    Drop-in for the engine's :class:`~internimage.engine.sampler.ResumableSampler`: ``set_epoch(epoch, start)``
    selects the epoch and skips the first ``start`` indices of this rank (for an exact resume).

    Args:
        labels: Per dataset index, the labels of its image (e.g. :func:`image_label_sets`); an image counts once per
            class whatever its number of boxes of that class.
        samples_per_gpu: Per-rank batch size; each rank's epoch length is a multiple of it.
        num_replicas: Number of ranks.
        rank: This rank (0..num_replicas-1).
        seed: Base seed; must be identical on every rank (mmdet broadcasts rank 0's).
        num_sample_class: Images taken per drawn class (1 in the OpenImages config).

    Raises:
        ValueError: no image has a label, or a bad argument.
    """

    def __init__(
        self,
        labels: Sequence[Sequence[int] | np.ndarray],
        samples_per_gpu: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        num_sample_class: int = 1,
    ) -> None:
        if not isinstance(num_sample_class, int) or num_sample_class <= 0:
            raise ValueError(f"ClassAwareSampler: num_sample_class must be a positive int, got {num_sample_class!r}")
        if not 0 <= rank < num_replicas or samples_per_gpu <= 0:
            raise ValueError(f"ClassAwareSampler: bad rank {rank} / num_replicas {num_replicas} / {samples_per_gpu=}")
        images_of: dict[int, list[int]] = {}
        for index, image_labels in enumerate(labels):
            for label in sorted(set(np.asarray(image_labels).reshape(-1).tolist())):
                images_of.setdefault(int(label), []).append(index)
        if not images_of:
            raise ValueError("ClassAwareSampler: no image has a label")
        # Ascending class order, images in dataset order: the order mmdet's get_cat2imgs builds (labels 0..K-1).
        self.classes = sorted(images_of)
        self.images_of = {c: images_of[c] for c in self.classes}
        self.dataset_size = len(labels)
        self.samples_per_gpu = samples_per_gpu
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.num_sample_class = num_sample_class
        self.num_samples = math.ceil(self.dataset_size / num_replicas / samples_per_gpu) * samples_per_gpu
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's draws and skip this rank's first ``start`` indices."""
        self.epoch = epoch
        self.start = start

    def draws(self) -> list[tuple[int, int]]:
        """The whole epoch (all ranks), ``total_size`` pairs ``(drawn class, dataset index)`` in order."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        class_cycle = _ShuffledCycle(self.classes, g)
        image_cycles = {c: _ShuffledCycle(self.images_of[c], g) for c in self.classes}
        # Whole passes over the classes, enough to cover the epoch, then cut to length (mmdet's "bins").
        passes = math.ceil(self.total_size / len(self.classes) / self.num_sample_class)
        out: list[tuple[int, int]] = []
        for _ in range(passes * len(self.classes)):
            c = class_cycle.next()
            out.extend((c, image_cycles[c].next()) for _ in range(self.num_sample_class))
        # Never short given the pass count; the wrap-around keeps mmdet's rule should that change.
        out = (out * math.ceil(self.total_size / len(out)))[: self.total_size]
        return out

    def indices(self) -> list[int]:
        """This rank's ``num_samples`` dataset indices of the epoch (before skipping ``start``)."""
        offset = self.num_samples * self.rank
        return [index for _, index in self.draws()[offset : offset + self.num_samples]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
