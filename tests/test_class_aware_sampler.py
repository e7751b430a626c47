"""ClassAwareSampler: uniform classes on a skewed set, draws hold their class, mmdet's epoch length and sharding."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from internimage.detection.datasets.lvis import ClassBalancedDataset
from internimage.detection.samplers import ClassAwareSampler, image_label_sets


def skewed_labels(n: int = 300, k: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Class 1 in every image, class 1 < c < k in about 2^-(c-1) of them, class k in image 7 only."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        labs = [1] + [c for c in range(2, k) if rng.random() < 0.5 ** (c - 1)]
        out.append(np.array(labs * 2, np.int64))  # repeated boxes of a class: the image still counts once
    out[7] = np.array([1, k], np.int64)
    return out


def test_classes_are_drawn_uniformly_and_each_draw_contains_its_class():
    labels = skewed_labels()
    sampler = ClassAwareSampler(labels, seed=0)
    counts = Counter()
    image_freq = Counter(c for labs in labels for c in set(labs.tolist()))
    for epoch in range(5):
        sampler.set_epoch(epoch)
        draws = sampler.draws()
        assert len(draws) == len(labels)
        for c, index in draws:
            assert c in labels[index]
        counts.update(c for c, _ in draws)
    k, total = 10, 5 * len(labels)
    expected = total / k
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in range(1, k + 1))
    assert chi2 < 27.88  # 0.999 quantile of chi-square with 9 degrees of freedom
    # The rarest class (1 image in 300) is drawn ~1/10 of the time instead of 1/300.
    assert image_freq[k] == 1 and counts[k] > 0.08 * total


def test_images_of_a_class_cycle_through_all_of_them():
    labels = [np.array([1])] * 6 + [np.array([2])] * 2
    sampler = ClassAwareSampler(labels, seed=1)
    draws = sampler.draws()  # 8 draws: 4 of class 1 (4 of its 6 images, distinct), 4 of class 2 (each image twice)
    class1 = [i for c, i in draws if c == 1]
    class2 = Counter(i for c, i in draws if c == 2)
    assert len(class1) == 4 and len(set(class1)) == 4
    assert class2 == {6: 2, 7: 2}


@pytest.mark.parametrize(
    "n,replicas,per_gpu,num_samples",
    [(37, 1, 1, 37), (37, 2, 1, 19), (37, 2, 2, 20), (37, 3, 2, 14), (10, 4, 1, 3)],
)
def test_epoch_length_is_mmdets(n, replicas, per_gpu, num_samples):
    # mmdet: num_samples = ceil(N / replicas / samples_per_gpu) * samples_per_gpu, total = num_samples * replicas.
    labels = skewed_labels(n, k=4)
    for rank in range(replicas):
        s = ClassAwareSampler(labels, samples_per_gpu=per_gpu, num_replicas=replicas, rank=rank, seed=5)
        assert len(s) == num_samples == len(list(s))
        assert s.total_size == num_samples * replicas and len(s.draws()) == s.total_size


@pytest.mark.parametrize("num_sample_class", [1, 3])
def test_two_replica_shards_are_disjoint_slices_covering_the_epoch(num_sample_class):
    labels = skewed_labels(41, k=5)
    ranks = [ClassAwareSampler(labels, 1, 2, r, seed=9, num_sample_class=num_sample_class) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    epoch = [i for _, i in ranks[0].draws()]
    assert epoch == [i for _, i in ranks[1].draws()]  # the same epoch list on both ranks (shared seed)
    shards = [list(s) for s in ranks]
    # Rank r takes positions [r * num_samples, (r + 1) * num_samples): disjoint, and together the whole epoch.
    assert len(shards[0]) == len(shards[1]) == 21 and shards[0] + shards[1] == epoch


def test_matches_mmdet_indices_and_epochs_differ():
    # Recorded from mmdet 2.28's ClassAwareSampler(seed=3) on the same label sets (its labels 0..3 = ours 1..4).
    labels = [[1], [1, 2], [1], [3], [1, 1], [2, 4], [1], [1, 3], [1], [1]]
    assert list(ClassAwareSampler(labels, seed=3)) == [7, 5, 1, 4, 5, 5, 3, 1, 1, 2]
    s = ClassAwareSampler(labels, samples_per_gpu=2, num_replicas=2, rank=1, seed=3, num_sample_class=2)
    s.set_epoch(1)
    assert list(s) == [7, 2, 5, 5, 7, 3]
    s.set_epoch(0)
    assert list(s) != [7, 2, 5, 5, 7, 3]


def test_resume_start_skips_the_consumed_indices():
    s = ClassAwareSampler(skewed_labels(20, k=3), seed=4)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=7)
    assert len(s) == 13 and list(s) == full[7:]


def test_label_sets_of_wrapped_datasets_and_errors():
    records = [SimpleNamespace(labels=np.array(labs)) for labs in ([1], [2, 2], [3])]
    base = SimpleNamespace(records=records)
    assert [a.tolist() for a in image_label_sets(base)] == [[1], [2, 2], [3]]
    wrapped = ClassBalancedDataset(base, oversample_thr=0.5)  # every class in 1/3 of the images: all repeated
    assert len(wrapped) > 3
    assert [a.tolist() for a in image_label_sets(wrapped)] == [records[i].labels.tolist() for i in wrapped.indices]
    both = SimpleNamespace(datasets=[base, base])
    assert len(image_label_sets(both)) == 6
    with pytest.raises(TypeError):
        image_label_sets(object())
    with pytest.raises(ValueError, match="no image has a label"):
        ClassAwareSampler([np.zeros(0, np.int64)])
    with pytest.raises(ValueError, match="num_sample_class"):
        ClassAwareSampler([[1]], num_sample_class=0)


def test_detection_task_trains_with_the_class_aware_sampler_when_asked():
    from types import SimpleNamespace

    from internimage.detection import DetectionConfig, DetectionTask
    from internimage.detection.samplers import ClassAwareSampler

    records = [SimpleNamespace(labels=np.array(labels)) for labels in ([1], [1, 2], [2], [3])]
    data = SimpleNamespace(records=records)
    info = SimpleNamespace(world_size=1, rank=0)
    assert DetectionTask(DetectionConfig()).train_sampler(data, info) is None  # the engine's shuffle
    sampler = DetectionTask(DetectionConfig(class_aware_sampler=1, batch_size=2)).train_sampler(data, info)
    assert isinstance(sampler, ClassAwareSampler)
    sampler.set_epoch(0)
    assert len(list(iter(sampler))) == len(sampler)
    with pytest.raises(ValueError, match="class_aware_sampler"):
        DetectionConfig(class_aware_sampler=-1).validate()
