"""The DINO transformer: deformable encoder, two-stage query selection, decoder with look-forward-twice refinement.

Follows the official ``DinoTransformer``/``DinoTransformerDecoder`` (``detection/mmdet_custom/models/utils/
transformer.py``) on mmdet 2.x ``DeformableDetrTransformer`` and mmcv 1.x ``BaseTransformerLayer``:

* Encoder layer (``operation_order=('self_attn', 'norm', 'ffn', 'norm')``): deformable self-attention over all
  levels at the pixel-centre reference points, residual, LN, FFN (Linear-ReLU-Linear, residual), LN.
* Two-stage selection: ``enc_output_norm(enc_output(memory))`` of every valid pixel is scored by the last class
  branch; the top ``num_queries`` pixels (by max class logit) give the initial boxes (last reg branch + the pixel's
  proposal ``(centre, 0.05 * 2**level)`` in logit space), detached; the content queries are ``query_embed``.
* Decoder layer (``('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm')``): self-attention with the
  denoising mask, deformable cross-attention with box references, FFN. The query position is
  ``ref_point_head(sine(reference box))``. After layer l the box is refined by ``reg_branches[l]`` on the
  un-normalised output, and the *undetached* refined box is kept for the head (look forward twice), while the
  next layer gets it detached.

Module names are mmcv's, so ``bbox_head.transformer.*`` of an official checkpoint loads key for key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ....models.layers import FFN  # mmcv's FFN layout, shared with the Mask2Former pixel decoder
from ....ops.ms_deform_attn import MultiScaleDeformableAttention
from .matching import inverse_sigmoid

__all__ = ["DinoTransformer", "coordinate_sine_embedding", "sine_positional_encoding"]


def sine_positional_encoding(
    mask: torch.Tensor, num_feats: int = 128, temperature: float = 20.0, eps: float = 1e-6
) -> torch.Tensor:
    """mmdet ``SinePositionalEncoding(normalize=True)``: cumulative valid-pixel coordinates scaled to 2 pi.

    Args:
        mask: (N, H, W) bool, True on padding.

    Returns:
        (N, 2 * num_feats, H, W): y features then x features, (sin, cos) interleaved.
    """
    not_mask = (~mask).to(torch.float32)
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    y = y / (y[:, -1:, :] + eps) * (2 * math.pi)
    x = x / (x[:, :, -1:] + eps) * (2 * math.pi)
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


def coordinate_sine_embedding(pos: torch.Tensor, dim: int = 256, temperature: float = 10000.0) -> torch.Tensor:
    """``gen_sineembed_for_position``: (..., 4) boxes in [0, 1] -> (..., 4 * dim / 2) in the order y, x, w, h."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=pos.dtype, device=pos.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def embed(v: torch.Tensor) -> torch.Tensor:
        e = v[..., None] * (2 * math.pi) / dim_t
        return torch.stack((e[..., 0::2].sin(), e[..., 1::2].cos()), dim=-1).flatten(-2)

    x, y, w, h = pos.unbind(-1)
    return torch.cat((embed(y), embed(x), embed(w), embed(h)), dim=-1)


class SelfAttention(nn.Module):
    """mmcv ``MultiheadAttention``: ``nn.MultiheadAttention`` under ``attn``; position added to query and key."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = x + pos
        return self.attn(q, q, x, attn_mask=mask, need_weights=False)[0]


class EncoderLayer(nn.Module):
    """Deformable self-attention -> LN -> FFN -> LN (mmcv ``BaseTransformerLayer`` names)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, hidden: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([MultiScaleDeformableAttention(dim, heads, levels, points)])
        self.ffns = nn.ModuleList([FFN(dim, hidden)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x, pos, ref, shapes, padding):
        x = self.norms[0](x + self.attentions[0](x + pos, ref, x, shapes, padding))
        return self.norms[1](self.ffns[0](x))


class DecoderLayer(nn.Module):
    """Self-attention -> LN -> deformable cross-attention -> LN -> FFN -> LN (``DetrTransformerDecoderLayer``)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, hidden: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(
            [SelfAttention(dim, heads), MultiScaleDeformableAttention(dim, heads, levels, points)]
        )
        self.ffns = nn.ModuleList([FFN(dim, hidden)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, q, pos, ref, memory, shapes, padding, attn_mask):
        q = self.norms[0](q + self.attentions[0](q, pos, attn_mask))
        q = self.norms[1](q + self.attentions[1](q + pos, ref, memory, shapes, padding))
        return self.norms[2](self.ffns[0](q))


class Encoder(nn.Module):
    """``DetrTransformerEncoder`` (post-norm layers, so no final norm)."""

    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class Decoder(nn.Module):
    """``DinoTransformerDecoder``: layers, ``ref_point_head`` (2-layer MLP 2C -> C -> C) and the output ``norm``."""

    def __init__(self, layers: list[DecoderLayer], dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.ref_point_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        memory: torch.Tensor,
        shapes: Sequence[tuple[int, int]],
        padding: torch.Tensor | None,
        valid_ratios: torch.Tensor,
        reg_branches: nn.ModuleList,
        attn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            query: (N, Q, C) content queries. reference: (N, Q, 4) boxes in [0, 1].
            memory: (N, S, C). valid_ratios: (N, L, 2).

        Returns:
            ``(normed outputs (layers, N, Q, C), references (layers + 1, N, Q, 4))``: entry 0 is the input box,
            entry l + 1 the box refined after layer l, with its gradient (look forward twice).
        """
        outputs, references = [], [reference]
        ratios = torch.cat((valid_ratios, valid_ratios), -1)[:, None]  # (N, 1, L, 4)
        for lid, layer in enumerate(self.layers):
            ref_input = reference[:, :, None] * ratios
            pos = self.ref_point_head(coordinate_sine_embedding(ref_input[:, :, 0], self.dim))
            query = layer(query, pos, ref_input, memory, shapes, padding, attn_mask)
            refined = (reg_branches[lid](query) + inverse_sigmoid(reference, eps=1e-3)).sigmoid()
            reference = refined.detach()
            outputs.append(self.norm(query))
            references.append(refined)
        return torch.stack(outputs), torch.stack(references)


class DinoTransformer(nn.Module):
    """Encoder + query selection + decoder.

    Args:
        dim: Width (256).
        heads: Attention heads (8).
        levels: Feature levels (4).
        points: Deformable points per head and level (4).
        enc_layers, dec_layers: Layer counts (6, 6).
        hidden: FFN width (2048).
        num_queries: ``two_stage_num_proposals`` (900).
    """

    def __init__(
        self,
        dim: int = 256,
        heads: int = 8,
        levels: int = 4,
        points: int = 4,
        enc_layers: int = 6,
        dec_layers: int = 6,
        hidden: int = 2048,
        num_queries: int = 900,
    ) -> None:
        super().__init__()
        self.dim, self.num_queries, self.num_levels = dim, num_queries, levels
        self.level_embeds = nn.Parameter(torch.empty(levels, dim))
        self.encoder = Encoder([EncoderLayer(dim, heads, levels, points, hidden) for _ in range(enc_layers)])
        self.decoder = Decoder([DecoderLayer(dim, heads, levels, points, hidden) for _ in range(dec_layers)], dim)
        self.enc_output = nn.Linear(dim, dim)
        self.enc_output_norm = nn.LayerNorm(dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DeformableDetrTransformer.init_weights: Xavier on every matrix, then the deformable attention's own init.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embeds)
        nn.init.normal_(self.query_embed.weight)

    @staticmethod
    def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
        """(N, H, W) padding mask -> (N, 2) valid fraction (w, h)."""
        _, h, w = mask.shape
        vh = (~mask[:, :, 0]).sum(1).to(torch.float32) / h
        vw = (~mask[:, 0, :]).sum(1).to(torch.float32) / w
        return torch.stack((vw, vh), -1)

    @staticmethod
    def encoder_reference_points(shapes: Sequence[tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
        """Pixel centres of every level over the valid region, seen from every level: (N, S, L, 2)."""
        refs = []
        for lvl, (h, w) in enumerate(shapes):
            ys = (torch.arange(h, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5)[None] / (
                valid_ratios[:, None, lvl, 1] * h
            )
            xs = (torch.arange(w, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5)[None] / (
                valid_ratios[:, None, lvl, 0] * w
            )
            ref = torch.stack((xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)), -1)
            refs.append(ref.flatten(1, 2))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    def output_proposals(
        self, memory: torch.Tensor, padding: torch.Tensor | None, shapes: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``gen_encoder_output_proposals``: per pixel a (centre, 0.05 * 2**level) box in logit space.

        Returns:
            ``(enc_output_norm(enc_output(memory)) with padded/border pixels zeroed (N, S, C), proposals (N, S, 4)
            with inf at padded pixels and where any coordinate is outside (0.01, 0.99))``.
        """
        n = memory.shape[0]
        props, start = [], 0
        for lvl, (h, w) in enumerate(shapes):
            if padding is None:
                one = memory.new_ones(())
                scale = torch.stack((one * w, one * h)).view(1, 1, 1, 2)
            else:
                m = padding[:, start : start + h * w].view(n, h, w)
                valid = torch.stack(((~m[:, 0, :]).sum(1), (~m[:, :, 0]).sum(1)), -1).to(memory.dtype)
                scale = valid.view(n, 1, 1, 2)
            gy, gx = torch.meshgrid(
                torch.arange(h, dtype=memory.dtype, device=memory.device),
                torch.arange(w, dtype=memory.dtype, device=memory.device),
                indexing="ij",
            )
            grid = (torch.stack((gx, gy), -1)[None] + 0.5) / scale
            wh = torch.full_like(grid, 0.05 * 2.0**lvl)
            props.append(torch.cat((grid.expand(n, -1, -1, -1), wh.expand(n, -1, -1, -1)), -1).view(n, -1, 4))
            start += h * w
        proposals = torch.cat(props, 1)
        keep = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        drop = ~keep if padding is None else (~keep) | padding[..., None]
        proposals = proposals.masked_fill(drop, float("inf"))
        out = memory.masked_fill(drop, 0.0)
        return self.enc_output_norm(self.enc_output(out)), proposals

    def forward(
        self,
        feats: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor] | None,
        pos_embeds: Sequence[torch.Tensor],
        cls_branches: nn.ModuleList,
        reg_branches: nn.ModuleList,
        dn_label_query: torch.Tensor | None = None,
        dn_box_query: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        query_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            feats: L maps (N, C, H_l, W_l), finest first.
            masks: L padding masks (N, H_l, W_l), True on padding; None when no image is padded.
            pos_embeds: L sine encodings (N, C, H_l, W_l).
            cls_branches, reg_branches: The head's ``dec_layers + 1`` branches (the last scores the encoder).
            dn_label_query: (N, pad, C) denoising content queries. dn_box_query: (N, pad, 4) their logit boxes.
            attn_mask: (pad + Q, pad + Q) bool self-attention mask.
            query_index: (N, Q) encoder tokens to take instead of the Q best scored (None: the top-Q).

        Returns:
            ``(hs (layers, N, pad + Q, C), references (layers + 1, N, pad + Q, 4), topk scores (N, Q, K),
            topk anchors (N, Q, 4), the selected encoder tokens (N, Q))``.
        """
        n = feats[0].shape[0]
        shapes = [(f.shape[-2], f.shape[-1]) for f in feats]  # no int(): sizes stay symbolic under torch.export
        tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embeds[i].view(1, 1, -1) for i, p in enumerate(pos_embeds)], 1
        )
        if masks is None:
            padding = None
            ratios = tokens.new_ones(n, len(feats), 2)
        else:
            padding = torch.cat([m.flatten(1) for m in masks], 1)
            ratios = torch.stack([self.valid_ratios(m) for m in masks], 1).to(tokens.dtype)
        ref = self.encoder_reference_points(shapes, ratios)
        memory = tokens
        for layer in self.encoder.layers:
            memory = layer(memory, pos, ref, shapes, padding)

        out_memory, proposals = self.output_proposals(memory, padding, shapes)
        enc_class = cls_branches[len(self.decoder.layers)](out_memory)
        enc_coord = reg_branches[len(self.decoder.layers)](out_memory) + proposals
        # query_index: a given selection (e.g. another runtime's, to compare the rest of the computation with it).
        topk = query_index
        if topk is None:
            topk = torch.topk(enc_class.max(-1).values, self.num_queries, dim=1).indices
        topk_score = torch.gather(enc_class, 1, topk[..., None].expand(-1, -1, enc_class.shape[-1]))
        topk_coord = torch.gather(enc_coord, 1, topk[..., None].expand(-1, -1, 4))
        topk_anchor = topk_coord.sigmoid()
        topk_coord = topk_coord.detach()

        query = self.query_embed.weight[None].expand(n, -1, -1)
        reference = topk_coord
        if dn_label_query is not None:
            query = torch.cat((dn_label_query, query), 1)
        if dn_box_query is not None:
            reference = torch.cat((dn_box_query, reference), 1)
        hs, references = self.decoder(
            query, reference.sigmoid(), memory, shapes, padding, ratios, reg_branches, attn_mask
        )
        return hs, references, topk_score, topk_anchor, topk
