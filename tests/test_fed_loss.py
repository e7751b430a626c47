"""Federated loss of the DINO head: class sampling, restricted focal loss (float64 reference), zero gradients outside
the sampled classes (encoder, decoder and denoising terms), off by default."""

from __future__ import annotations

import pytest
import torch

from internimage.detection.models.dino import DenoisingMeta, DINOHead, build_dino, sigmoid_focal_loss
from internimage.detection.models.dino.matching import sample_fed_loss_classes

pytest.importorskip("scipy")

K = 8


def focal_reference(logits: torch.Tensor, labels: torch.Tensor, classes: list[int], avg: float) -> float:
    """Sigmoid focal loss (alpha 0.25, gamma 2) over ``classes`` only, in float64, term by term."""
    x = logits.double()
    total = torch.zeros((), dtype=torch.float64)
    for i in range(x.shape[0]):
        for c in classes:
            p = torch.sigmoid(x[i, c])
            if labels[i].item() == c:
                total = total - 0.25 * (1 - p) ** 2 * torch.log(p)
            else:
                total = total - 0.75 * p**2 * torch.log(1 - p)
    return total.item() / avg


def tiny_head(**kwargs) -> DINOHead:
    torch.manual_seed(0)
    return DINOHead(K, dim=32, num_queries=10, enc_layers=1, dec_layers=2, heads=2, hidden=64, **kwargs)


# ------------------------------------------------------------------------------------------------ sampling
def test_sampled_classes_keep_the_gt_and_follow_the_weights():
    weight = torch.tensor([4.0, 0.0, 1.0, 9.0, 1.0, 0.0, 16.0, 1.0])  # classes 1 and 5 cannot be drawn
    gt = torch.tensor([2, 2, 5, K])  # K = background, ignored
    g = torch.Generator().manual_seed(0)
    seen = torch.zeros(K)
    for _ in range(2000):
        picked = sample_fed_loss_classes(gt, weight, 4, generator=g)
        assert len(picked) == 4 and picked.tolist() == sorted(set(picked.tolist()))
        assert {2, 5} <= set(picked.tolist()) and 1 not in picked.tolist()
        seen[picked] += 1
    # Two negatives without replacement among {0: 4, 3: 9, 4: 1, 6: 16, 7: 1}: heavier classes more often.
    assert seen[6] > seen[3] > seen[0] > seen[4] and seen[6] > seen[3] > seen[0] > seen[7]
    # Fewer drawable classes than asked: all of them; more GT classes than asked: exactly the GT.
    assert sample_fed_loss_classes(gt, weight, 50).tolist() == [0, 2, 3, 4, 5, 6, 7]
    assert sample_fed_loss_classes(torch.tensor([0, 3, 6]), weight, 2).tolist() == [0, 3, 6]
    same = [sample_fed_loss_classes(gt, weight, 4, torch.Generator().manual_seed(3)).tolist() for _ in range(2)]
    assert same[0] == same[1]


def test_restricted_focal_loss_equals_the_float64_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, K, generator=g) * 3
    labels = torch.tensor([0, 3, K, K, 6, K, 2, K, K, 6, K, 1])
    weight = torch.arange(1, K + 1, dtype=torch.float64).pow(0.5)
    classes = sample_fed_loss_classes(labels, weight, 6, generator=torch.Generator().manual_seed(7))
    assert {0, 1, 2, 3, 6} <= set(classes.tolist()) and len(classes) == 6
    got = sigmoid_focal_loss(logits, labels, avg_factor=6.0, classes=classes)
    assert got.item() == pytest.approx(focal_reference(logits, labels, classes.tolist(), 6.0), rel=1e-6)
    # All classes selected: the same number as the plain loss, bit for bit.
    assert torch.equal(
        sigmoid_focal_loss(logits, labels, 6.0, classes=torch.arange(K)), sigmoid_focal_loss(logits, labels, 6.0)
    )


# ------------------------------------------------------------------------------------------------ head
def head_inputs(head: DINOHead, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    gt_boxes = [torch.tensor([[4.0, 6, 40, 50], [30, 10, 90, 60]]), torch.tensor([[10.0, 5, 30, 40]])]
    gt_labels = [torch.tensor([1, 6]), torch.tensor([6])]
    sizes = [(64, 96), (48, 64)]
    meta = DenoisingMeta(pad_size=2 * 2 * 2, num_groups=2)  # single_pad 2 (max boxes per image), 2 groups
    layers, n, q = 2, 2, head.num_queries
    classes = torch.randn(layers, n, meta.pad_size + q, K, generator=g, dtype=torch.float64).requires_grad_()
    boxes = torch.rand(layers, n, meta.pad_size + q, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
    enc_scores = torch.randn(n, q, K, generator=g, dtype=torch.float64).requires_grad_()
    enc_boxes = torch.rand(n, q, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
    return classes, boxes, enc_scores, enc_boxes, gt_boxes, gt_labels, sizes, meta


def test_classes_outside_the_set_get_zero_gradient_in_every_term():
    head = tiny_head(fed_loss_num_classes=4)
    head.set_class_frequencies(torch.tensor([100, 5, 0, 40, 7, 1, 300, 2]))
    classes, boxes, enc_scores, enc_boxes, gt_boxes, gt_labels, sizes, meta = head_inputs(head)
    fed = head.sample_fed_classes(gt_labels, generator=torch.Generator().manual_seed(0))
    assert len(fed) == 4 and {1, 6} <= set(fed.tolist()) and 2 not in fed.tolist()  # class 2: no training images
    out = head.losses(classes, boxes, enc_scores, enc_boxes, gt_boxes, gt_labels, sizes, meta, fed)
    cls_keys = [k for k in out if k.endswith("loss_cls")]
    assert len(cls_keys) == 1 + 2 + 2  # encoder, 2 decoder layers, 2 denoising layers
    sum(out[k] for k in cls_keys).backward()
    outside = [c for c in range(K) if c not in fed.tolist()]
    for grad in (classes.grad, enc_scores.grad):
        assert torch.count_nonzero(grad[..., outside]) == 0
        assert torch.count_nonzero(grad[..., fed]) == grad[..., fed].numel()
    # Denoising term of the last layer by hand: group g's positives sit at g * 2 * single_pad + j.
    dn_logits = classes[-1, :, : meta.pad_size].detach()
    dn_labels = torch.full((2, meta.pad_size), K)
    for b, labs in enumerate(gt_labels):
        for grp in range(2):
            dn_labels[b, grp * 4 : grp * 4 + len(labs)] = labs
    ref = focal_reference(dn_logits.flatten(0, 1), dn_labels.flatten(), fed.tolist(), avg=2 * 3)
    assert out["dn_loss_cls"].item() == pytest.approx(ref, rel=1e-6)  # the head sums in float32


def test_off_by_default_and_all_classes_change_nothing():
    head = tiny_head()
    assert head.fed_loss_num_classes == 0 and head.sample_fed_classes([torch.tensor([1])]) is None
    assert "fed_loss_weight" not in head.state_dict()  # released checkpoints still load strictly
    args = head_inputs(head)
    plain = head.losses(*args)
    every = head.losses(*args, fed_classes=torch.arange(K))
    assert plain.keys() == every.keys() and all(torch.equal(plain[k], every[k]) for k in plain)


def test_frequencies_are_required_and_validated():
    head = tiny_head(fed_loss_num_classes=3, fed_loss_freq_weight_power=0.5)
    with pytest.raises(RuntimeError, match="set_class_frequencies"):
        head.sample_fed_classes([torch.tensor([1])])
    with pytest.raises(ValueError, match="8 non-negative"):
        head.set_class_frequencies([1, 2, 3])
    head.set_class_frequencies([4, 9, 16, 25, 36, 49, 64, 81])
    assert torch.allclose(head.fed_loss_weight, torch.arange(2.0, 10.0))


def test_detector_trains_with_the_federated_loss():
    torch.manual_seed(0)
    model = build_dino(
        "internimage_test_32", 6, backbone_overrides=dict(layer_scale=1.0), neck_channels=32, num_queries=12,
        enc_layers=1, dec_layers=1, heads=2, hidden=64, num_dn_queries=4, fed_loss_num_classes=3,
    ).train()  # fmt: skip
    assert model.uses_class_frequencies
    model.set_class_frequencies([10, 10, 10, 10, 10, 10])
    images = [torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)]
    targets = [dict(boxes=torch.tensor([[4.0, 6, 40, 50]]), labels=torch.tensor([2]))]  # class index 1
    losses = model(images, targets)
    sum(losses.values()).backward()
    rows = sum(branch.weight.grad.abs().sum(1) for branch in model.bbox_head.cls_branches)
    used = torch.nonzero(rows).flatten().tolist()
    assert len(used) == 3 and 1 in used  # the GT class and two sampled negatives, shared by every term
