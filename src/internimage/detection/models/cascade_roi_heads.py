"""Cascade Mask R-CNN's RoI heads (Cai & Vasconcelos, 2018) on torchvision ops, as configured for InternImage-L/XL.

:class:`CascadeRoIHeads` is called as torchvision's ``RoIHeads``: ``(FPN maps, per image (P_i, 4) proposals, per
image (H, W), targets) -> (detections, losses)``; detections (eval) hold ``boxes`` (D, 4), ``labels`` (D,) in
1..K, ``scores`` (D,) and ``masks`` (D, 1, 28, 28) RoI probabilities, losses (train) ``s{i}.loss_cls|loss_box|
loss_mask`` per stage i.

Three box stages trained at IoU 0.5/0.6/0.7 with loss weights 1/0.5/0.25; each stage re-samples the boxes the
previous stage regressed. Heads follow the official ``cascade_internimage_*_fpn`` configs (mmdet 2.x
``cascade_roi_head.py``, ``bbox_heads/convfc_bbox_head.py``): ``ConvFCBBoxHead`` with 4 shared 3x3 convs
(BatchNorm; SyncBN under DDP) and 1 shared FC, class-specific regression (``reg_class_agnostic=False``: 4 deltas
per foreground class) trained with GIoU (weight 10) on the decoded boxes of the gt class, target stds 0.1/0.2,
0.05/0.1, 0.033/0.067; one ``FCNMaskHead`` per stage.

Between stages every RoI is refined with the deltas of the class the stage scores highest among the foreground
classes (mmdet's ``regress_by_class``; in training positives use their gt class). At test time the class logits of
the three stages are averaged before the softmax, the last stage gives one box per class, per-class NMS keeps 100
(score > 0.05, IoU 0.5), and the masks are the mean of the three mask heads' sigmoids.

Module names mirror mmdet's (``shared_convs.i.conv``/``.bn``, ``shared_fcs``, ``fc_cls``, ``fc_reg``, ``convs``,
``upsample``, ``conv_logits``) so official checkpoints map by prefix; ``fc_reg`` rows keep mmdet's order (class c of
1..K at rows 4(c-1)..4c-1) and only ``fc_cls`` rows are reordered (mmdet puts background last, we put it first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss

from .box_coding import DeltaXYWHCoder, MaxIoUMatcher, ignored_candidates
from .roi_heads import mask_targets

__all__ = ["DEFAULT_STAGE_STDS", "CascadeRoIHeads", "ConvFCBoxHead", "FCNMaskHead"]

DEFAULT_STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))


class ConvModule(nn.Module):
    """Conv (bias only without norm) -> optional BatchNorm -> ReLU, named like mmcv's ``ConvModule``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(self.bn(x) if self.bn is not None else x)


class ConvFCBoxHead(nn.Module):
    """Shared convs -> shared FCs -> classifier (``num_classes + 1``, background first) and box deltas.

    Args:
        in_channels: Channels of the pooled RoI features.
        roi_size: Side of the pooled RoI features.
        num_classes: Foreground classes.
        num_convs: Shared 3x3 convs (4 in the official L/XL configs, 0 for the classic 2fc head).
        conv_channels: Width of the shared convs.
        num_fcs: Shared FCs.
        fc_dim: Width of the shared FCs.
        norm: BatchNorm after each shared conv.
        reg_class_agnostic: 4 deltas for all classes instead of 4 per foreground class (mmdet's own R-50 Cascade
            configs; the InternImage ones are class-specific).
    """

    def __init__(
        self,
        in_channels: int,
        roi_size: int,
        num_classes: int,
        num_convs: int = 4,
        conv_channels: int = 256,
        num_fcs: int = 1,
        fc_dim: int = 1024,
        norm: bool = True,
        reg_class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        channels = [in_channels] + [conv_channels] * num_convs
        self.shared_convs = nn.ModuleList(ConvModule(a, b, 3, norm) for a, b in zip(channels[:-1], channels[1:]))
        dims = [channels[-1] * roi_size * roi_size] + [fc_dim] * num_fcs
        self.shared_fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.fc_cls = nn.Linear(dims[-1], num_classes + 1)
        self.fc_reg = nn.Linear(dims[-1], 4 if reg_class_agnostic else 4 * num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x: (R, C, S, S) RoI features. Returns: logits (R, num_classes + 1), deltas (R, 4 or 4 K)."""
        for conv in self.shared_convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Module):
    """3x3 convs -> 2x deconv -> per-class 1x1 logits (``num_classes`` maps, no background)."""

    def __init__(self, in_channels: int, num_classes: int, num_convs: int = 4, channels: int = 256) -> None:
        super().__init__()
        dims = [in_channels] + [channels] * num_convs
        self.convs = nn.ModuleList(ConvModule(a, b, 3, norm=False) for a, b in zip(dims[:-1], dims[1:]))
        self.upsample = nn.ConvTranspose2d(dims[-1], channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(channels, num_classes, 1)
        for layer in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (R, C, S, S). Returns: (R, num_classes, 2S, 2S) logits."""
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x)))


class CascadeRoIHeads(nn.Module):
    """The RoI part of Cascade Mask R-CNN, a drop-in for torchvision's ``RoIHeads`` call signature.

    Args:
        box_roi_pool: Pooler for box features (7x7).
        mask_roi_pool: Pooler for mask features (14x14).
        box_heads: One :class:`ConvFCBoxHead` per stage.
        mask_heads: One :class:`FCNMaskHead` per stage, or none for a box-only Cascade R-CNN.
        stage_iou: Foreground IoU of each stage's sampler.
        stage_weights: Loss weight of each stage.
        stage_stds: Delta normalisation of each stage (mmdet ``target_stds``).
        batch_size_per_image: RoIs sampled per image and stage.
        positive_fraction: Foreground share of the sample.
        box_loss: ``'giou'`` on decoded boxes (official L/XL) or ``'smooth_l1'`` on deltas.
        box_loss_weight: Weight of the box loss (10 for GIoU).
        score_thresh: Minimum detection score.
        nms_thresh: Per-class NMS IoU.
        detections_per_img: Detections kept per image.
        ignore_iof_thr: mmdet's ``MaxIoUAssigner(ignore_iof_thr)`` of every stage: RoIs whose IoF with a region of
            ``target["ignore_boxes"]`` exceeds it are neither positive nor negative in that stage's sample (the gt
            boxes added as RoIs never are); -1 (the official configs) ignores nothing.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        mask_roi_pool: nn.Module,
        box_heads: Sequence[ConvFCBoxHead],
        mask_heads: Sequence[FCNMaskHead],
        stage_iou: Sequence[float] = (0.5, 0.6, 0.7),
        stage_weights: Sequence[float] = (1.0, 0.5, 0.25),
        stage_stds: Sequence[Sequence[float]] = DEFAULT_STAGE_STDS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        box_loss: str = "giou",
        box_loss_weight: float = 10.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        ignore_iof_thr: float = -1.0,
    ) -> None:
        super().__init__()
        n = len(box_heads)
        if not (len(mask_heads) in (0, n) and len(stage_iou) == len(stage_weights) == len(stage_stds) == n):
            raise ValueError(f"CascadeRoIHeads: every per-stage setting needs {n} entries, one per box head")
        if box_loss not in ("giou", "smooth_l1"):
            raise ValueError(f"box_loss must be 'giou' or 'smooth_l1', got {box_loss!r}")
        self.box_roi_pool = box_roi_pool
        self.mask_roi_pool = mask_roi_pool
        self.box_heads = nn.ModuleList(box_heads)
        self.mask_heads = nn.ModuleList(mask_heads)
        self.stage_weights = list(stage_weights)
        self.coders = [DeltaXYWHCoder(stds) for stds in stage_stds]
        # mmdet's cascade stages: pos = neg = min_pos IoU, no low-quality matches.
        self.matchers = [MaxIoUMatcher(iou, iou, iou, match_low_quality=False) for iou in stage_iou]
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_loss = box_loss
        self.box_loss_weight = box_loss_weight
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.ignore_iof_thr = ignore_iof_thr

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Args:
            features: FPN maps by name.
            proposals: Per image (P_i, 4) RPN boxes.
            image_shapes: Per image (H, W) before padding.
            targets: Training targets (``boxes``, ``labels``, ``masks``).

        Returns:
            ``(detections, losses)``: detections (eval) with ``boxes``, ``labels``, ``scores``, ``masks``
            (D, 1, 28, 28) probabilities; losses (train) ``s{i}.loss_cls|loss_box|loss_mask``.
        """
        if self.training:
            if targets is None:
                raise ValueError("CascadeRoIHeads needs targets in training mode")
            return [], self._losses(features, proposals, image_shapes, targets)
        return self._detect(features, proposals, image_shapes), {}

    # ------------------------------------------------------------------------------------------- training
    def _sample(self, stage: int, rois: torch.Tensor, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Match RoIs (plus the ground truth, mmdet's ``add_gt_as_proposals``) and draw a balanced sample.

        RoIs on an ignore region (``target["ignore_boxes"]``, IoF > ``ignore_iof_thr``) are left out of the sample;
        the ground truth RoIs never are (mmdet assigns the RoIs alone, then adds the gts as positives).
        """
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        ignore = ignored_candidates(rois, target.get("ignore_boxes"), self.ignore_iof_thr)
        rois = torch.cat([rois, gt_boxes])
        is_gt = torch.zeros(len(rois), dtype=torch.bool, device=rois.device)
        is_gt[len(rois) - len(gt_boxes) :] = True
        if ignore is not None:
            ignore = torch.cat([ignore, ignore.new_zeros(len(gt_boxes))])
        if len(gt_boxes):
            matched = self.matchers[stage](box_iou(gt_boxes, rois), ignore)
            labels = gt_labels[matched.clamp(min=0)].clone()
            labels[matched == MaxIoUMatcher.BELOW_LOW_THRESHOLD] = 0
            # Ignored (only RoIs on an ignore region: pos = neg IoU leaves nothing in between): never sampled.
            labels[matched == MaxIoUMatcher.BETWEEN_THRESHOLDS] = -1
            gt_index = matched.clamp(min=0)
        else:
            labels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
            gt_index = torch.zeros_like(labels)
        pos, neg = self.sampler([labels])
        keep = torch.where(pos[0] | neg[0])[0]
        matched_boxes = gt_boxes[gt_index[keep]] if len(gt_boxes) else torch.zeros_like(rois[keep])
        return {
            "rois": rois[keep],
            "labels": labels[keep],
            "gt_index": gt_index[keep],
            "gt_boxes": matched_boxes,
            "is_gt": is_gt[keep],
        }

    @staticmethod
    def _class_deltas(deltas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: deltas: (R, 4) or (R, 4K); labels: (R,) in 1..K. Returns: (R, 4) the deltas of each RoI's class."""
        if deltas.shape[1] == 4:
            return deltas
        idx = (labels - 1)[:, None] * 4 + torch.arange(4, device=deltas.device)
        return deltas.gather(1, idx)

    def _box_loss(self, stage: int, deltas: torch.Tensor, rois: torch.Tensor, gt: torch.Tensor, num: int):
        """Args: deltas, rois, gt: (P, 4) of the positives (deltas of the gt class); num: sampled RoIs."""
        num = max(num, 1)  # mmdet averages over every sampled RoI, not just the positives
        if self.box_loss == "giou":
            boxes = self.coders[stage].decode_single(deltas, rois)
            return generalized_box_iou_loss(boxes, gt, reduction="sum") * self.box_loss_weight / num
        target = self.coders[stage].encode_single(gt, rois)
        return F.smooth_l1_loss(deltas, target, beta=1.0, reduction="sum") * self.box_loss_weight / num

    def _mask_loss(self, stage: int, features, samples, targets, image_shapes) -> torch.Tensor:
        pos_boxes = [s["rois"][s["labels"] > 0] for s in samples]
        head = self.mask_heads[stage]
        if sum(len(b) for b in pos_boxes) == 0:
            return sum(p.sum() for p in head.parameters()) * 0.0
        logits = head(self.mask_roi_pool(features, pos_boxes, image_shapes))
        size = logits.shape[-1]
        targets_ = []
        for s, t in zip(samples, targets):
            pos = s["labels"] > 0
            if pos.any():
                targets_.append(mask_targets(t["masks"], s["rois"][pos], s["gt_index"][pos], size))
        labels = torch.cat([s["labels"][s["labels"] > 0] for s in samples])
        picked = logits[torch.arange(len(labels), device=labels.device), labels - 1]
        return F.binary_cross_entropy_with_logits(picked, torch.cat(targets_).to(picked.dtype))

    def _losses(self, features, proposals, image_shapes, targets) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        rois = [p.detach() for p in proposals]
        for stage in range(self.num_stages):
            samples = [self._sample(stage, r, t) for r, t in zip(rois, targets)]
            sampled = [s["rois"] for s in samples]
            logits, deltas = self.box_heads[stage](self.box_roi_pool(features, sampled, image_shapes))
            labels = torch.cat([s["labels"] for s in samples])
            all_rois = torch.cat(sampled)
            gt = torch.cat([s["gt_boxes"] for s in samples])
            w = self.stage_weights[stage]
            pos = labels > 0
            pos_deltas = self._class_deltas(deltas[pos], labels[pos])
            losses[f"s{stage}.loss_cls"] = w * F.cross_entropy(logits, labels)
            losses[f"s{stage}.loss_box"] = w * self._box_loss(stage, pos_deltas, all_rois[pos], gt[pos], len(labels))
            if self.mask_heads:
                losses[f"s{stage}.loss_mask"] = w * self._mask_loss(stage, features, samples, targets, image_shapes)
            if stage < self.num_stages - 1:
                with torch.no_grad():
                    # mmdet's refine_bboxes: positives regress with their gt class, the rest with their top class.
                    refine = torch.where(pos, labels, logits[:, 1:].argmax(1) + 1)
                    picked = self._class_deltas(deltas.detach(), refine).split([len(r) for r in sampled])
                    # mmdet drops the ground-truth RoIs before refinement; the next sampler adds them again.
                    rois = [
                        self.coders[stage].decode_single(d[~s["is_gt"]], r[~s["is_gt"]], shape)
                        for d, r, s, shape in zip(picked, sampled, samples, image_shapes)
                    ]
        return losses

    # ------------------------------------------------------------------------------------------- inference
    def _detect(self, features, proposals, image_shapes) -> list[dict[str, torch.Tensor]]:
        rois = list(proposals)
        counts = [len(p) for p in proposals]
        logit_sum = None
        for stage in range(self.num_stages):
            logits, deltas = self.box_heads[stage](self.box_roi_pool(features, rois, image_shapes))
            logit_sum = logits if logit_sum is None else logit_sum + logits
            if stage < self.num_stages - 1:  # mmdet's regress_by_class with the top foreground class
                deltas = self._class_deltas(deltas, logits[:, 1:].argmax(1) + 1)
            coder = self.coders[stage]
            decoded = [coder.decode_single(d, r, s) for d, r, s in zip(deltas.split(counts), rois, image_shapes)]
            if stage < self.num_stages - 1:
                rois = decoded
        # mmdet averages the stages' logits, then takes the softmax (BBoxHead.get_bboxes).
        scores = F.softmax(logit_sum / self.num_stages, -1).split(counts)
        results = [self._postprocess(b, s) for b, s in zip(decoded, scores)]
        if not self.mask_heads:  # Cascade R-CNN (boxes only)
            return results
        det_boxes = [r["boxes"] for r in results]
        if sum(len(b) for b in det_boxes) == 0:
            for r in results:
                r["masks"] = r["boxes"].new_zeros((0, 1, 28, 28))
            return results
        mask_feats = self.mask_roi_pool(features, det_boxes, image_shapes)
        probs = torch.stack([head(mask_feats).sigmoid() for head in self.mask_heads]).mean(0)
        labels = torch.cat([r["labels"] for r in results])
        probs = probs[torch.arange(len(labels), device=labels.device), labels - 1][:, None]
        for r, m in zip(results, probs.split([len(b) for b in det_boxes])):
            r["masks"] = m
        return results

    def _postprocess(self, boxes: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """mmdet's ``multiclass_nms``. Args: boxes (R, 4K) per class or (R, 4) shared, scores (R, K + 1)."""
        num_classes = scores.shape[1] - 1
        scores = scores[:, 1:].reshape(-1)
        labels = torch.arange(1, num_classes + 1, device=boxes.device).repeat(len(boxes))
        boxes = boxes.reshape(len(boxes), boxes.shape[1] // 4, 4).expand(-1, num_classes, 4).reshape(-1, 4)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
