"""TransformerOcc: BEV features from cameras (BEVFormer encoder) and the occupancy decoder on top of them.

Before encoding, the previous BEV is aligned to the current ego pose: rotated by the yaw change about the BEV
centre (``rotate_prev_bev``) while the translation becomes a shift of the temporal-attention reference points
(``use_shift``); the CAN-bus vector is embedded and added to every BEV query. After encoding, the BEV channels are
unfolded into ``pillar_h`` height cells and decoded into per-voxel class logits. Names follow the official
``TransformerOcc`` (``level_embeds``, ``cams_embeds``, ``can_bus_mlp``, ``decoder``, ``predicter``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import BEVFormerEncoder

__all__ = ["TransformerOcc", "bev_shift", "rotate_bev"]

#: Length of the CAN-bus vector: translation (3), rotation quaternion (4), acceleration, rotation rate,
#: velocity (3 each), patch angle in radians, patch angle (or its change) in degrees.
CAN_BUS_DIMS = 18


def bev_shift(
    can_bus: torch.Tensor, grid_length: tuple[float, float], bev_h: int, bev_w: int, use_shift: bool = True
) -> torch.Tensor:
    """Ego translation since the previous frame as a shift of normalised BEV coordinates.

    The translation ``can_bus[:, :2]`` (global frame, metres) is expressed in the BEV axes using the current yaw
    ``can_bus[:, -2]`` (radians) and divided by the BEV extent, as the original does.

    Args:
        can_bus: (N, 18) relative CAN bus (see :func:`~internimage.occupancy.models.union2one`).
        grid_length: (y, x) metres per BEV cell.
        bev_h: BEV rows.
        bev_w: BEV columns.
        use_shift: False gives zeros.

    Returns:
        (N, 2) (shift_x, shift_y), float32.
    """
    cb = can_bus.double()
    dx, dy = cb[:, 0], cb[:, 1]
    length = torch.sqrt(dx**2 + dy**2)
    bev_angle = cb[:, -2] - torch.atan2(dy, dx)  # radians: ego yaw minus direction of travel
    shift_y = length * torch.cos(bev_angle) / grid_length[0] / bev_h
    shift_x = length * torch.sin(bev_angle) / grid_length[1] / bev_w
    shift = torch.stack([shift_x, shift_y], -1).float()
    return shift if use_shift else torch.zeros_like(shift)


def rotate_bev(bev: torch.Tensor, angle: torch.Tensor, center: Sequence[float]) -> torch.Tensor:
    """Rotate BEV maps counter-clockwise (as displayed, rows downward) about ``center``, nearest neighbour.

    Reproduces ``torchvision.transforms.functional.rotate(img, angle, center=center)`` (nearest interpolation,
    zero fill, no expansion) for every map with its own angle.

    Args:
        bev: (N, C, H, W) maps.
        angle: (N,) angles in degrees.
        center: (x, y) rotation centre in pixel-edge coordinates (``(W / 2, H / 2)`` is the map centre).

    Returns:
        (N, C, H, W).
    """
    n, _, h, w = bev.shape
    rad = angle.to(device=bev.device, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = rad.cos()[:, None, None], rad.sin()[:, None, None]
    # Pixel centres relative to the image centre, the frame torchvision's affine grid uses.
    xs = torch.arange(w, device=bev.device, dtype=torch.float32) + 0.5 - w / 2
    ys = torch.arange(h, device=bev.device, dtype=torch.float32) + 0.5 - h / 2
    cx, cy = float(center[0]) - w / 2, float(center[1]) - h / 2
    dx = (xs - cx).view(1, 1, w)
    dy = (ys - cy).view(1, h, 1)
    src_x = cos * dx - sin * dy + cx  # the inverse map: where each output pixel reads from
    src_y = sin * dx + cos * dy + cy
    grid = torch.stack([src_x / (w / 2), src_y / (h / 2)], -1)
    out = F.grid_sample(bev.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.to(bev.dtype)


class _ConvNormAct(nn.Module):
    """``conv`` (no bias) -> ``bn`` -> ReLU, keyed like mmcv's ``ConvModule`` with a BN norm."""

    def __init__(self, in_channels: int, out_channels: int, dims: int) -> None:
        super().__init__()
        conv, bn = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv = conv(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = bn(out_channels)
        self.activate = nn.ReLU(inplace=True)
        # mmcv ConvModule: Kaiming-normal (fan_out, relu) conv, unit BN.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class TransformerOcc(nn.Module):
    """BEV encoder and occupancy decoder.

    Args:
        embed_dims: Channels C of the BEV and of the image features.
        num_feature_levels: Image feature levels.
        num_cams: Cameras.
        pillar_h: Height cells Z of the occupancy volume.
        num_classes: Occupancy classes.
        out_dim: Channels of the decoder features per voxel.
        decoder: ``'3d'`` (official: the C channels of each BEV cell unfolded into ``C // pillar_h`` channels
            x ``pillar_h`` heights, two 3x3x3 conv-BN-ReLU), ``'conv'`` (two 3x3 conv-BN-ReLU to
            ``pillar_h * out_dim`` channels) or ``'linear'`` (an MLP to ``pillar_h * out_dim``).
        rotate_prev_bev: Rotate the previous BEV by the yaw change.
        use_shift: Shift the temporal reference points by the ego translation.
        use_can_bus: Add the CAN-bus embedding to the BEV queries.
        can_bus_norm: LayerNorm at the end of the CAN-bus MLP.
        use_cams_embeds: Add a learnt per-camera embedding to the image features.
        rotate_center: (x, y) centre of the previous-BEV rotation in BEV pixels; None is the BEV centre (the
            official ``[100, 100]`` for 200 x 200).
        **encoder_kwargs: :class:`~internimage.occupancy.models.encoder.BEVFormerEncoder` arguments (``num_layers``,
            ``pc_range``, ``num_points_in_pillar``, and the layer's ``feedforward_channels``, ``num_heads``,
            ``num_points``, ...).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_feature_levels: int = 4,
        num_cams: int = 6,
        pillar_h: int = 16,
        num_classes: int = 18,
        out_dim: int = 32,
        decoder: str = "3d",
        rotate_prev_bev: bool = True,
        use_shift: bool = True,
        use_can_bus: bool = True,
        can_bus_norm: bool = True,
        use_cams_embeds: bool = True,
        rotate_center: Sequence[float] | None = None,
        **encoder_kwargs,
    ) -> None:
        super().__init__()
        if decoder not in ("3d", "conv", "linear"):
            raise ValueError(f"TransformerOcc: decoder must be '3d', 'conv' or 'linear', got {decoder!r}")
        if decoder == "3d" and embed_dims % pillar_h:
            raise ValueError(f"TransformerOcc: embed_dims {embed_dims} must be divisible by pillar_h {pillar_h}")
        if decoder != "3d" and 2 * embed_dims != pillar_h * out_dim:
            raise ValueError(f"TransformerOcc: decoder {decoder!r} needs 2 * embed_dims == pillar_h * out_dim")
        self.embed_dims, self.num_feature_levels, self.num_cams = embed_dims, num_feature_levels, num_cams
        self.pillar_h, self.out_dim, self.decoder_type = pillar_h, out_dim, decoder
        self.rotate_prev_bev, self.use_shift, self.use_can_bus = rotate_prev_bev, use_shift, use_can_bus
        self.use_cams_embeds = use_cams_embeds
        self.rotate_center = None if rotate_center is None else tuple(float(c) for c in rotate_center)
        encoder_kwargs.setdefault("embed_dims", embed_dims)
        encoder_kwargs.setdefault("num_cams", num_cams)
        encoder_kwargs.setdefault("num_levels", num_feature_levels)
        self.encoder = BEVFormerEncoder(**encoder_kwargs)
        if decoder == "3d":
            middle = embed_dims // pillar_h
            self.decoder = nn.Sequential(_ConvNormAct(middle, out_dim, 3), _ConvNormAct(out_dim, out_dim, 3))
        elif decoder == "conv":
            self.decoder = nn.Sequential(
                _ConvNormAct(embed_dims, embed_dims, 2), _ConvNormAct(embed_dims, 2 * embed_dims, 2)
            )
        else:
            self.decoder = nn.Sequential(
                nn.Linear(embed_dims, 2 * embed_dims), nn.Softplus(), nn.Linear(2 * embed_dims, 2 * embed_dims)
            )
        self.predicter = nn.Sequential(
            nn.Linear(out_dim, 2 * out_dim), nn.Softplus(), nn.Linear(2 * out_dim, num_classes)
        )
        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, embed_dims))
        self.cams_embeds = nn.Parameter(torch.empty(num_cams, embed_dims))
        self.can_bus_mlp = nn.Sequential(
            nn.Linear(CAN_BUS_DIMS, embed_dims // 2),
            nn.ReLU(inplace=True),
            nn.Linear(embed_dims // 2, embed_dims),
            nn.ReLU(inplace=True),
        )
        if can_bus_norm:
            self.can_bus_mlp.add_module("norm", nn.LayerNorm(embed_dims))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The original: Xavier for every matrix of the transformer, then the attentions' own init on top.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.encoder.modules():
            if (
                m is not self.encoder
                and hasattr(m, "reset_parameters")
                and not isinstance(m, (nn.Linear, nn.LayerNorm))
            ):
                m.reset_parameters()
        nn.init.normal_(self.level_embeds)
        nn.init.normal_(self.cams_embeds)
        for m in self.can_bus_mlp:
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def get_bev_features(
        self,
        mlvl_feats: Sequence[torch.Tensor],
        bev_queries: torch.Tensor,
        bev_h: int,
        bev_w: int,
        grid_length: tuple[float, float],
        bev_pos: torch.Tensor,
        can_bus: torch.Tensor,
        lidar2img: torch.Tensor,
        img_shape: tuple[int, int],
        ego2lidar: torch.Tensor | None = None,
        prev_bev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """BEV features of the current frame.

        Args:
            mlvl_feats: Per level (N, num_cams, C, h, w) image features.
            bev_queries: (Q, C) learnt BEV queries, Q = bev_h * bev_w.
            bev_h: BEV rows.
            bev_w: BEV columns.
            grid_length: (y, x) metres per BEV cell.
            bev_pos: (N, Q, C) positional encoding.
            can_bus: (N, 18) relative CAN bus (``[:3]`` translation since the previous frame, ``[-2]`` current yaw
                in radians, ``[-1]`` yaw change in degrees).
            lidar2img: (N, num_cams, 4, 4).
            img_shape: (height, width) normalising the projected pixels.
            ego2lidar: (N, 4, 4) / (4, 4) or None.
            prev_bev: (N, Q, C) previous BEV, or None.

        Returns:
            (N, Q, C).
        """
        if len(mlvl_feats) != self.num_feature_levels:
            raise ValueError(
                f"TransformerOcc: expected {self.num_feature_levels} feature levels, got {len(mlvl_feats)}"
            )
        n = mlvl_feats[0].shape[0]
        q, c = bev_queries.shape
        if can_bus.shape != (n, CAN_BUS_DIMS):
            raise ValueError(f"can_bus must be ({n}, {CAN_BUS_DIMS}), got {tuple(can_bus.shape)}")
        dtype = bev_queries.dtype
        shift = bev_shift(can_bus, grid_length, bev_h, bev_w, self.use_shift).to(bev_queries.device)
        if prev_bev is not None:
            if prev_bev.shape != (n, q, c):
                raise ValueError(f"prev_bev must be ({n}, {q}, {c}), got {tuple(prev_bev.shape)}")
            if self.rotate_prev_bev:
                center = self.rotate_center or (bev_w / 2, bev_h / 2)
                maps = prev_bev.reshape(n, bev_h, bev_w, c).permute(0, 3, 1, 2)
                maps = rotate_bev(maps, can_bus[:, -1], center)
                prev_bev = maps.permute(0, 2, 3, 1).reshape(n, q, c)
        queries = bev_queries[None].expand(n, q, c)
        if self.use_can_bus:
            queries = queries + self.can_bus_mlp(can_bus.to(device=queries.device, dtype=dtype))[:, None, :]
        flat, shapes = [], []
        for level, feat in enumerate(mlvl_feats):
            _, cams, _, h, w = feat.shape
            feat = feat.flatten(3).transpose(2, 3)  # (N, cams, h*w, C)
            if self.use_cams_embeds:
                feat = feat + self.cams_embeds[None, :cams, None, :].to(feat.dtype)
            feat = feat + self.level_embeds[None, None, level : level + 1, :].to(feat.dtype)
            flat.append(feat)
            shapes.append((int(h), int(w)))
        value = torch.cat(flat, 2)
        value = value.reshape(n * value.shape[1], value.shape[2], c)
        return self.encoder(
            queries, value, bev_h, bev_w, bev_pos, shapes, lidar2img, img_shape, ego2lidar, prev_bev, shift
        )

    def decode(self, bev_embed: torch.Tensor, bev_h: int, bev_w: int) -> torch.Tensor:
        """Occupancy logits from BEV features.

        Args:
            bev_embed: (N, Q, C).

        Returns:
            '3d' decoder: (N, bev_w, bev_h, pillar_h, num_classes), i.e. (N, X, Y, Z, classes);
            'conv' / 'linear': (N, bev_h, bev_w, pillar_h, num_classes), the original's axis orders.
        """
        n = bev_embed.shape[0]
        maps = bev_embed.permute(0, 2, 1).reshape(n, -1, bev_h, bev_w)
        if self.decoder_type == "3d":
            out = self.decoder(maps.reshape(n, -1, self.pillar_h, bev_h, bev_w)).permute(0, 4, 3, 2, 1)
        elif self.decoder_type == "conv":
            out = self.decoder(maps).view(n, -1, self.pillar_h, bev_h, bev_w).permute(0, 3, 4, 2, 1)
        else:
            out = self.decoder(maps.permute(0, 2, 3, 1)).view(n, bev_h, bev_w, self.pillar_h, self.out_dim)
        return self.predicter(out)

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`get_bev_features` then :meth:`decode`.

        Returns:
            ``(bev_embed (N, Q, C), occupancy logits)``.
        """
        bev_h = kwargs["bev_h"] if "bev_h" in kwargs else args[2]
        bev_w = kwargs["bev_w"] if "bev_w" in kwargs else args[3]
        bev = self.get_bev_features(*args, **kwargs)
        return bev, self.decode(bev, bev_h, bev_w)
