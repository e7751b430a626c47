"""Mask2Former head for semantic segmentation.

Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation" (CVPR 2022), as configured by
the official ``mask2former_internimage_h_896_80k_cocostuff2ade20k`` (mmdet 2.x ``Mask2FormerHead``): a
multi-scale deformable-attention pixel decoder over the stride 8/16/32 maps (6 layers, 3 levels, 4 points) with an
FPN step to stride 4; a transformer decoder of 9 layers (masked cross-attention -> self-attention -> FFN, each
followed by LayerNorm) over learnable queries, cycling through the three scales; class + mask predictions after
every layer (deep supervision). Training matches queries to the classes present in each image with the Hungarian
algorithm on point-sampled costs (2 x class, 5 x mask BCE, 5 x dice) and uses the same weights for the losses,
with 0.1 weight on the "no object" class. Semantic inference: ``softmax(class)[:K] x sigmoid(mask)`` summed over
queries. Loss points are drawn uniformly (the original oversamples 3x and keeps the 75 % most uncertain points).

Module names are those of the original (mmcv ``ConvModule``/``BaseTransformerLayer``/``FFN``/``MultiheadAttention``
containers), so an official ``decode_head.*`` state dict loads key for key. Deformable attention is the shared
:class:`~internimage.ops.ms_deform_attn.MultiScaleDeformableAttention` (pure PyTorch, ``grid_sample``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...models.layers import FFN
from ...ops.ms_deform_attn import MultiScaleDeformableAttention

__all__ = ["Mask2FormerHead", "MSDeformAttn", "hungarian_match", "semantic_targets"]


# --------------------------------------------------------------------------------------------- building blocks
def sine_position_encoding(n: int, h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """DETR sine encoding, normalised coordinates (``num_feats = dim / 2``). Returns (n, dim, h, w)."""
    half = dim // 2
    y = (torch.arange(h, device=device, dtype=torch.float32) + 1) / (h + 1e-6) * 2 * math.pi
    x = (torch.arange(w, device=device, dtype=torch.float32) + 1) / (w + 1e-6) * 2 * math.pi
    t = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)
    px, py = x[:, None] / t, y[:, None] / t
    px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)  # (w, half)
    py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)  # (h, half)
    pos = torch.cat((py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)), dim=2)
    return pos.permute(2, 0, 1)[None].expand(n, -1, -1, -1)


# The shared operator (``internimage.ops.ms_deform_attn``); the old name stays for existing imports.
MSDeformAttn = MultiScaleDeformableAttention


class EncoderLayer(nn.Module):
    """Deformable self-attention -> LN -> FFN -> LN (mmcv ``BaseTransformerLayer`` names)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, hidden: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([MSDeformAttn(dim, heads, levels, points)])
        self.ffns = nn.ModuleList([FFN(dim, hidden)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes: list[tuple[int, int]]):
        x = self.norms[0](x + self.attentions[0](x + pos, ref, x, shapes))
        return self.norms[1](self.ffns[0](x))


class _Layers(nn.Module):
    """A ``layers`` list (+ optional ``post_norm``), the container mmcv's transformer sequences use."""

    def __init__(self, layers: list[nn.Module], post_norm_dim: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if post_norm_dim is not None:
            self.post_norm = nn.LayerNorm(post_norm_dim)


class ConvGN(nn.Module):
    """Conv -> GroupNorm(32) (-> ReLU), named ``conv``/``gn`` like mmcv's ``ConvModule``."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
        self.gn = nn.GroupNorm(32, cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.conv(x))
        return F.relu(x, inplace=True) if self.relu else x


class PixelDecoder(nn.Module):
    """Deformable-attention encoder over the three coarsest maps, then an FPN step to stride 4.

    Args:
        in_channels: Backbone channels, finest first (4 maps).
        dim: Decoder width (must be a multiple of 32 for GroupNorm).
        layers: Encoder layers.
        heads, points: Deformable attention heads and points.
        hidden: FFN width.
    """

    def __init__(
        self, in_channels: Sequence[int], dim: int, layers: int = 6, heads: int = 8, points: int = 4, hidden: int = 1024
    ) -> None:
        super().__init__()
        self.dim = dim
        coarse = list(in_channels[1:])[::-1]  # strides 32, 16, 8
        self.input_convs = nn.ModuleList(ConvGN(c, dim, 1, bias=True, relu=False) for c in coarse)
        self.level_encoding = nn.Embedding(len(coarse), dim)
        self.encoder = _Layers([EncoderLayer(dim, heads, len(coarse), points, hidden) for _ in range(layers)])
        self.lateral_convs = nn.ModuleList([ConvGN(in_channels[0], dim, 1, bias=False, relu=False)])
        self.output_convs = nn.ModuleList([ConvGN(dim, dim, 3, bias=False, relu=True)])
        self.mask_feature = nn.Conv2d(dim, dim, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Args: feats: 4 maps, finest first. Returns: mask features (N, dim, H/4, W/4), maps at strides 32/16/8."""
        maps = [conv(f) for conv, f in zip(self.input_convs, feats[1:][::-1])]
        n = maps[0].shape[0]
        shapes = [tuple(m.shape[-2:]) for m in maps]
        tokens, pos, refs = [], [], []
        for i, m in enumerate(maps):
            h, w = m.shape[-2:]
            tokens.append(m.flatten(2).transpose(1, 2))
            enc = sine_position_encoding(n, h, w, self.dim, m.device).to(m.dtype)
            pos.append(enc.flatten(2).transpose(1, 2) + self.level_encoding.weight[i])
            ys, xs = torch.meshgrid(
                (torch.arange(h, device=m.device, dtype=m.dtype) + 0.5) / h,
                (torch.arange(w, device=m.device, dtype=m.dtype) + 0.5) / w,
                indexing="ij",
            )
            refs.append(torch.stack((xs, ys), -1).view(1, -1, 2).expand(n, -1, -1))
        x, pos_all, ref = torch.cat(tokens, 1), torch.cat(pos, 1), torch.cat(refs, 1)
        for layer in self.encoder.layers:
            x = layer(x, pos_all, ref, shapes)
        outs, start = [], 0
        for h, w in shapes:
            outs.append(x[:, start : start + h * w].transpose(1, 2).reshape(n, self.dim, h, w))
            start += h * w
        fine = self.lateral_convs[0](feats[0])
        fine = self.output_convs[0](fine + F.interpolate(outs[-1], size=fine.shape[-2:], mode="bilinear"))
        return self.mask_feature(fine), outs


class _MHA(nn.Module):
    """``nn.MultiheadAttention`` under ``attn`` (mmcv's ``MultiheadAttention`` wrapper names)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, q, k, v, mask=None):
        return self.attn(q, k, v, attn_mask=mask, need_weights=False)[0]


class DecoderLayer(nn.Module):
    """Masked cross-attention -> LN -> self-attention -> LN -> FFN -> LN (mmcv names)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([_MHA(dim, heads), _MHA(dim, heads)])
        self.ffns = nn.ModuleList([FFN(dim, hidden)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, q: torch.Tensor, qpos: torch.Tensor, mem: torch.Tensor, mpos: torch.Tensor, mask: torch.Tensor):
        q = self.norms[0](q + self.attentions[0](q + qpos, mem + mpos, mem, mask))
        q = self.norms[1](q + self.attentions[1](q + qpos, q + qpos, q))
        return self.norms[2](self.ffns[0](q))


class Mask2FormerHead(nn.Module):
    """Mask2Former decode head: pixel decoder + masked-attention transformer decoder + set-prediction losses.

    Args:
        in_channels: Backbone channels, finest first.
        num_classes: K (the head predicts K + 1 with "no object").
        dim: Width of pixel decoder, queries and mask embeddings (1024 for InternImage-H; multiple of 32).
        num_queries: Learnable queries (200 for InternImage-H).
        enc_layers, dec_layers: Pixel-decoder encoder layers (6) and transformer decoder layers (9).
        heads: Attention heads of both (32 for InternImage-H).
        hidden: FFN width (4096 for InternImage-H).
        num_points: Points sampled per mask for matching and losses (12544 = 112 x 112 officially).
        no_object_weight: Class weight of "no object" (0.1).
        class_weight, mask_weight, dice_weight: Loss and matching-cost weights (2, 5, 5).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        dim: int = 256,
        num_queries: int = 100,
        enc_layers: int = 6,
        dec_layers: int = 9,
        heads: int = 8,
        hidden: int = 1024,
        num_points: int = 12544,
        no_object_weight: float = 0.1,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_points = num_points
        self.weights = (class_weight, mask_weight, dice_weight)
        self.pixel_decoder = PixelDecoder(in_channels, dim, enc_layers, heads, 4, hidden)
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(3, dim)
        self.num_heads = heads
        self.transformer_decoder = _Layers([DecoderLayer(dim, heads, hidden) for _ in range(dec_layers)], dim)
        self.cls_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)
        )
        self.register_buffer("class_weights", torch.tensor([1.0] * num_classes + [no_object_weight]), persistent=False)

    def _predict(self, q: torch.Tensor, mask_feats: torch.Tensor, size: tuple[int, int]):
        q = self.transformer_decoder.post_norm(q)
        cls = self.cls_embed(q)
        masks = torch.einsum("nqc,nchw->nqhw", self.mask_embed(q), mask_feats)
        # Attention mask for the next layer: a query only sees where its current mask is on (True = blocked).
        attn = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).flatten(2).sigmoid() < 0.5
        attn[attn.all(-1)] = False  # an empty mask would block everything; let that query see the whole map
        return cls, masks, attn.repeat_interleave(self.num_heads, 0).detach()

    def forward_predictions(self, feats: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Class logits (N, Q, K+1) and mask logits (N, Q, H/4, W/4) before the first and after every layer."""
        mask_feats, maps = self.pixel_decoder(feats)
        n = mask_feats.shape[0]
        mems, mpos, sizes = [], [], []
        for i, m in enumerate(maps):
            h, w = m.shape[-2:]
            sizes.append((h, w))
            mems.append(m.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            mpos.append(sine_position_encoding(n, h, w, m.shape[1], m.device).to(m.dtype).flatten(2).transpose(1, 2))
        q = self.query_feat.weight[None].expand(n, -1, -1)
        qpos = self.query_embed.weight[None].expand(n, -1, -1)
        cls, masks, attn = self._predict(q, mask_feats, sizes[0])
        outputs = [(cls, masks)]
        for i, layer in enumerate(self.transformer_decoder.layers):
            lvl = i % len(maps)
            q = layer(q, qpos, mems[lvl], mpos[lvl], attn)
            cls, masks, attn = self._predict(q, mask_feats, sizes[(i + 1) % len(maps)])
            outputs.append((cls, masks))
        return outputs

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Semantic scores (N, K, H/4, W/4): ``sum_q softmax(cls_q)[k] * sigmoid(mask_q)``."""
        cls, masks = self.forward_predictions(feats)[-1]
        return torch.einsum("nqk,nqhw->nkhw", cls.softmax(-1)[..., :-1], masks.sigmoid())

    # ------------------------------------------------------------------------------------------ training
    def loss(self, feats: Sequence[torch.Tensor], labels: torch.Tensor, ignore_index: int = 255) -> dict:
        """Set-prediction losses summed over all decoder outputs.

        Args:
            feats: Backbone maps.
            labels: (N, H, W) semantic labels.
            ignore_index: Unlabelled value.

        Returns:
            ``loss_cls``, ``loss_mask``, ``loss_dice`` (weighted) and their sum ``loss_decode``.
        """
        outputs = self.forward_predictions(feats)
        targets = [semantic_targets(lab, self.num_classes, ignore_index) for lab in labels]
        num_masks = max(sum(len(t[0]) for t in targets), 1)
        totals = {"loss_cls": 0.0, "loss_mask": 0.0, "loss_dice": 0.0}
        for cls, masks in outputs:
            for key, value in self._losses(cls, masks, targets, num_masks).items():
                totals[key] = totals[key] + value
        totals["loss_decode"] = totals["loss_cls"] + totals["loss_mask"] + totals["loss_dice"]
        return totals

    def _losses(self, cls, masks, targets, num_masks) -> dict[str, torch.Tensor]:
        wc, wm, wd = self.weights
        target_cls = torch.full(cls.shape[:2], self.num_classes, dtype=torch.long, device=cls.device)
        src, tgt = [], []
        for b, (gt_cls, gt_masks) in enumerate(targets):
            if len(gt_cls) == 0:
                continue
            qi, ti = hungarian_match(cls[b], masks[b], gt_cls, gt_masks, self.num_points, self.weights)
            target_cls[b, qi] = gt_cls[ti]
            src.append(masks[b, qi])
            tgt.append(gt_masks[ti])
        loss_cls = wc * F.cross_entropy(cls.transpose(1, 2).float(), target_cls, weight=self.class_weights)
        if not src:
            zero = masks.sum() * 0.0
            return {"loss_cls": loss_cls, "loss_mask": zero, "loss_dice": zero}
        pred = torch.cat(src)[:, None]  # (M, 1, h, w) at stride 4
        gt = torch.cat(tgt)[:, None].float()  # (M, 1, H, W)
        points = torch.rand(pred.shape[0], self.num_points, 1, 2, device=pred.device) * 2 - 1
        p = F.grid_sample(pred.float(), points, align_corners=False).flatten(1)
        t = F.grid_sample(gt, points, mode="nearest", align_corners=False).flatten(1)
        bce = F.binary_cross_entropy_with_logits(p, t, reduction="none").mean(1).sum() / num_masks
        s = p.sigmoid()
        dice = (1 - (2 * (s * t).sum(1) + 1) / (s.sum(1) + t.sum(1) + 1)).sum() / num_masks
        return {"loss_cls": loss_cls, "loss_mask": wm * bce, "loss_dice": wd * dice}


def semantic_targets(label: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """Per-image set targets from a semantic map: the classes present and one binary mask each.

    Args:
        label: (H, W) class ids.

    Returns:
        ``(classes (M,), masks (M, H, W) bool)``; ignored pixels belong to no mask.
    """
    classes = torch.unique(label)
    classes = classes[(classes != ignore_index) & (classes < num_classes)]
    return classes, label[None] == classes[:, None, None]


@torch.no_grad()
def hungarian_match(
    cls: torch.Tensor,
    masks: torch.Tensor,
    gt_cls: torch.Tensor,
    gt_masks: torch.Tensor,
    num_points: int,
    weights: Sequence[float] = (2.0, 5.0, 5.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment of queries to ground-truth masks of one image.

    Cost = w_cls * (-p(class)) + w_mask * BCE + w_dice * dice, the mask terms on ``num_points`` random points
    shared by every pair.

    Args:
        cls: (Q, K+1) class logits.
        masks: (Q, h, w) mask logits.
        gt_cls: (M,) classes.
        gt_masks: (M, H, W) binary masks.
        num_points: Sampled points.
        weights: Class, mask and dice weights.

    Returns:
        ``(query indices, target indices)``, each (min(Q, M),).
    """
    from scipy.optimize import linear_sum_assignment

    wc, wm, wd = weights
    cost_cls = -cls.float().softmax(-1)[:, gt_cls]  # (Q, M)
    points = torch.rand(1, num_points, 1, 2, device=masks.device) * 2 - 1
    p = F.grid_sample(masks[None].float(), points, align_corners=False).view(masks.shape[0], -1)  # (Q, P)
    t = F.grid_sample(gt_masks[None].float(), points, mode="nearest", align_corners=False).view(len(gt_cls), -1)
    pos = F.binary_cross_entropy_with_logits(p, torch.ones_like(p), reduction="none")
    neg = F.binary_cross_entropy_with_logits(p, torch.zeros_like(p), reduction="none")
    cost_mask = (pos @ t.T + neg @ (1 - t).T) / num_points
    s = p.sigmoid()
    cost_dice = 1 - (2 * s @ t.T + 1) / (s.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)
    cost = (wc * cost_cls + wm * cost_mask + wd * cost_dice).cpu()
    qi, ti = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(qi, device=cls.device), torch.as_tensor(ti, device=cls.device)
