"""BEVFormerOcc: six camera images (and their history) -> 3D semantic occupancy.

The detector of the InternImage occupancy release (``bevformer_intern-s_occ``): an InternImage backbone and an FPN
per camera image, the BEVFormer encoder with temporal self-attention, and the occupancy decoder. Training sees a
queue of frames: the BEV of the earlier frames is built without gradients (in eval mode) and feeds the temporal
attention of the last frame, which alone is supervised. Inference keeps the previous BEV and ego pose across calls
within a scene (``video_test_mode``).

Batch contract (tensors instead of mmdet3d's ``img_metas``):

* ``img``: (N, T, num_cams, 3, H, W) training queue / (N, num_cams, 3, H, W) inference, normalised images.
* ``lidar2img``: (N, T, num_cams, 4, 4) / (N, num_cams, 4, 4) lidar -> pixel projections.
* ``can_bus``: (N, T, 18) / (N, 18) ABSOLUTE CAN bus per frame, as the dataset gives it: ``[:3]`` ego
  translation (global, metres), ``[3:7]`` rotation quaternion, ``[-2]`` yaw (radians, in [0, 2 pi)),
  ``[-1]`` yaw (degrees). The model makes it relative to the previous frame (:func:`union2one`).
* ``prev_exists``: (N, T) bool, False where a frame starts a scene (frame 0 always counts as a start).
* ``img_shape``: (height, width) normalising the projected pixels; default the input (padded) size, which is what
  the original uses: its ``PadMultiViewImage`` overwrites ``img_shape`` with the padded shape (928 x 1600 for
  nuScenes' 900 x 1600), ``ori_shape`` keeps the unpadded one.
* ``ego2lidar``: optional (4, 4), (N, 4, 4) or (N, T, 4, 4); identity if omitted.
* ``voxel_semantics`` / ``mask_camera``: (N, X, Y, Z) labels / visibility of the supervised (last) frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ...models.dense import build_internimage_body
from ...models.internimage import dense_layer_id
from .fpn import FPN
from .head import BEVFormerOccHead
from .resnet import OFFICIAL_RESNET_OVERRIDES, build_resnet, is_resnet_name
from .transformer import CAN_BUS_DIMS, TransformerOcc, rotate_bev

__all__ = [
    "OFFICIAL_BACKBONE_OVERRIDES",
    "TINY_CONFIG",
    "BEVFormerOcc",
    "GridMask",
    "build_bevformer_occ",
    "build_bevformer_occ_tiny",
    "union2one",
]

logger = logging.getLogger(__name__)

#: InternImage-S arguments of ``bevformer_intern-s_occ.py`` beyond the registered ``internimage_s_1k_224``.
OFFICIAL_BACKBONE_OVERRIDES: dict[str, Any] = {
    "layer_scale": 1.0,
    "offset_scale": 1.0,
    "post_norm": True,
    "drop_path_rate": 0.3,
    "with_cp": True,
}

#: A configuration small enough for CPU tests: the tiny registered InternImage, a 50 x 50 BEV of 32 channels.
TINY_CONFIG: dict[str, Any] = {
    "backbone": "internimage_test_32",
    "backbone_overrides": {},
    "embed_dims": 32,
    "ffn_dims": 64,
    "num_layers": 1,
    "bev_h": 50,
    "bev_w": 50,
    "pillar_h": 8,
    "out_dim": 8,
    "num_heads": 4,
    "num_points_in_pillar": 4,
    "num_points": 4,
    "tsa_num_points": 2,
}


def union2one(can_bus: torch.Tensor, prev_exists: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Make a queue's absolute CAN bus relative to the previous frame, as the dataset's ``union2one`` does.

    For a frame that starts a scene (and for frame 0, which always does) the translation ``[:3]`` and the yaw in
    degrees ``[-1]`` become 0; otherwise they become the change since the previous frame. Everything else
    (quaternion, velocities, the yaw in radians ``[-2]``) stays absolute. Computed in float64.

    Args:
        can_bus: (N, T, 18) absolute CAN bus per frame.
        prev_exists: (N, T) bool, False where a frame starts a scene; None means one scene throughout.

    Returns:
        ``(relative can_bus (N, T, 18) in the input dtype, prev_exists (N, T) bool with frame 0 False)``.
    """
    if can_bus.dim() != 3 or can_bus.shape[-1] != CAN_BUS_DIMS:
        raise ValueError(f"can_bus must be (N, T, {CAN_BUS_DIMS}), got {tuple(can_bus.shape)}")
    n, t, _ = can_bus.shape
    if prev_exists is None:
        prev_exists = torch.ones(n, t, dtype=torch.bool, device=can_bus.device)
    if prev_exists.shape != (n, t):
        raise ValueError(f"prev_exists must be ({n}, {t}), got {tuple(prev_exists.shape)}")
    exists = prev_exists.to(device=can_bus.device, dtype=torch.bool).clone()
    exists[:, 0] = False
    absolute = can_bus.double()
    out = absolute.clone()
    previous = torch.cat([absolute[:, :1], absolute[:, :-1]], 1)  # frame i-1 (frame 0: itself, then zeroed)
    keep = exists[..., None].double()
    out[..., :3] = (absolute[..., :3] - previous[..., :3]) * keep
    out[..., -1] = (absolute[..., -1] - previous[..., -1]) * keep[..., 0]
    return out.to(can_bus.dtype), exists


class GridMask(nn.Module):
    """GridMask augmentation (Chen et al., 2020) as BEVFormer configures it: training only, with probability
    ``prob``, one grid of horizontal and vertical stripes shared by the whole batch.

    A period ``d`` in ``[2, H)`` and stripes of width ``l = clip(round(d * ratio), 1, d - 1)`` starting at random
    offsets are drawn on a canvas 1.5x the image, optionally rotated by an integer angle in ``[0, rotate)``,
    centre-cropped; ``mode=1`` keeps the stripes and zeroes the rest (``mode=0`` the opposite). Draws come from
    torch's global generator.

    Args:
        use_h: Horizontal stripes.
        use_w: Vertical stripes.
        rotate: Rotation angles are drawn from ``[0, rotate)`` degrees (1: none).
        offset: Fill the dropped pixels with uniform noise in [-1, 1] instead of 0.
        ratio: Stripe width over period.
        mode: 0 drops the stripes, 1 keeps only them.
        prob: Probability of masking a batch.
    """

    def __init__(
        self,
        use_h: bool = True,
        use_w: bool = True,
        rotate: int = 1,
        offset: bool = False,
        ratio: float = 0.5,
        mode: int = 1,
        prob: float = 0.7,
    ) -> None:
        super().__init__()
        self.use_h, self.use_w, self.rotate, self.offset = use_h, use_w, rotate, offset
        self.ratio, self.mode, self.prob = ratio, mode, prob

    def make_mask(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """One (h, w) float mask (1 keeps a pixel)."""
        if h < 3:
            raise ValueError(f"GridMask needs images at least 3 pixels high, got {h}")
        hh, ww = int(1.5 * h), int(1.5 * w)
        d = int(torch.randint(2, h, ()))
        length = min(max(int(d * self.ratio + 0.5), 1), d - 1)
        st_h, st_w = (int(v) for v in torch.randint(0, d, (2,)))
        keep = torch.ones(hh, ww, device=device)

        def stripes(size: int, start: int) -> torch.Tensor:
            k = torch.arange(size, device=device) - start
            return (k >= 0) & (k % d < length) & (k // d < size // d)

        if self.use_h:
            keep[stripes(hh, st_h)] = 0
        if self.use_w:
            keep[:, stripes(ww, st_w)] = 0
        angle = int(torch.randint(0, self.rotate, ())) if self.rotate > 1 else 0
        if angle:
            keep = rotate_bev(keep[None, None], torch.tensor([float(angle)]), (ww / 2, hh / 2))[0, 0]
        top, left = (hh - h) // 2, (ww - w) // 2
        keep = keep[top : top + h, left : left + w]
        return 1 - keep if self.mode == 1 else keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mask (N, C, H, W) images in training with probability ``prob``; identity otherwise."""
        if not self.training or float(torch.rand(())) > self.prob:
            return x
        mask = self.make_mask(x.shape[-2], x.shape[-1], x.device).to(x.dtype)
        if self.offset:
            noise = (2 * (torch.rand(x.shape[-2:], device=x.device) - 0.5)).to(x.dtype)
            return x * mask + noise * (1 - mask)
        return x * mask


def _as_frames(ego2lidar: torch.Tensor | None, n: int, t: int) -> torch.Tensor | None:
    """ego2lidar as (N, T, 4, 4) (or None)."""
    if ego2lidar is None:
        return None
    if ego2lidar.shape == (4, 4):
        return ego2lidar.expand(n, t, 4, 4)
    if ego2lidar.shape == (n, 4, 4):
        return ego2lidar[:, None].expand(n, t, 4, 4)
    if ego2lidar.shape == (n, t, 4, 4):
        return ego2lidar
    raise ValueError(f"ego2lidar must be (4, 4), ({n}, 4, 4) or ({n}, {t}, 4, 4), got {tuple(ego2lidar.shape)}")


def _take(x: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x[idx]


class BEVFormerOcc(nn.Module):
    """The occupancy detector: ``img_backbone`` (InternImage body), ``img_neck`` (FPN), ``pts_bbox_head``.

    Args:
        img_backbone: An InternImage body or a :class:`~internimage.occupancy.models.resnet.ResNet`, exposing
            ``forward_intermediates``, ``feature_info`` and ``depths``.
        img_neck: The FPN.
        pts_bbox_head: The :class:`~internimage.occupancy.models.head.BEVFormerOccHead`.
        backbone_indices: Backbone levels fed to the neck.
        use_grid_mask: GridMask the training images.
        video_test_mode: Use the previous frame's BEV at inference.
    """

    def __init__(
        self,
        img_backbone: nn.Module,
        img_neck: FPN,
        pts_bbox_head: BEVFormerOccHead,
        backbone_indices: Sequence[int] = (1, 2, 3),
        use_grid_mask: bool = True,
        video_test_mode: bool = True,
    ) -> None:
        super().__init__()
        self.img_backbone = img_backbone
        self.img_neck = img_neck
        self.pts_bbox_head = pts_bbox_head
        self.backbone_indices = [int(i) for i in backbone_indices]
        self.use_grid_mask = use_grid_mask
        self.video_test_mode = video_test_mode
        self.grid_mask = GridMask(True, True, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7)
        self.prev_frame_info: dict[str, Any] = {}
        self.reset_video_state()

    #: Parameters whose lr the original's ``offset_lr_scale`` multiplies (1.0 in the official config).
    offset_lr_keys = ("sampling_offsets", "reference_points")

    def layer_id_fn(self) -> tuple[Callable[[str], int], int]:
        """The layer-decay rule of the original's ``CustomLayerDecayOptimizerConstructor`` for this model.

        ``(name -> layer id, number of ids)`` with ``sum(depths) + 2`` ids (the config's ``num_layers=33`` + 2):
        backbone parameters as every dense task counts them (:func:`~internimage.models.internimage.dense_layer_id`),
        the transformer's ``level_embeds`` 0 (the original matches the name anywhere), everything else the last id.
        """
        depths = tuple(self.img_backbone.depths)
        last = sum(depths) + 1

        def layer_id(name: str) -> int:
            if "level_embeds" in name:
                return 0
            if name.startswith("img_backbone."):
                return dense_layer_id(name[len("img_backbone.") :], depths)
            return last

        return layer_id, last + 1

    @property
    def num_cams(self) -> int:
        return self.pts_bbox_head.transformer.num_cams

    def reset_video_state(self) -> None:
        """Forget the previous frame (scene tokens, pose, BEV)."""
        self.prev_frame_info = {"prev_bev": None, "scene_token": None, "prev_pos": None, "prev_angle": None}

    # ------------------------------------------------------------------------------------------ features
    def extract_feat(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Image features of every camera.

        Args:
            img: (N, num_cams, 3, H, W).

        Returns:
            Per neck level (N, num_cams, C, h, w).
        """
        n, cams = img.shape[:2]
        x = img.reshape(n * cams, *img.shape[2:])
        if self.use_grid_mask:
            x = self.grid_mask(x)
        maps = self.img_backbone.forward_intermediates(
            x, indices=self.backbone_indices, intermediates_only=True, stop_early=True
        )
        return [f.view(n, cams, *f.shape[1:]) for f in self.img_neck(maps)]

    def _bev(
        self,
        feats: list[torch.Tensor],
        lidar2img: torch.Tensor,
        can_bus: torch.Tensor,
        img_shape: tuple[int, int],
        ego2lidar: torch.Tensor | None,
        prev_bev: torch.Tensor | None,
        use_prev: torch.Tensor,
        only_bev: bool,
    ) -> Any:
        """Head call where samples with and without history are run apart (the temporal attention differs)."""
        head = self.pts_bbox_head
        if prev_bev is None or not bool(use_prev.any()):
            return head(feats, lidar2img, can_bus, img_shape, ego2lidar, None, only_bev)
        if bool(use_prev.all()):
            return head(feats, lidar2img, can_bus, img_shape, ego2lidar, prev_bev, only_bev)
        parts, order = [], []
        for group, with_prev in ((use_prev.nonzero().squeeze(1), True), ((~use_prev).nonzero().squeeze(1), False)):
            sub = [f[group] for f in feats]
            prev = prev_bev[group] if with_prev else None
            parts.append(
                head(sub, lidar2img[group], can_bus[group], img_shape, _take(ego2lidar, group), prev, only_bev)
            )
            order.append(group)
        inverse = torch.argsort(torch.cat(order))
        if only_bev:
            return torch.cat(parts)[inverse]
        return {k: torch.cat([p[k] for p in parts])[inverse] for k in parts[0]}

    def obtain_history_bev(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        can_bus: torch.Tensor,
        prev_exists: torch.Tensor,
        img_shape: tuple[int, int],
        ego2lidar: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """BEV of the last of the given frames, each frame attending to the one before (no gradients, eval mode).

        Args:
            img: (N, T, num_cams, 3, H, W) earlier frames.
            lidar2img: (N, T, num_cams, 4, 4).
            can_bus: (N, T, 18) relative CAN bus.
            prev_exists: (N, T) bool.
            img_shape: (height, width).
            ego2lidar: (N, T, 4, 4) or None.

        Returns:
            (N, Q, C), or None for an empty queue.
        """
        n, t = img.shape[:2]
        if t == 0:
            return None
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                feats = self.extract_feat(img.reshape(n * t, *img.shape[2:]))
                feats = [f.view(n, t, *f.shape[1:]) for f in feats]
                prev_bev = None
                for i in range(t):
                    prev_bev = self._bev(
                        [f[:, i] for f in feats],
                        lidar2img[:, i],
                        can_bus[:, i],
                        img_shape,
                        None if ego2lidar is None else ego2lidar[:, i],
                        prev_bev,
                        prev_exists[:, i],
                        True,
                    )
        finally:
            self.train(was_training)
        return prev_bev

    # ------------------------------------------------------------------------------------------ training
    def _check_inputs(self, img: torch.Tensor, lidar2img: torch.Tensor, can_bus: torch.Tensor, queue: bool) -> None:
        lead = 2 if queue else 1  # dims before the camera axis: (N, T) or (N,)
        want = "(N, T, num_cams, 3, H, W)" if queue else "(N, num_cams, 3, H, W)"
        if img.dim() != lead + 4 or img.shape[lead] != self.num_cams or img.shape[lead + 1] != 3:
            raise ValueError(f"img must be {want} with num_cams={self.num_cams}, got {tuple(img.shape)}")
        if lidar2img.shape != (*img.shape[: lead + 1], 4, 4):
            raise ValueError(f"lidar2img must be {(*img.shape[: lead + 1], 4, 4)}, got {tuple(lidar2img.shape)}")
        if can_bus.shape != (*img.shape[:lead], CAN_BUS_DIMS):
            raise ValueError(f"can_bus must be {(*img.shape[:lead], CAN_BUS_DIMS)}, got {tuple(can_bus.shape)}")

    def forward_train(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        can_bus: torch.Tensor,
        img_shape: tuple[int, int] | None = None,
        prev_exists: torch.Tensor | None = None,
        voxel_semantics: torch.Tensor | None = None,
        mask_camera: torch.Tensor | None = None,
        ego2lidar: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of the last frame of each queue (see the module docstring for the batch contract).

        Returns:
            ``{'loss_occ': scalar}``.
        """
        self._check_inputs(img, lidar2img, can_bus, queue=True)
        if voxel_semantics is None:
            raise ValueError("forward_train needs voxel_semantics")
        n, t = img.shape[:2]
        shape = _image_shape(img, img_shape)
        rel_can_bus, exists = union2one(can_bus, prev_exists)
        rel_can_bus = rel_can_bus.float()
        e2l = _as_frames(ego2lidar, n, t)
        prev_bev = self.obtain_history_bev(
            img[:, :-1],
            lidar2img[:, :-1],
            rel_can_bus[:, :-1],
            exists[:, :-1],
            shape,
            None if e2l is None else e2l[:, :-1],
        )
        feats = self.extract_feat(img[:, -1])
        preds = self._bev(
            feats,
            lidar2img[:, -1],
            rel_can_bus[:, -1],
            shape,
            None if e2l is None else e2l[:, -1],
            prev_bev,
            exists[:, -1],
            False,
        )
        return self.pts_bbox_head.loss(voxel_semantics, mask_camera, preds)

    def forward(self, *args: Any, mode: str = "train", **kwargs: Any) -> dict[str, torch.Tensor]:
        """:meth:`forward_train`, or :meth:`predict` with ``mode='predict'``.

        Inference goes through ``forward`` where a wrapper's hooks must run first (FSDP2 gathers the root's
        parameters in its forward pre-hook; calling ``predict`` directly would meet sharded tensors).
        """
        if mode == "predict":
            return self.predict(*args, **kwargs)
        if mode != "train":
            raise ValueError(f"BEVFormerOcc.forward: mode must be 'train' or 'predict', got {mode!r}")
        return self.forward_train(*args, **kwargs)

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        can_bus: torch.Tensor,
        scene_token: str | Sequence[str],
        img_shape: tuple[int, int] | None = None,
        ego2lidar: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Occupancy of one frame per sample, using the previous call's BEV when it is the same scene.

        Runs in eval mode (restored afterwards). The previous BEV is dropped when the scene tokens differ from the
        previous call's (or ``video_test_mode`` is off); then the ego motion is taken as zero, as the original.

        Args:
            img: (N, num_cams, 3, H, W).
            lidar2img: (N, num_cams, 4, 4).
            can_bus: (N, 18) absolute CAN bus of this frame.
            scene_token: The scene of each sample (one string for all).
            img_shape: (height, width) normalising projected pixels; default the input (padded) size, as the original.
            ego2lidar: (4, 4) / (N, 4, 4) or None.
            return_logits: Also return the logits.

        Returns:
            ``{'occ': (N, X, Y, Z) labels (uint8 when num_classes <= 256, else int64)}`` plus ``'logits'``
            (N, X, Y, Z, num_classes) if asked.
        """
        self._check_inputs(img, lidar2img, can_bus, queue=False)
        n = img.shape[0]
        tokens = [scene_token] * n if isinstance(scene_token, str) else [str(s) for s in scene_token]
        if len(tokens) != n:
            raise ValueError(f"scene_token must be one string or {n} strings, got {len(tokens)}")
        info = self.prev_frame_info
        if tokens != info["scene_token"] or not self.video_test_mode:
            info["prev_bev"] = None
        info["scene_token"] = tokens
        absolute = can_bus.double()
        relative = absolute.clone()
        if info["prev_bev"] is not None:
            relative[:, :3] -= info["prev_pos"]
            relative[:, -1] -= info["prev_angle"]
        else:
            relative[:, :3] = 0
            relative[:, -1] = 0
        was_training = self.training
        self.eval()
        try:
            feats = self.extract_feat(img)
            e2l = None if ego2lidar is None else _as_frames(ego2lidar, n, 1)[:, 0]
            preds = self.pts_bbox_head(
                feats, lidar2img, relative.float(), _image_shape(img, img_shape), e2l, info["prev_bev"]
            )
        finally:
            self.train(was_training)
        info["prev_pos"] = absolute[:, :3].clone()
        info["prev_angle"] = absolute[:, -1].clone()
        info["prev_bev"] = preds["bev_embed"]
        labels = self.pts_bbox_head.get_occ(preds)
        if self.pts_bbox_head.num_classes <= 256:
            labels = labels.to(torch.uint8)
        out = {"occ": labels}
        if return_logits:
            out["logits"] = preds["occ"]
        return out


def _image_shape(img: torch.Tensor, img_shape: tuple[int, int] | None) -> tuple[int, int]:
    if img_shape is None:
        return int(img.shape[-2]), int(img.shape[-1])
    if len(img_shape) < 2 or min(int(img_shape[0]), int(img_shape[1])) <= 0:
        raise ValueError(f"img_shape must be (height, width) > 0, got {img_shape}")
    return int(img_shape[0]), int(img_shape[1])


def build_bevformer_occ(
    backbone: str = "internimage_s_1k_224",
    backbone_overrides: dict[str, Any] | None = None,
    backbone_checkpoint: str | None = None,
    backbone_indices: Sequence[int] = (1, 2, 3),
    embed_dims: int = 256,
    ffn_dims: int = 512,
    num_layers: int = 4,
    bev_h: int = 200,
    bev_w: int = 200,
    pillar_h: int = 16,
    out_dim: int = 32,
    num_classes: int = 18,
    pc_range: Sequence[float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4),
    num_points_in_pillar: int = 8,
    num_heads: int = 8,
    num_levels: int = 4,
    num_points: int = 8,
    tsa_num_points: int = 4,
    num_cams: int = 6,
    decoder: str = "3d",
    dropout: float = 0.1,
    ffn_dropout: float = 0.1,
    use_grid_mask: bool = True,
    video_test_mode: bool = True,
    rotate_prev_bev: bool = True,
    use_shift: bool = True,
    use_can_bus: bool = True,
    use_mask: bool = False,
    rotate_center: Sequence[float] | None = None,
    num_level_embeds: int | None = None,
) -> BEVFormerOcc:
    """BEVFormerOcc; the defaults are the official ``bevformer_intern-s_occ`` configuration.

    Args:
        backbone: Registered InternImage name, or ``resnet<depth>`` (18/34/50/101/152) for mmdet's ResNet
            (:mod:`.resnet`; the ``bevformer_base_occ`` / ``bevformer_small_occ`` backbones).
        backbone_overrides: InternImage arguments; None means :data:`OFFICIAL_BACKBONE_OVERRIDES`. For a ResNet,
            :class:`~internimage.occupancy.models.resnet.ResNet` arguments; None means
            :data:`~internimage.occupancy.models.resnet.OFFICIAL_RESNET_OVERRIDES` (caffe style, DCNv2 in stages
            3-4, frozen stem + stage 1, frozen BatchNorm), ``{}`` mmdet's ResNet defaults.
        backbone_checkpoint: Backbone weights (classification or mmdet checkpoint; for a ResNet also torchvision
            ImageNet weights or an mmdet3d ``img_backbone.*`` detector), or None.
        backbone_indices: Backbone levels fed to the FPN (the config's ``out_indices``; the FPN takes their
            channels as ``in_channels``, ``start_level=0``).
        embed_dims: BEV / neck channels.
        ffn_dims: Encoder FFN hidden width.
        num_layers: Encoder layers.
        bev_h: BEV rows.
        bev_w: BEV columns.
        pillar_h: Height cells of the occupancy volume.
        out_dim: Decoder channels per voxel.
        num_classes: Occupancy classes.
        pc_range: Volume (x_min, y_min, z_min, x_max, y_max, z_max) in metres.
        num_points_in_pillar: Anchors per pillar in the spatial cross-attention.
        num_heads: Heads of both attentions.
        num_levels: FPN outputs (= image levels attended; the config's ``num_outs`` / ``_num_levels_``). Outputs
            beyond ``len(backbone_indices)`` are the ``add_extra_convs='on_output'`` levels.
        num_points: Spatial cross-attention points per head and level (multiple of ``num_points_in_pillar``).
        tsa_num_points: Temporal self-attention points per head.
        num_cams: Cameras.
        decoder: ``'3d'`` (official), ``'conv'`` or ``'linear'``.
        dropout: Attention output dropout.
        ffn_dropout: FFN dropout.
        use_grid_mask: GridMask in training.
        video_test_mode: Temporal inference.
        rotate_prev_bev: Rotate the previous BEV by the yaw change.
        use_shift: Shift the temporal reference points by the ego translation.
        use_can_bus: Add the CAN-bus embedding to the queries.
        use_mask: Loss over camera-visible voxels only.
        rotate_center: Rotation centre in BEV pixels; None is the BEV centre.
        num_level_embeds: Rows of the transformer's ``level_embeds``; None means ``max(4, num_levels)``, as the
            original: its ``TransformerOcc`` keeps the default ``num_feature_levels=4`` whatever the FPN gives (no
            config sets it), so ``bevformer_small_occ`` (2 levels) holds 4 rows and uses the first 2.

    Returns:
        The model (freshly initialised apart from the backbone checkpoint).
    """
    if num_points % num_points_in_pillar:
        raise ValueError(f"num_points {num_points} must be a multiple of num_points_in_pillar {num_points_in_pillar}")
    if len(pc_range) != 6:
        raise ValueError(f"pc_range must have 6 numbers, got {pc_range}")
    if is_resnet_name(backbone):
        overrides = dict(OFFICIAL_RESNET_OVERRIDES if backbone_overrides is None else backbone_overrides)
        body = build_resnet(backbone, backbone_checkpoint, **overrides)
    else:
        overrides = dict(OFFICIAL_BACKBONE_OVERRIDES if backbone_overrides is None else backbone_overrides)
        body = build_internimage_body(backbone, backbone_checkpoint, **overrides)
    if not backbone_indices or any(not 0 <= int(i) < len(body.feature_info) for i in backbone_indices):
        raise ValueError(f"backbone_indices must be in [0, {len(body.feature_info) - 1}], got {list(backbone_indices)}")
    in_channels = [body.feature_info[i]["num_chs"] for i in backbone_indices]
    neck = FPN(in_channels, embed_dims, num_outs=num_levels, relu_before_extra_convs=True)
    transformer = TransformerOcc(
        embed_dims=embed_dims,
        num_feature_levels=num_levels,
        num_cams=num_cams,
        pillar_h=pillar_h,
        num_classes=num_classes,
        out_dim=out_dim,
        decoder=decoder,
        rotate_prev_bev=rotate_prev_bev,
        use_shift=use_shift,
        use_can_bus=use_can_bus,
        rotate_center=rotate_center,
        num_layers=num_layers,
        pc_range=pc_range,
        num_points_in_pillar=num_points_in_pillar,
        feedforward_channels=ffn_dims,
        ffn_dropout=ffn_dropout,
        num_heads=num_heads,
        num_points=num_points,
        tsa_num_points=tsa_num_points,
        dropout=dropout,
    )
    rows = max(4, num_levels) if num_level_embeds is None else int(num_level_embeds)
    if rows < num_levels:
        raise ValueError(f"num_level_embeds {rows} must be >= num_levels {num_levels}")
    if rows != num_levels:
        # Only the first num_levels rows are read; the rest exist so the official checkpoints load strictly.
        transformer.level_embeds = nn.Parameter(nn.init.normal_(transformer.level_embeds.new_empty(rows, embed_dims)))
    head = BEVFormerOccHead(transformer, bev_h, bev_w, pc_range, num_classes, use_mask=use_mask)
    return BEVFormerOcc(body, neck, head, backbone_indices, use_grid_mask, video_test_mode)


def build_bevformer_occ_tiny(**overrides: Any) -> BEVFormerOcc:
    """:func:`build_bevformer_occ` with :data:`TINY_CONFIG` (CPU tests and smoke runs), updated by ``overrides``."""
    return build_bevformer_occ(**{**TINY_CONFIG, **overrides})
