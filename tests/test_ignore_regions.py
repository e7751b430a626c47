"""Ignore regions in training (CrowdHuman's crowds, mannequins, posters): mmdet 2.28's ``MaxIoUAssigner`` with
``gt_bboxes_ignore`` and ``ignore_iof_thr`` in the RPN, the Mask R-CNN RoI head and every Cascade stage."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from internimage.detection.models import build_detector
from internimage.detection.models.box_coding import MaxIoUMatcher, box_iof, ignored_candidates

TINY = dict(
    fpn_channels=32,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=64,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=64,
    box_batch_size_per_image=64,
    backbone_overrides=dict(layer_scale=1.0),
)
#: The CrowdHuman preset's box-only Cascade R-CNN, tiny.
BOX_CASCADE = dict(
    TINY, with_mask=False, head_convs=0, head_fcs=2, head_fc_dim=64, head_norm=False, box_loss="smooth_l1",
    box_loss_weight=1.0, reg_class_agnostic=True,
)  # fmt: skip
MASK_RCNN = dict(TINY, box_fc_dim=64, mask_channels=16, mask_convs=2)
CASCADE = dict(TINY, head_convs=2, head_conv_channels=16, head_fc_dim=64, mask_channels=16, mask_convs=2)


# ----------------------------------------------------------------------------------------- mmdet 2.28's formula
@pytest.fixture
def one_thread():
    """Hundreds of reductions over a few dozen boxes: OpenMP's thread barrier would cost more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mmdet_overlaps(b1: torch.Tensor, b2: torch.Tensor, mode: str = "iou", eps: float = 1e-6) -> torch.Tensor:
    """mmdet 2.28 ``bbox_overlaps(b1, b2, mode)`` (not aligned): (N, M)."""
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[None, :, :2])
    rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - overlap if mode == "iou" else area1[:, None].expand_as(overlap)
    return overlap / torch.max(union, union.new_tensor([eps]))


def ref_max_iou_assign_with_ignore(
    bboxes: torch.Tensor,
    gt_bboxes: torch.Tensor,
    gt_bboxes_ignore: torch.Tensor | None,
    pos_iou_thr: float,
    neg_iou_thr: float,
    min_pos_iou: float,
    match_low_quality: bool,
    ignore_iof_thr: float,
) -> torch.Tensor:
    """mmdet 2.28 ``MaxIoUAssigner.assign`` (``gt_max_assign_all=True``, ``ignore_wrt_candidates=True``), step by
    step. Returns ``gt_inds``: -1 ignored, 0 negative, i + 1 positive of gt i."""
    overlaps = _mmdet_overlaps(gt_bboxes, bboxes)
    if ignore_iof_thr > 0 and gt_bboxes_ignore is not None and gt_bboxes_ignore.numel() > 0 and bboxes.numel() > 0:
        ignore_max_overlaps, _ = _mmdet_overlaps(bboxes, gt_bboxes_ignore, mode="iof").max(dim=1)
        overlaps[:, ignore_max_overlaps > ignore_iof_thr] = -1
    num_gts, num_bboxes = overlaps.shape
    assigned = overlaps.new_full((num_bboxes,), -1, dtype=torch.long)  # 1. everything ignored
    if num_gts == 0 or num_bboxes == 0:
        if num_gts == 0:
            assigned[:] = 0
        return assigned
    max_overlaps, argmax_overlaps = overlaps.max(dim=0)
    gt_max_overlaps, _ = overlaps.max(dim=1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0  # 2. negatives
    pos = max_overlaps >= pos_iou_thr  # 3. positives
    assigned[pos] = argmax_overlaps[pos] + 1
    if match_low_quality:  # 4. each gt takes every candidate at its best IoU, later gts overriding
        for i in range(num_gts):
            if gt_max_overlaps[i] >= min_pos_iou:
                assigned[overlaps[i, :] == gt_max_overlaps[i]] = i + 1
    return assigned


def _ours(bboxes, gt, ignore, pos, neg, min_pos, low_quality, thr) -> torch.Tensor:
    """Our matcher in mmdet's ``gt_inds`` convention (ours: -2 ignored, -1 negative, i positive)."""
    matcher = MaxIoUMatcher(pos, neg, min_pos, match_low_quality=low_quality)
    m = matcher(box_iou(gt, bboxes), ignored_candidates(bboxes, ignore, thr))
    return torch.where(m == -2, torch.full_like(m, -1), m + 1)


def _grid_boxes(g: torch.Generator, n: int, size: int = 48) -> torch.Tensor:
    """Integer-corner boxes (so IoUs and IoFs hit the thresholds exactly), with some exact duplicates (ties)."""
    xy = torch.randint(0, size - 4, (n, 2), generator=g)
    wh = torch.randint(2, 24, (n, 2), generator=g)
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1).double()
    if n > 4:
        boxes[n // 2 : n // 2 + 2] = boxes[:2]
    return boxes


@pytest.mark.parametrize("low_quality", [True, False])
@pytest.mark.parametrize(
    "pos,neg,min_pos", [(0.7, 0.3, 0.3), (0.5, 0.5, 0.5), (0.6, 0.6, 0.6), (0.5, 0.4, 0.0), (0.25, 0.25, 0.25)]
)
def test_matcher_with_ignore_regions_is_mmdet_max_iou_assigner(pos, neg, min_pos, low_quality, one_thread):
    g = torch.Generator().manual_seed(int(pos * 100 + neg * 10 + low_quality))
    cases = 0
    for _ in range(8):
        bboxes = _grid_boxes(g, 80)
        for num_gt in (0, 1, 4):
            gt = _grid_boxes(g, num_gt)
            for num_ign in (0, 1, 3):
                ignore = _grid_boxes(g, num_ign) * 1.3  # larger regions: many candidates fall inside
                for thr in (-1.0, 0.0, 0.3, 0.5, 0.8):
                    expected = ref_max_iou_assign_with_ignore(bboxes, gt, ignore, pos, neg, min_pos, low_quality, thr)
                    got = _ours(bboxes, gt, ignore, pos, neg, min_pos, low_quality, thr)
                    assert torch.equal(got, expected), (num_gt, num_ign, thr)
                    cases += int(num_gt > 0 and num_ign > 0 and thr > 0 and bool((expected == -1).any()))
    assert cases > 20  # the ignore regions did take candidates out


def test_ignored_candidate_is_never_positive_not_even_by_low_quality_matching(one_thread):
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    bboxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # the gt itself (IoU 1), but entirely inside the ignore region
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 with the gt, IoF exactly 0.5: not ignored (strictly greater)
            [30.0, 30.0, 40.0, 40.0],  # background, inside the ignore region: ignored, not negative
            [50.0, 50.0, 60.0, 60.0],  # background elsewhere: negative
        ],
        dtype=torch.float64,
    )
    ignore = torch.tensor([[0.0, 0.0, 45.0, 10.0], [25.0, 25.0, 45.0, 45.0]], dtype=torch.float64)
    assert box_iof(bboxes, ignore).max(1).values.tolist() == [1.0, 0.5, 1.0, 0.0]
    for low_quality in (True, False):
        got = _ours(bboxes, gt, ignore, 0.7, 0.3, 0.3, low_quality, 0.5)
        # The gt's low-quality match is its best candidate outside the ignore regions (IoU 0.5 >= min_pos_iou).
        assert got.tolist() == ([-1, 1, -1, 0] if low_quality else [-1, -1, -1, 0])
        ref = ref_max_iou_assign_with_ignore(bboxes, gt, ignore, 0.7, 0.3, 0.3, low_quality, 0.5)
        assert torch.equal(got, ref)
    # Without gts mmdet returns before the ignore step: everything is negative.
    assert _ours(bboxes, gt[:0], ignore, 0.7, 0.3, 0.3, True, 0.5).tolist() == [0, 0, 0, 0]
    # Switched off (the official configs' -1) or no regions: the plain assignment.
    plain = _ours(bboxes, gt, None, 0.7, 0.3, 0.3, True, -1.0)
    assert plain.tolist() == [1, -1, 0, 0]  # IoU 0.5: between the thresholds, no low-quality match (the gt has 1.0)
    assert torch.equal(_ours(bboxes, gt, ignore, 0.7, 0.3, 0.3, True, -1.0), plain)
    assert torch.equal(_ours(bboxes, gt, ignore[:0], 0.7, 0.3, 0.3, True, 0.5), plain)


def test_box_iof_is_mmdet_bbox_overlaps_iof(one_thread):
    g = torch.Generator().manual_seed(0)
    a, b = _grid_boxes(g, 30), _grid_boxes(g, 7)
    a[0, 2:] = a[0, :2]  # an empty box: IoF 0, not a division by zero
    torch.testing.assert_close(box_iof(a, b), _mmdet_overlaps(a, b, "iof"), rtol=0, atol=0)
    assert box_iof(a, b)[0].eq(0).all()


# ------------------------------------------------------------------------------------------- in the detectors
IMAGE = 96
GT = torch.tensor([[60.0, 16.0, 92.0, 80.0]])  # right half
IGNORE = torch.tensor([[0.0, 0.0, 48.0, 96.0]])  # the left half: a crowd


def _images_and_targets(with_masks: bool, ignore: torch.Tensor | None = IGNORE):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, IMAGE, IMAGE, generator=g) for _ in range(2)]
    targets = []
    for _ in images:
        t = {"boxes": GT.clone(), "labels": torch.tensor([1])}
        if with_masks:
            masks = torch.zeros(1, IMAGE, IMAGE, dtype=torch.uint8)
            masks[0, 16:80, 60:92] = 1
            t["masks"] = masks
        if ignore is not None:
            t["ignore_boxes"] = ignore.clone()
        targets.append(t)
    return images, targets


def _spy(obj, name: str, record: list):
    """Wrap ``obj.name`` so every call's arguments and result are appended to ``record``."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        record.append((args, out))
        return out

    setattr(obj, name, wrapper)


def _on_ignore(boxes: torch.Tensor) -> torch.Tensor:
    return box_iof(boxes, IGNORE.to(boxes)).max(1).values > 0.5


@pytest.mark.parametrize("arch,kwargs", [("cascade_mask_rcnn", BOX_CASCADE), ("mask_rcnn", MASK_RCNN)])
def test_sampled_negatives_avoid_ignore_regions_only_when_enabled(arch, kwargs):
    on_ignore_negatives = {}
    for thr in (0.5, -1.0):
        torch.manual_seed(0)
        model = build_detector(arch, "internimage_test_32", 1, ignore_iof_thr=thr, **kwargs)
        rpn_calls, roi_calls = [], []
        _spy(model.rpn, "assign_targets_to_anchors", rpn_calls)
        if arch == "mask_rcnn":
            _spy(model.roi_heads, "select_training_samples", roi_calls)
        else:
            _spy(model.roi_heads, "_sample", roi_calls)
        images, targets = _images_and_targets(with_masks=arch == "mask_rcnn")
        torch.manual_seed(1)
        model(images, targets)

        # RPN: the anchors the sampler draws from (label 0) and those it drew.
        ((anchors, _), (labels, _)) = rpn_calls[0]
        counts = {"rpn_all": 0, "rpn_sampled": 0, "roi": 0}
        pos, neg = ([m.bool() for m in ms] for ms in model.rpn.fg_bg_sampler(labels))
        for a, lab, n, p in zip(anchors, labels, neg, pos):
            counts["rpn_all"] += int(_on_ignore(a[lab == 0]).sum())
            counts["rpn_sampled"] += int(_on_ignore(a[n]).sum())
            if thr > 0:  # nothing on a region is sampled at all, positives included
                assert not _on_ignore(a[p | n]).any()
        # RoI heads: the sampled RoIs (gt boxes added as RoIs aside) labelled background.
        if arch == "mask_rcnn":
            (_, (rois, _, roi_labels, _)) = roi_calls[0]
            samples = [(r, lab, torch.zeros_like(lab, dtype=torch.bool)) for r, lab in zip(rois, roi_labels)]
        else:
            assert len(roi_calls) == 2 * 3  # two images, three stages
            samples = [(s["rois"], s["labels"], s["is_gt"]) for _, s in roi_calls]
        for rois, lab, is_gt in samples:
            counts["roi"] += int(_on_ignore(rois[(lab == 0) & ~is_gt]).sum())
            if thr > 0:
                assert not _on_ignore(rois[~is_gt]).any()
        on_ignore_negatives[thr] = counts
    assert on_ignore_negatives[0.5] == {"rpn_all": 0, "rpn_sampled": 0, "roi": 0}
    assert all(v > 0 for v in on_ignore_negatives[-1.0].values()), on_ignore_negatives


def test_gt_boxes_added_as_rois_stay_positive_inside_an_ignore_region():
    """mmdet assigns the proposals, then adds the gts as positives: a gt inside an ignore region still trains."""
    gt = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    target = {"boxes": gt, "labels": torch.tensor([1]), "ignore_boxes": torch.tensor([[0.0, 0.0, 48.0, 96.0]])}
    rois = torch.tensor([[10.0, 10.0, 30.0, 40.0], [11.0, 10.0, 30.0, 40.0], [60.0, 60.0, 90.0, 90.0]])
    torch.manual_seed(0)
    model = build_detector("cascade_mask_rcnn", "internimage_test_32", 1, ignore_iof_thr=0.5, **BOX_CASCADE)
    s = model.roi_heads._sample(0, rois, target)
    assert s["is_gt"].sum() == 1 and s["labels"][s["is_gt"]].tolist() == [1]
    assert s["labels"][~s["is_gt"]].tolist() == [0]  # the two proposals on the region are gone, the far one stays
    assert s["rois"][~s["is_gt"]].tolist() == [[60.0, 60.0, 90.0, 90.0]]

    masks = torch.zeros(1, 96, 96, dtype=torch.uint8)
    model = build_detector("mask_rcnn", "internimage_test_32", 1, ignore_iof_thr=0.5, **MASK_RCNN)
    props, _, labels, _ = model.roi_heads.select_training_samples([rois], [dict(target, masks=masks)])
    order = props[0][:, 0].argsort()
    assert props[0][order].tolist() == [[10.0, 10.0, 30.0, 40.0], [60.0, 60.0, 90.0, 90.0]]
    assert labels[0][order].tolist() == [1, 0]


def test_box_only_cascade_trains_a_step_with_ignore_regions():
    torch.manual_seed(0)
    model = build_detector("cascade_mask_rcnn", "internimage_test_32", 1, ignore_iof_thr=0.5, **BOX_CASCADE)
    images, targets = _images_and_targets(with_masks=False)
    targets[1]["ignore_boxes"] = torch.zeros(0, 4)  # an image without ignore regions in the same batch
    torch.manual_seed(1)
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"} | {
        f"s{i}.{k}" for i in range(3) for k in ("loss_cls", "loss_box")
    }
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # The ignore regions did change what trained: the same step without them gives other losses.
    torch.manual_seed(0)
    plain = build_detector("cascade_mask_rcnn", "internimage_test_32", 1, ignore_iof_thr=-1.0, **BOX_CASCADE)
    torch.manual_seed(1)
    plain_losses = plain(*_images_and_targets(with_masks=False))
    assert plain_losses["loss_objectness"].item() != losses["loss_objectness"].item()


@pytest.mark.parametrize("arch,kwargs", [("mask_rcnn", MASK_RCNN), ("cascade_mask_rcnn", CASCADE)])
def test_coco_path_is_unchanged_when_ignore_is_off_or_there_are_no_regions(arch, kwargs):
    """The official COCO configs (ignore_iof_thr=-1), or images without regions: the same losses as a build
    without the argument on targets without ``ignore_boxes``, to the bit."""

    def losses(ignore, **extra):
        torch.manual_seed(0)
        model = build_detector(arch, "internimage_test_32", 1, **kwargs, **extra)
        images, targets = _images_and_targets(with_masks=True, ignore=ignore)
        torch.manual_seed(1)
        return {k: v.item() for k, v in model(images, targets).items()}

    reference = losses(None)
    assert losses(IGNORE, ignore_iof_thr=-1.0) == reference
    assert losses(torch.zeros(0, 4), ignore_iof_thr=0.5) == reference
    assert losses(IGNORE, ignore_iof_thr=0.5) != reference
