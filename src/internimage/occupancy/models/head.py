"""BEVFormerOccHead: learnt BEV queries and positions, the occupancy transformer, the voxel loss and argmax.

Names follow the official ``BEVFormerOccHead`` (``bev_embedding``, ``positional_encoding.row_embed``/``col_embed``,
``transformer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import TransformerOcc

__all__ = ["BEVFormerOccHead", "LearnedPositionalEncoding"]


class LearnedPositionalEncoding(nn.Module):
    """mmdet's learnt 2D position: a column embedding and a row embedding concatenated on channels.

    Args:
        num_feats: Channels of each half (the output has ``2 * num_feats``).
        row_num_embed: Rows embedded (>= map height).
        col_num_embed: Columns embedded (>= map width).
    """

    def __init__(self, num_feats: int, row_num_embed: int = 50, col_num_embed: int = 50) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(row_num_embed, num_feats)
        self.col_embed = nn.Embedding(col_num_embed, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, n: int, h: int, w: int) -> torch.Tensor:
        """Positions of an (h, w) map.

        Returns:
            (n, 2 * num_feats, h, w): channels ``[:num_feats]`` from the column, the rest from the row.
        """
        x = self.col_embed.weight[:w]
        y = self.row_embed.weight[:h]
        pos = torch.cat((x[None].expand(h, w, -1), y[:, None].expand(h, w, -1)), -1)
        return pos.permute(2, 0, 1)[None].expand(n, -1, -1, -1)


class BEVFormerOccHead(nn.Module):
    """The occupancy head.

    Args:
        transformer: The :class:`~internimage.occupancy.models.transformer.TransformerOcc`.
        bev_h: BEV rows.
        bev_w: BEV columns.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) metres.
        num_classes: Occupancy classes (18 on Occ3D-nuScenes, 17 = free).
        use_mask: Average the loss over the voxels of ``mask_camera`` only (the released config: False).
        loss_weight: Scale of the cross-entropy.
    """

    def __init__(
        self,
        transformer: TransformerOcc,
        bev_h: int = 200,
        bev_w: int = 200,
        pc_range: Sequence[float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
        num_classes: int = 18,
        use_mask: bool = False,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.bev_h, self.bev_w, self.num_classes = bev_h, bev_w, num_classes
        self.use_mask, self.loss_weight = use_mask, loss_weight
        self.pc_range = tuple(float(v) for v in pc_range)
        self.real_w = self.pc_range[3] - self.pc_range[0]
        self.real_h = self.pc_range[4] - self.pc_range[1]
        self.transformer = transformer
        self.embed_dims = transformer.embed_dims
        self.positional_encoding = LearnedPositionalEncoding(self.embed_dims // 2, bev_h, bev_w)
        self.bev_embedding = nn.Embedding(bev_h * bev_w, self.embed_dims)

    def forward(
        self,
        mlvl_feats: Sequence[torch.Tensor],
        lidar2img: torch.Tensor,
        can_bus: torch.Tensor,
        img_shape: tuple[int, int],
        ego2lidar: torch.Tensor | None = None,
        prev_bev: torch.Tensor | None = None,
        only_bev: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """BEV features (``only_bev``) or BEV features and occupancy logits.

        Args:
            mlvl_feats: Per level (N, num_cams, C, h, w).
            lidar2img: (N, num_cams, 4, 4).
            can_bus: (N, 18) relative CAN bus.
            img_shape: (height, width) normalising projected pixels.
            ego2lidar: (N, 4, 4) / (4, 4) or None.
            prev_bev: (N, bev_h * bev_w, C) or None.
            only_bev: Return the BEV only.

        Returns:
            (N, bev_h * bev_w, C) if ``only_bev``, else ``{'bev_embed': (N, Q, C), 'occ': (N, X, Y, Z, classes)}``.
        """
        n = mlvl_feats[0].shape[0]
        dtype = mlvl_feats[0].dtype
        queries = self.bev_embedding.weight.to(dtype)
        bev_pos = self.positional_encoding(n, self.bev_h, self.bev_w).to(dtype).flatten(2).transpose(1, 2)
        args = (mlvl_feats, queries, self.bev_h, self.bev_w, (self.real_h / self.bev_h, self.real_w / self.bev_w))
        kwargs = dict(
            bev_pos=bev_pos,
            can_bus=can_bus,
            lidar2img=lidar2img,
            img_shape=img_shape,
            ego2lidar=ego2lidar,
            prev_bev=prev_bev,
        )
        if only_bev:
            return self.transformer.get_bev_features(*args, **kwargs)
        bev, occ = self.transformer(*args, **kwargs)
        return {"bev_embed": bev, "occ": occ}

    def loss(
        self, voxel_semantics: torch.Tensor, mask_camera: torch.Tensor | None, preds: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy over voxels.

        Args:
            voxel_semantics: (N, X, Y, Z) integer labels in ``[0, num_classes)``.
            mask_camera: (N, X, Y, Z) voxels visible from the cameras (used when ``use_mask``).
            preds: :meth:`forward` output.

        Returns:
            ``{'loss_occ': scalar}``: the mean over all voxels, or with ``use_mask`` the sum over the masked voxels
            divided by their count (mmdet's ``avg_factor``).
        """
        logits = preds["occ"].float()
        if voxel_semantics.shape != logits.shape[:-1]:
            raise ValueError(f"voxel_semantics must be {tuple(logits.shape[:-1])}, got {tuple(voxel_semantics.shape)}")
        labels = voxel_semantics.long().reshape(-1)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"voxel_semantics must lie in [0, {self.num_classes - 1}]")
        logits = logits.reshape(-1, self.num_classes)
        if self.use_mask:
            if mask_camera is None or mask_camera.shape != voxel_semantics.shape:
                raise ValueError(f"use_mask needs mask_camera of shape {tuple(voxel_semantics.shape)}")
            weight = mask_camera.reshape(-1).to(logits.dtype)
            per_voxel = F.cross_entropy(logits, labels, reduction="none")
            loss = (per_voxel * weight).sum() / (weight.sum() + torch.finfo(torch.float32).eps)
        else:
            loss = F.cross_entropy(logits, labels)
        return {"loss_occ": loss * self.loss_weight}

    @staticmethod
    def get_occ(preds: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, X, Y, Z) predicted class per voxel (argmax of the logits, which is the original's argmax of the
        softmax)."""
        return preds["occ"].argmax(-1)
