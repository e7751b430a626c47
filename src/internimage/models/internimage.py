"""InternImage: Exploring Large-Scale Vision Foundation Models with Deformable Convolutions.

Paper: https://arxiv.org/abs/2211.05778 (Wang et al., CVPR 2023). Original code: OpenGVLab/InternImage (MIT).

One class covers every released variant (T/S/B/L/XL/H/G) and, with ``core_op='DCNv4'``, FlashInternImage
(T/S/B/L; Xiong et al., "Efficient Deformable ConvNets", arXiv 2401.06197; original code OpenGVLab/DCNv4, MIT).
Module and parameter names follow the official classification code exactly, so official state dicts load without
renaming. Activations are NHWC inside the
network; every public feature output is NCHW.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_function, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import nn

from ..ops.dcnv3 import DCNv3, ToChannelsFirst, ToChannelsLast
from ..ops.dcnv4 import DCNv4
from ..ops.fused_linear import fused_mlp, fusion_enabled
from .checkpoint import checkpoint_filter_fn
from .recompute import gelu_mlp

__all__ = ["InternImage", "InternImageArch", "ARCHS", "MODEL_NAMES", "MODEL_SPECS", "dense_layer_id"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CORE_OPS = ("DCNv3", "DCNv4")


def _ln(dim: int, channels_first_in: bool = False, channels_first_out: bool = False) -> nn.Sequential:
    """LayerNorm (eps 1e-6) wrapped in the official ``Sequential`` so keys read ``<name>.<i>.weight``."""
    layers: list[nn.Module] = []
    if channels_first_in:
        layers.append(ToChannelsLast())
    layers.append(nn.LayerNorm(dim, eps=1e-6))
    if channels_first_out:
        layers.append(ToChannelsFirst())
    return nn.Sequential(*layers)


class StemLayer(nn.Module):
    """Two stride-2 3x3 convs with LN (NCHW in, NHWC out, stride 4)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, 3, stride=2, padding=1)
        self.norm1 = _ln(out_chans // 2, channels_first_in=True, channels_first_out=True)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, 3, stride=2, padding=1)
        self.norm2 = _ln(out_chans, channels_first_in=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, 3, H, W). Returns: (N, H/4, W/4, C)."""
        if x.device.type == "cpu":
            # oneDNN runs a 3-channel NCHW conv through im2col (4x slower at batch 8, and its 11 MB scratch buffer
            # page-faults); in channels-last it takes the direct NHWC kernel, and the output is then already in
            # the NHWC layout the norms view it in, so neither norm copies (stem 1.8x faster at batch 8).
            x = x.contiguous(memory_format=torch.channels_last)
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    """3x3 stride-2 conv (no bias) doubling the channels, then LN. NHWC in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = _ln(2 * channels, channels_first_in=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # torch 2.14's CPU bf16 conv backward returns garbage weight gradients (inf / 1e11, varying run to
            # run) for this 3x3 stride-2 conv on 1x1 maps; the conv is a tiny share of the FLOPs, so run it in fp32.
            with torch.autocast("cpu", enabled=False):
                return self.norm(self.conv(x.float()))
        return self.norm(self.conv(x))


class MLPLayer(nn.Module):
    """fc1 -> GELU -> fc2 on the last dimension (FlashInternImage-T/S/B have no fc2 bias)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        drop: float = 0.0,
        fc2_bias: bool = True,
        recompute_activations: bool = False,
    ) -> None:
        super().__init__()
        self.recompute_activations = recompute_activations
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=fc2_bias)
        self.drop = nn.Dropout(drop)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, norm: nn.Module | None = None
    ) -> torch.Tensor:
        """Args: x: (..., C); residual: optional (..., C) added to the output; norm: optional LayerNorm applied to
        ``x`` first (recomputed rather than stored in training). Returns: (..., C)."""
        if self.recompute_activations and self.drop.p == 0 and torch.is_grad_enabled() and not torch.jit.is_tracing():
            # Training: the GELU output (4C per pixel) and the norm's output are recomputed in backward.
            out = gelu_mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, norm)
            return out if residual is None else out + residual
        if norm is not None:
            x = norm(x)
        if (not self.training or self.drop.p == 0) and fusion_enabled(x, self.fc1.weight):
            # CPU inference: GELU fused into fc1 and the residual add into fc2 (one oneDNN call each).
            return fused_mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, residual)
        out = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return out if residual is None else out + residual


class InternImageBlock(nn.Module):
    """One block: DCN token mixer (DCNv3, or DCNv4 for FlashInternImage) and MLP, each residual (``InternImageLayer``).

    Three residual forms, as in the original: pre-norm ``x + dp(f(norm(x)))``; ``post_norm``
    ``x + dp(norm(f(x)))``; ``res_post_norm`` (H) ``x + dp(res_post_norm(f(norm(x))))``. With ``layer_scale`` the
    branch is multiplied by ``gamma1``/``gamma2`` and ``res_post_norm`` is ignored, exactly like the original.
    """

    def __init__(
        self,
        channels: int,
        groups: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        post_norm: bool = False,
        layer_scale: float | None = None,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        res_post_norm: bool = False,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        dcn_backend: str | None = None,
        core_op: str = "DCNv3",
        dcn_output_bias: bool = True,
        mlp_fc2_bias: bool = True,
        use_dcn_v4_op: bool = False,
        recompute_activations: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.post_norm = post_norm
        self.res_post_norm = res_post_norm
        self.norm1 = _ln(channels)
        common = dict(channels=channels, kernel_size=3, stride=1, pad=1, dilation=1, group=groups)
        common.update(offset_scale=offset_scale, center_feature_scale=center_feature_scale)
        common.update(remove_center=remove_center, dw_kernel_size=dw_kernel_size, backend=dcn_backend)
        if core_op == "DCNv4":
            self.dcn: DCNv3 | DCNv4 = DCNv4(output_bias=dcn_output_bias, **common)
        else:
            self.dcn = DCNv3(use_dcn_v4_op=use_dcn_v4_op, recompute_activations=recompute_activations, **common)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = _ln(channels)
        self.mlp = MLPLayer(
            channels,
            int(channels * mlp_ratio),
            drop=drop,
            fc2_bias=mlp_fc2_bias,
            recompute_activations=recompute_activations,
        )
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(channels))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(channels))
        if res_post_norm:
            self.res_post_norm1 = _ln(channels)
            self.res_post_norm2 = _ln(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, H, W, C). Returns: (N, H, W, C)."""
        if self.layer_scale:
            if self.post_norm:
                x = x + self.drop_path(self.gamma1 * self.norm1(self.dcn(x)))
                return x + self.drop_path(self.gamma2 * self.norm2(self.mlp(x)))
            x = x + self.drop_path(self.gamma1 * self.dcn(self.norm1(x)))
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        if self.post_norm:
            x = x + self.drop_path(self.norm1(self.dcn(x)))
            return x + self.drop_path(self.norm2(self.mlp(x)))
        if self.res_post_norm:
            x = x + self.drop_path(self.res_post_norm1(self.dcn(self.norm1(x))))
            return x + self.drop_path(self.res_post_norm2(self.mlp(self.norm2(x))))
        if not self.training or isinstance(self.drop_path, nn.Identity):
            # The residual add happens inside the branch's last projection (fused on CPU inference).
            x = self.dcn(self.norm1(x), residual=x)
            return self.mlp(x, residual=x, norm=self.norm2[0])
        x = x + self.drop_path(self.dcn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class InternImageStage(nn.Module):
    """One level: blocks, optional extra post norms (level 2 of H/G), level norm, downsample.

    ``forward`` returns the level's feature map (after the level norm, before the downsample); the model applies
    ``downsample`` itself, so dense heads get exactly the maps of the original detection backbone.
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        groups: int,
        downsample: bool,
        drop_path: Sequence[float],
        post_norm: bool = False,
        center_feature_scale: bool = False,
        post_norm_block_ids: Sequence[int] | None = None,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            InternImageBlock(
                channels,
                groups,
                drop_path=drop_path[i],
                post_norm=post_norm,
                center_feature_scale=center_feature_scale,
                **block_kwargs,
            )
            for i in range(depth)
        )
        # The original creates the level norm only in this case; its presence decides checkpoint compatibility.
        self.has_norm = not post_norm or center_feature_scale
        if self.has_norm:
            self.norm = _ln(channels)
        self.post_norm_block_ids = list(post_norm_block_ids) if post_norm_block_ids else []
        if self.post_norm_block_ids:
            self.post_norms = nn.ModuleList(_ln(channels) for _ in self.post_norm_block_ids)
        self.downsample = DownsampleLayer(channels) if downsample else None
        # The submodule whose output is this level's map (FX / hook feature extraction tap it by name).
        if self.has_norm:
            self.output_module = "norm"
        elif depth - 1 in self.post_norm_block_ids:
            self.output_module = f"post_norms.{self.post_norm_block_ids.index(depth - 1)}"
        else:
            self.output_module = f"blocks.{depth - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, H, W, C). Returns: (N, H, W, C), not downsampled."""
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if i in self.post_norm_block_ids:
                x = self.post_norms[self.post_norm_block_ids.index(i)](x)
        if self.has_norm:
            x = self.norm(x)
        return x


class CrossAttention(nn.Module):
    """Multi-head attention with separate q/k/v weights and biases (official ``cross_dcn`` of H/G)."""

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"CrossAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Args: q: (N, Lq, D); k, v: (N, L, D). Returns: (N, Lq, out_dim)."""
        n, lq, _ = q.shape

        def heads(t: torch.Tensor, layer: nn.Linear, bias: torch.Tensor) -> torch.Tensor:
            return F.linear(t, layer.weight, bias).reshape(n, t.shape[1], self.num_heads, -1).transpose(1, 2)

        qh = heads(q, self.q, self.q_bias) * self.scale
        kh = heads(k, self.k, self.k_bias)
        vh = heads(v, self.v, self.v_bias)
        attn = (qh @ kh.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ vh).transpose(1, 2).reshape(n, lq, -1))


class AttentionPoolingBlock(nn.Module):
    """Attention pooling with the mean token as query (the CLIP-style projector of InternImage-H/G)."""

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.norm1_q = _ln(dim)
        self.norm1_k = _ln(dim)
        self.norm1_v = _ln(dim)
        self.cross_dcn = CrossAttention(dim, num_heads, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, L, D) tokens. Returns: (N, out_dim)."""
        q = self.norm1_q(x.mean(1, keepdim=True))
        return self.cross_dcn(q, self.norm1_k(x), self.norm1_v(x)).squeeze(1)


class InternImage(nn.Module):
    """InternImage backbone and classifier (and FlashInternImage with ``core_op='DCNv4'``).

    Args:
        in_chans: Input image channels.
        num_classes: Classifier outputs (0 for no classifier).
        channels: C, the width of level 0; level i has C * 2**i channels.
        depths: Blocks per level.
        groups: DCNv3 groups per level.
        mlp_ratio: MLP hidden width ratio.
        offset_scale: DCNv3 offset scale (2.0 for L/XL).
        layer_scale: Initial value of ``gamma1/gamma2`` (None for no layer scale).
        post_norm: Post-norm residuals (S/B/L/XL/G); also removes the level norms unless ``center_feature_scale``.
        dw_kernel_size: Depthwise kernel of the offset branch. DCNv3: None = 3 (5 for H/G). DCNv4: None = no
            depthwise conv (FlashInternImage-T), 3 for FlashInternImage-S/B/L.
        res_post_norm: Residual post norm (H).
        level2_post_norm_block_ids: Blocks of level 2 followed by an extra LN (H/G); None or empty for none.
        center_feature_scale: DCNv3 centre-feature gate (H/G).
        use_clip_projector: H/G head (x4/x3 fusion + attention pooling) instead of the conv head.
        cls_scale: Width ratio of the conv head (8C -> 8C * cls_scale).
        remove_center: Drop the DCN centre point.
        drop_rate: Dropout after the stem and in the MLPs.
        drop_path_rate: Maximum stochastic depth.
        drop_path_type: ``'linear'`` (rising over all blocks) or ``'uniform'``.
        with_cp: Start with gradient checkpointing on.
        clip_embed_dim: Width of the H/G projector input (1024 in the original).
        clip_out_dim: Width of the H/G projector output (768).
        clip_num_heads: Heads of the H/G attention pooling (16).
        dcn_backend: Force a DCN backend (default: automatic, see :mod:`internimage.ops.backends`).
        global_pool: ``'avg'``, or ``''`` for no pooling (:meth:`forward_head` then returns maps).
        core_op: ``'DCNv3'`` (InternImage) or ``'DCNv4'`` (FlashInternImage: ``DCNv4`` token mixers, masks not
            softmaxed, fused ``offset_mask`` projection).
        mlp_fc2_bias: Bias of every ``mlp.fc2`` (False for FlashInternImage-T/S/B).
        dcn_output_bias: Bias of every ``dcn.output_proj`` with ``core_op='DCNv4'`` (False for FlashInternImage-T/S/B).
        use_dcn_v4_op: With ``core_op='DCNv3'``, run the DCNv3 modules through the DCNv4 op (same outputs and
            weights; the original's detection/segmentation option).
        recompute_activations: In training, recompute the cheap elementwise activations in backward instead of
            storing them (each MLP's GELU output, each DCNv3 depthwise-conv branch): about a third less activation
            memory for a few percent more time; no GEMM is recomputed (:mod:`internimage.models.recompute`).
        meta_dim: Width of the original's ``intern_image_meta_former`` branches (64 for iNaturalist 2018; 0 = none):
            two small MLPs over a photo's date (4 values) and location (3 values) whose logits are added to the
            image logits, see :meth:`forward`.
        device: Where to create the parameters (``'meta'`` for structure only); timm's ``create_model`` passes it.
        dtype: Floating dtype of the parameters (created in fp32, converted once).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        channels: int = 64,
        depths: Sequence[int] = (4, 4, 18, 4),
        groups: Sequence[int] = (4, 8, 16, 32),
        mlp_ratio: float = 4.0,
        offset_scale: float = 1.0,
        layer_scale: float | None = None,
        post_norm: bool = False,
        dw_kernel_size: int | None = None,
        res_post_norm: bool = False,
        level2_post_norm_block_ids: Sequence[int] | None = None,
        center_feature_scale: bool = False,
        use_clip_projector: bool = False,
        cls_scale: float = 1.5,
        remove_center: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        drop_path_type: str = "linear",
        with_cp: bool = False,
        clip_embed_dim: int = 1024,
        clip_out_dim: int = 768,
        clip_num_heads: int = 16,
        dcn_backend: str | None = None,
        global_pool: str = "avg",
        core_op: str = "DCNv3",
        mlp_fc2_bias: bool = True,
        dcn_output_bias: bool = True,
        use_dcn_v4_op: bool = False,
        recompute_activations: bool = True,
        meta_dim: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        # timm's factory passes device/dtype: build in place (meta included), convert floats once at the end.
        with torch.device(device) if device is not None else contextlib.nullcontext():
            _validate(channels, depths, groups, drop_path_type)
            _validate_pool(global_pool)
            if core_op not in CORE_OPS:
                raise ValueError(f"InternImage: core_op must be one of {CORE_OPS}, got {core_op!r}")
            if use_dcn_v4_op and core_op != "DCNv3":
                raise ValueError("InternImage: use_dcn_v4_op applies to core_op='DCNv3' only")
            self.core_op = core_op
            self.in_chans = in_chans  # read by the input check of every forward
            self.num_classes = num_classes
            self.num_levels = len(depths)
            self.depths = tuple(depths)
            self.channels = channels
            self.use_clip_projector = use_clip_projector
            self.global_pool = global_pool
            self.drop_rate = drop_rate
            self.grad_checkpointing = False

            self.patch_embed = StemLayer(in_chans, channels)
            self.pos_drop = nn.Dropout(drop_rate)
            if drop_path_type == "uniform":
                dpr = [drop_path_rate] * sum(depths)
            else:
                n = sum(depths)
                dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
            self.levels = nn.ModuleList()
            self.feature_info: list[dict[str, Any]] = []
            for i, depth in enumerate(depths):
                start = sum(depths[:i])
                self.levels.append(
                    InternImageStage(
                        channels * 2**i,
                        depth,
                        groups[i],
                        downsample=i < len(depths) - 1,
                        drop_path=dpr[start : start + depth],
                        post_norm=post_norm,
                        center_feature_scale=center_feature_scale,
                        post_norm_block_ids=level2_post_norm_block_ids if i == 2 else None,
                        mlp_ratio=mlp_ratio,
                        drop=drop_rate,
                        layer_scale=layer_scale,
                        offset_scale=offset_scale,
                        dw_kernel_size=dw_kernel_size,
                        res_post_norm=res_post_norm,
                        remove_center=remove_center,
                        dcn_backend=dcn_backend,
                        core_op=core_op,
                        dcn_output_bias=dcn_output_bias,
                        mlp_fc2_bias=mlp_fc2_bias,
                        use_dcn_v4_op=use_dcn_v4_op,
                        recompute_activations=recompute_activations,
                    )
                )
                self.feature_info.append(
                    dict(
                        num_chs=channels * 2**i, reduction=4 * 2**i, module=f"levels.{i}.{self.levels[i].output_module}"
                    )
                )

            last = channels * 2 ** (len(depths) - 1)
            if use_clip_projector:
                self.dcnv3_head_x4 = nn.Sequential(nn.Conv2d(last, clip_embed_dim * 4, 1), nn.PixelShuffle(2))
                self.dcnv3_head_x3 = nn.Conv2d(last // 2, clip_embed_dim, 1)
                self.clip_projector = AttentionPoolingBlock(clip_embed_dim, clip_num_heads, clip_out_dim)
                self.fc_norm = _ln(clip_out_dim)
                self.num_features = clip_embed_dim
                self.head_hidden_size = clip_out_dim
            else:
                hidden = int(last * cls_scale)
                self.conv_head = nn.Sequential(
                    nn.Conv2d(last, hidden, 1, bias=False), nn.Sequential(nn.BatchNorm2d(hidden)), nn.GELU()
                )
                self.avgpool = nn.AdaptiveAvgPool2d(1)
                self.num_features = last
                self.head_hidden_size = hidden
            self.head = nn.Linear(self._head_in_features(), num_classes) if num_classes > 0 else nn.Identity()
            self.meta_dim = meta_dim
            if meta_dim > 0:
                self.meta_head_1 = _meta_branch(META_DATE_VALUES, meta_dim)
                self.meta_head_2 = _meta_branch(META_PLACE_VALUES, meta_dim)
                self.meta_norm = nn.LayerNorm(2 * meta_dim, eps=1e-6)
                self.meta_head = nn.Linear(2 * meta_dim, num_classes) if num_classes > 0 else nn.Identity()

            self.apply(_init_weights)
            for module in self.modules():
                if isinstance(module, (DCNv3, DCNv4)):
                    module.reset_parameters()
            if with_cp:
                self.set_grad_checkpointing(True)
        if dtype is not None:
            self.to(dtype=dtype)

    # ----------------------------------------------------------------------------------------- timm contract
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Callable[[str], tuple[int, ...]]:
        """Parameter-name -> layer ordinal, as the original layer-wise lr decay assigns it.

        ``patch_embed`` shares block 0's id; ``levels.i.downsample``/``levels.i.norm`` share the id of the first
        block of level i+1; heads, the last level's norm and ``post_norms`` share the last block's id.
        With ``coarse`` the ordinal is the level instead of the block.
        """
        starts = [sum(self.depths[:i]) for i in range(self.num_levels)]
        last_id = sum(self.depths)

        def block_id(level: int, block: int) -> int:
            if level >= self.num_levels:
                return last_id
            return level + 1 if coarse else starts[level] + block + 1

        def matcher(name: str) -> tuple[int, ...]:
            parts = name.split(".")
            if parts[0] == "patch_embed":
                return (block_id(0, 0) if not coarse else 0,)
            if parts[0] != "levels":
                return (last_id if not coarse else self.num_levels,)
            level = int(parts[1])
            if parts[2] == "blocks":
                return (block_id(level, int(parts[3])),)
            if parts[2] == "post_norms":
                return (last_id if not coarse else self.num_levels,)
            return (block_id(level + 1, 0),)

        return matcher

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in backward to save activation memory."""
        self.grad_checkpointing = enable
        for level in self.levels:
            level.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def _head_in_features(self) -> int:
        # Without pooling the H/G classifier reads the fused map directly (timm drops an attention pool the same
        # way); the conv-head models' classifier reads the conv head's output either way.
        if self.use_clip_projector and not self.global_pool:
            return self.num_features
        return self.head_hidden_size

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay beyond biases and 1-D parameters: none.

        The original recipe exempts exactly biases and 1-D parameters (norms, layer scales, attention biases),
        which timm's optimizer factory and :mod:`internimage.engine.optim` already skip by shape and name.
        """
        return set()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the final Linear with a fresh one of ``num_classes`` outputs (0 removes it).

        Args:
            num_classes: Outputs of the new classifier (0 for none).
            global_pool: ``'avg'`` or ``''`` (no pooling: :meth:`forward_head` returns maps; for H/G the attention
                projector is bypassed, and kept for a later ``'avg'``); None keeps the current.
        """
        pool = self.global_pool if global_pool is None else global_pool
        _validate_pool(pool)
        self.global_pool = pool
        self.num_classes = num_classes
        reference = next(self.parameters(), None)
        place = {} if reference is None else dict(device=reference.device, dtype=reference.dtype)
        self.head = nn.Linear(self._head_in_features(), num_classes, **place) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)
        self.head.train(self.training)
        if getattr(self, "meta_head", None) is not None:
            width = 2 * self.meta_dim
            self.meta_head = nn.Linear(width, num_classes, **place) if num_classes > 0 else nn.Identity()
            if num_classes > 0:
                _init_weights(self.meta_head)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Level outputs (after the level norm, before the downsample) as NCHW maps at strides 4..32.

        Args:
            x: (N, 3, H, W) images.
            indices: Take the last n levels if int, all if None, these levels if a sequence.
            norm: Accepted for timm compatibility; level outputs are already normalised where the model norms.
            stop_early: Stop after the last requested level.
            output_fmt: ``'NCHW'`` or ``'NHWC'``.
            intermediates_only: Return only the list of maps.

        Returns:
            The list of maps, or ``(forward_features output, maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.levels), indices)
        feats = self._run_levels(x, max_index if (stop_early or intermediates_only) else len(self.levels) - 1)
        maps = [feats[i] if output_fmt == "NHWC" else feats[i].permute(0, 3, 1, 2).contiguous() for i in take]
        if intermediates_only:
            return maps
        return self._features_from_levels(feats), maps

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the levels after the last requested one and (``prune_head``) every head module, for features.

        After pruning the head, :meth:`forward_features` and :meth:`forward` return the last kept level's map
        (for H/G without the x3/x4 fusion, which belongs to the head). ``prune_norm`` is accepted for timm: the
        level norms belong to the levels' outputs and stay.
        """
        take, max_index = feature_take_indices(len(self.levels), indices)
        self.levels = self.levels[: max_index + 1]
        self.levels[-1].downsample = None
        if prune_head:
            for name in _HEAD_MODULES:
                if getattr(self, name, None) is not None:
                    setattr(self, name, None)
            self.head = nn.Identity()
            self.num_classes = 0
            self.global_pool = ""
        return take

    # ----------------------------------------------------------------------------------------- forward
    def _run_levels(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        """Run stem and levels 0..last; returns their NHWC outputs (pre-downsample)."""
        x = checked_image_batch(x, self.in_chans)
        x = self.pos_drop(self.patch_embed(x))
        feats = []
        for i, level in enumerate(self.levels[: last + 1]):
            x = level(x)
            feats.append(x)
            if level.downsample is not None and i < last:
                x = level.downsample(x)
        return feats

    def _features_from_levels(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if self.use_clip_projector and self.dcnv3_head_x4 is not None:
            x4 = self.dcnv3_head_x4(feats[-1].permute(0, 3, 1, 2))
            return x4 + self.dcnv3_head_x3(feats[-2].permute(0, 3, 1, 2))
        return feats[-1].permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features.

        Args:
            x: (N, 3, H, W) images.

        Returns:
            (N, 8C, H/32, W/32), or for the CLIP-projector models (H/G) the fused (N, 1024, H/16, W/16) map.
        """
        return self._features_from_levels(self._run_levels(x, len(self.levels) - 1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify.

        Args:
            x: Output of :meth:`forward_features`, (N, C, h, w).
            pre_logits: Return the pooled features instead of the logits.

        Returns:
            With ``global_pool='avg'``: (N, num_classes) logits, or (N, head_hidden_size) with ``pre_logits`` or
            ``num_classes=0``. With ``global_pool=''``: maps, (N, head_hidden_size, h, w) after the conv head (for
            H/G, whose pooling is the attention projector, the (N, num_features, h, w) input itself), and
            (N, num_classes, h, w) logits per position.
        """
        if not self.use_clip_projector and self.conv_head is not None:
            x = self.conv_head(x)
        if not self.global_pool:
            return x if pre_logits else self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.use_clip_projector:
            x = self.fc_norm(self.clip_projector(x.flatten(2).transpose(1, 2)))
        else:
            x = self.avgpool(x).flatten(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of images (and, with ``meta_dim``, of their date and location).

        Args:
            x: (N, 3, H, W) images.
            meta: (N, 7) date (sin / cos of month and hour) and location (unit vector of latitude / longitude) of
                each image, see :func:`internimage.data.inaturalist_meta`; only with ``meta_dim > 0``. None: all
                zeros, what the original feeds for a photo without date or location.

        Returns:
            (N, num_classes) logits.
        """
        logits = self.forward_head(self.forward_features(x))
        if getattr(self, "meta_head", None) is None or self.num_classes == 0 or not self.global_pool:
            # (An FX trace passes a Proxy for the unused argument: only real tensors are refused.)
            if isinstance(meta, torch.Tensor):
                raise ValueError("InternImage.forward: meta given, but the model has no meta branches (meta_dim=0)")
            return logits
        if meta is None:
            meta = logits.new_zeros(logits.shape[0], META_DATE_VALUES + META_PLACE_VALUES)
        if meta.shape != (logits.shape[0], META_DATE_VALUES + META_PLACE_VALUES):
            raise ValueError(f"InternImage.forward: meta must be (N, 7) = (date 4 + place 3), got {tuple(meta.shape)}")
        meta = meta.to(logits.dtype)
        date, place = meta[:, :META_DATE_VALUES], meta[:, META_DATE_VALUES:]
        joint = torch.cat([self.meta_head_1(date), self.meta_head_2(place)], dim=-1)
        return logits + self.meta_head(self.meta_norm(joint))


def _validate(channels: int, depths: Sequence[int], groups: Sequence[int], drop_path_type: str) -> None:
    if len(depths) != len(groups) or not depths:
        raise ValueError(f"InternImage: depths {tuple(depths)} and groups {tuple(groups)} must have the same length")
    for i, g in enumerate(groups):
        if (channels * 2**i) % g:
            raise ValueError(f"InternImage: level {i} has {channels * 2**i} channels, not divisible by groups={g}")
    if drop_path_type not in ("linear", "uniform"):
        raise ValueError(f"InternImage: drop_path_type must be 'linear' or 'uniform', got {drop_path_type!r}")


def _validate_pool(pool: str) -> None:
    if pool not in ("avg", ""):
        raise ValueError(f"InternImage: global_pool must be 'avg' or '' (no pooling), got {pool!r}")


#: Modules after the last level (pruned for feature extraction).
_HEAD_MODULES = ("conv_head", "avgpool", "dcnv3_head_x4", "dcnv3_head_x3", "clip_projector", "fc_norm")
_HEAD_MODULES += ("meta_head_1", "meta_head_2", "meta_norm", "meta_head")
#: Values of the date and of the location inputs of the meta branches.
META_DATE_VALUES, META_PLACE_VALUES = 4, 3


class MetaEncoder(nn.Module):
    """Residual two-layer MLP of the meta branches: ``x + LN(ReLU(w2 LN(ReLU(w1 x))))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_fn1, self.norm_fn2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_fn1(F.relu(self.w1(x)))
        return x + self.norm_fn2(F.relu(self.w2(y)))


def _meta_branch(in_dim: int, dim: int) -> nn.Sequential:
    # Indices 0 / 2 / 3 are the official parameter names (``meta_head_1.0.weight``, ``.2`` LN, ``.3.w1``).
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.LayerNorm(dim), MetaEncoder(dim))


def checked_image_batch(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``x`` itself, after one clear error for a batch the stem cannot take (it would fail deep inside a conv).

    A timm no-trace function: FX graphs call it as one node, so the check still runs on traced models.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return x
    if x.dim() != 4 or x.shape[1] != in_chans or not x.is_floating_point():
        raise ValueError(
            f"InternImage expects a float image batch (N, C, H, W) with C={in_chans}, "
            f"got a tensor of dtype {str(x.dtype).replace('torch.', '')} and shape {tuple(x.shape)}"
        )
    return x


# torch.fx (timm's FX feature extraction, torchvision's create_feature_extractor): modules that run custom ops or
# autograd Functions, or pick a kernel by device / autocast state, are leaves; everything between them traces.
for _leaf in (StemLayer, DownsampleLayer, MLPLayer, DCNv3, DCNv4):
    register_notrace_module(_leaf)
register_notrace_function(checked_image_batch)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class InternImageArch:
    """Architecture of one size (official ``classification/configs/*.yaml``); ``kwargs()`` feeds ``InternImage``."""

    channels: int
    depths: tuple[int, ...]
    groups: tuple[int, ...]
    offset_scale: float = 1.0
    layer_scale: float | None = None
    post_norm: bool = False
    dw_kernel_size: int | None = None
    res_post_norm: bool = False
    level2_post_norm_block_ids: tuple[int, ...] | None = None
    center_feature_scale: bool = False
    use_clip_projector: bool = False
    core_op: str = "DCNv3"
    mlp_fc2_bias: bool = True
    dcn_output_bias: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


_FLASH: dict[str, Any] = dict(core_op="DCNv4", mlp_fc2_bias=False, dcn_output_bias=False)

ARCHS: dict[str, InternImageArch] = {
    "t": InternImageArch(64, (4, 4, 18, 4), (4, 8, 16, 32)),
    "s": InternImageArch(80, (4, 4, 21, 4), (5, 10, 20, 40), layer_scale=1e-5, post_norm=True),
    "b": InternImageArch(112, (4, 4, 21, 4), (7, 14, 28, 56), layer_scale=1e-5, post_norm=True),
    "l": InternImageArch(160, (5, 5, 22, 5), (10, 20, 40, 80), offset_scale=2.0, layer_scale=1e-5, post_norm=True),
    "xl": InternImageArch(192, (5, 5, 24, 5), (12, 24, 48, 96), offset_scale=2.0, layer_scale=1e-5, post_norm=True),
    "h": InternImageArch(
        320,
        (6, 6, 32, 6),
        (10, 20, 40, 80),
        dw_kernel_size=5,
        res_post_norm=True,
        level2_post_norm_block_ids=(5, 11, 17, 23, 29),
        center_feature_scale=True,
        use_clip_projector=True,
    ),
    "g": InternImageArch(
        512,
        (2, 2, 48, 4),
        (16, 32, 64, 128),
        post_norm=True,
        dw_kernel_size=5,
        level2_post_norm_block_ids=(5, 11, 17, 23, 29, 35, 41, 47),
        center_feature_scale=True,
        use_clip_projector=True,
    ),
    # FlashInternImage (DCNv4/classification/configs/flash_intern_image_*.yaml): InternImage sizes with DCNv4 mixers;
    # T has no depthwise conv in the offset branch, B uses offset_scale 0.5; fc2/output_proj biases only for L.
    "flash_t": InternImageArch(64, (4, 4, 18, 4), (4, 8, 16, 32), **_FLASH),
    "flash_s": InternImageArch(
        80, (4, 4, 21, 4), (5, 10, 20, 40), layer_scale=1e-5, post_norm=True, dw_kernel_size=3, **_FLASH
    ),
    "flash_b": InternImageArch(
        112,
        (4, 4, 21, 4),
        (7, 14, 28, 56),
        offset_scale=0.5,
        layer_scale=1e-5,
        post_norm=True,
        dw_kernel_size=3,
        **_FLASH,
    ),
    "flash_l": InternImageArch(
        160,
        (5, 5, 22, 5),
        (10, 20, 40, 80),
        offset_scale=2.0,
        layer_scale=1e-5,
        post_norm=True,
        dw_kernel_size=3,
        core_op="DCNv4",
    ),
    # Tiny variants for tests: every switch of the big ones at a few thousand parameters.
    "test": InternImageArch(16, (1, 1, 2, 1), (1, 2, 4, 8)),
    "test_post": InternImageArch(16, (1, 1, 2, 1), (1, 2, 4, 8), offset_scale=2.0, layer_scale=1e-5, post_norm=True),
    "test_h": InternImageArch(
        16,
        (1, 1, 3, 1),
        (1, 2, 4, 8),
        dw_kernel_size=5,
        res_post_norm=True,
        level2_post_norm_block_ids=(0, 2),
        center_feature_scale=True,
        use_clip_projector=True,
        extra=dict(clip_embed_dim=32, clip_out_dim=24, clip_num_heads=4),
    ),
    "test_g": InternImageArch(
        16,
        (1, 1, 3, 1),
        (1, 2, 4, 8),
        post_norm=True,
        dw_kernel_size=5,
        level2_post_norm_block_ids=(1,),
        center_feature_scale=True,
        use_clip_projector=True,
        extra=dict(clip_embed_dim=32, clip_out_dim=24, clip_num_heads=4),
    ),
}


def _cfg(size: int, num_classes: int = 1000, stride: int = 32, **kwargs: Any) -> dict[str, Any]:
    """timm pretrained cfg; ``stride`` is that of :meth:`InternImage.forward_features` (16 for H/G)."""
    return {
        "num_classes": num_classes,
        "input_size": (3, size, size),
        "pool_size": (size // stride, size // stride),
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "patch_embed.conv1",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2211.05778",
        "paper_name": "InternImage: Exploring Large-Scale Vision Foundation Models with Deformable Convolutions",
        "origin_url": "https://github.com/OpenGVLab/InternImage",
        **kwargs,
    }


def _official(filename: str, size: int, num_classes: int = 1000, stride: int = 32) -> dict[str, Any]:
    return _cfg(size, num_classes, stride, hf_hub_id="OpenGVLab/InternImage", hf_hub_filename=f"{filename}.pth")


def _flash(filename: str, size: int) -> dict[str, Any]:
    return _cfg(
        size,
        hf_hub_id="OpenGVLab/DCNv4",
        hf_hub_filename=f"{filename}.pth",
        paper_ids="arXiv:2401.06197",
        paper_name="Efficient Deformable ConvNets: Rethinking Dynamic and Sparse Operator for Vision Applications",
        origin_url="https://github.com/OpenGVLab/DCNv4",
    )


#: The registry: model name -> (key of its architecture in :data:`ARCHS`, its timm pretrained cfg: ``input_size``,
#: ``num_classes``, ``mean``, ``std``, weights URL). Names follow the official model zoo.
MODEL_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "internimage_t_1k_224": ("t", _official("internimage_t_1k_224", 224)),
    "internimage_s_1k_224": ("s", _official("internimage_s_1k_224", 224)),
    "internimage_b_1k_224": ("b", _official("internimage_b_1k_224", 224)),
    "internimage_l_22k_384": ("l", _official("internimage_l_22k_192to384", 384, 21841)),
    "internimage_l_22kto1k_384": ("l", _official("internimage_l_22kto1k_384", 384)),
    "internimage_xl_22k_384": ("xl", _official("internimage_xl_22k_192to384", 384, 21841)),
    "internimage_xl_22kto1k_384": ("xl", _official("internimage_xl_22kto1k_384", 384)),
    "internimage_h_jointto22k_384": ("h", _official("internimage_h_jointto22k_384", 384, 21841, stride=16)),
    "internimage_h_22kto1k_384": ("h", _official("internimage_h_22kto1k_384", 384, stride=16)),
    "internimage_h_22kto1k_640": ("h", _official("internimage_h_22kto1k_640", 640, stride=16)),
    "internimage_g_jointto22k_384": ("g", _official("internimage_g_jointto22k_384", 384, 21841, stride=16)),
    "internimage_g_22kto1k_512": ("g", _official("internimage_g_22kto1k_512", 512, stride=16)),
    # Names of the official configs (DCNv4/classification/configs); the L weights file is spelled differently.
    "flash_intern_image_t_1k_224": ("flash_t", _flash("flash_intern_image_t_1k_224", 224)),
    "flash_intern_image_s_1k_224": ("flash_s", _flash("flash_intern_image_s_1k_224", 224)),
    "flash_intern_image_b_1k_224": ("flash_b", _flash("flash_intern_image_b_1k_224", 224)),
    "flash_intern_image_l_22kto1k_384": ("flash_l", _flash("flash_internimage_l_22kto1k_384", 384)),
    "internimage_test_32": ("test", _cfg(32, 10)),
    "internimage_test_post_32": ("test_post", _cfg(32, 10)),
    "internimage_test_h_32": ("test_h", _cfg(32, 10, stride=16)),
    "internimage_test_g_32": ("test_g", _cfg(32, 10, stride=16)),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)

default_cfgs = generate_default_cfgs({name: cfg for name, (_, cfg) in MODEL_SPECS.items()})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> InternImage:
    arch_name, cfg = MODEL_SPECS[variant]
    arch = ARCHS[arch_name].kwargs()
    arch.update(kwargs)
    arch.setdefault("num_classes", cfg["num_classes"])
    feature_cfg: dict[str, Any] = dict(out_indices=(0, 1, 2, 3), feature_cls="getter")
    if kwargs.get("feature_cls") in ("fx", "hook"):
        # FX / hook extraction return the tapped modules' own outputs, which are channels-last (the getter permutes).
        feature_cfg["output_fmt"] = "NHWC"
    return build_model_with_cfg(
        InternImage, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **arch
    )


# One explicit factory per name (greppable, completable); timm's registry finds them by name.
@register_model
def internimage_t_1k_224(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_t_1k_224`` (arch T)."""
    return _create("internimage_t_1k_224", pretrained, **kwargs)


@register_model
def internimage_s_1k_224(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_s_1k_224`` (arch S)."""
    return _create("internimage_s_1k_224", pretrained, **kwargs)


@register_model
def internimage_b_1k_224(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_b_1k_224`` (arch B)."""
    return _create("internimage_b_1k_224", pretrained, **kwargs)


@register_model
def internimage_l_22k_384(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_l_22k_384`` (arch L)."""
    return _create("internimage_l_22k_384", pretrained, **kwargs)


@register_model
def internimage_l_22kto1k_384(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_l_22kto1k_384`` (arch L)."""
    return _create("internimage_l_22kto1k_384", pretrained, **kwargs)


@register_model
def internimage_xl_22k_384(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_xl_22k_384`` (arch XL)."""
    return _create("internimage_xl_22k_384", pretrained, **kwargs)


@register_model
def internimage_xl_22kto1k_384(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_xl_22kto1k_384`` (arch XL)."""
    return _create("internimage_xl_22kto1k_384", pretrained, **kwargs)


@register_model
def internimage_h_jointto22k_384(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_h_jointto22k_384`` (arch H)."""
    return _create("internimage_h_jointto22k_384", pretrained, **kwargs)


@register_model
def internimage_h_22kto1k_384(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_h_22kto1k_384`` (arch H)."""
    return _create("internimage_h_22kto1k_384", pretrained, **kwargs)


@register_model
def internimage_h_22kto1k_640(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_h_22kto1k_640`` (arch H)."""
    return _create("internimage_h_22kto1k_640", pretrained, **kwargs)


@register_model
def internimage_g_jointto22k_384(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_g_jointto22k_384`` (arch G)."""
    return _create("internimage_g_jointto22k_384", pretrained, **kwargs)


@register_model
def internimage_g_22kto1k_512(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_g_22kto1k_512`` (arch G)."""
    return _create("internimage_g_22kto1k_512", pretrained, **kwargs)


@register_model
def flash_intern_image_t_1k_224(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """FlashInternImage ``flash_intern_image_t_1k_224`` (arch FLASH_T)."""
    return _create("flash_intern_image_t_1k_224", pretrained, **kwargs)


@register_model
def flash_intern_image_s_1k_224(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """FlashInternImage ``flash_intern_image_s_1k_224`` (arch FLASH_S)."""
    return _create("flash_intern_image_s_1k_224", pretrained, **kwargs)


@register_model
def flash_intern_image_b_1k_224(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """FlashInternImage ``flash_intern_image_b_1k_224`` (arch FLASH_B)."""
    return _create("flash_intern_image_b_1k_224", pretrained, **kwargs)


@register_model
def flash_intern_image_l_22kto1k_384(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """FlashInternImage ``flash_intern_image_l_22kto1k_384`` (arch FLASH_L)."""
    return _create("flash_intern_image_l_22kto1k_384", pretrained, **kwargs)


@register_model
def internimage_test_32(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_test_32`` (arch TEST)."""
    return _create("internimage_test_32", pretrained, **kwargs)


@register_model
def internimage_test_post_32(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_test_post_32`` (arch TEST_POST)."""
    return _create("internimage_test_post_32", pretrained, **kwargs)


@register_model
def internimage_test_h_32(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_test_h_32`` (arch TEST_H)."""
    return _create("internimage_test_h_32", pretrained, **kwargs)


@register_model
def internimage_test_g_32(pretrained: bool = False, **kwargs: Any) -> InternImage:
    """InternImage ``internimage_test_g_32`` (arch TEST_G)."""
    return _create("internimage_test_g_32", pretrained, **kwargs)


def num_params(model: nn.Module) -> int:
    """Number of parameters (not buffers)."""
    return sum(p.numel() for p in model.parameters())


def dense_layer_id(name: str, depths: Sequence[int]) -> int:
    """Layer id of an InternImage parameter under the official detection / segmentation layer-decay rule.

    The rule of the original's ``mmcv_custom/custom_layer_decay_optimizer_constructor.py`` (detection and
    segmentation alike), on a name relative to the backbone: ``patch_embed`` is 0; block j of level s (and
    ``levels.s.post_norms.j``, as the original parses them) ``1 + sum(depths[:s]) + j``; ``levels.s.downsample`` /
    ``levels.s.norm`` the id of the first block of level s+1 (the last level's those of the last level); anything
    else ``sum(depths) + 1``. The lr scale of id i is ``decay ** (sum(depths) + 1 - i)``.
    """
    parts = name.split(".")
    num_layers = sum(depths)
    if parts[0] == "patch_embed":
        return 0
    if parts[0] != "levels":
        return num_layers + 1
    level = int(parts[1])
    if parts[2] in ("downsample", "norm"):
        return 1 + sum(depths[: min(level + 1, len(depths) - 1)])
    return 1 + sum(depths[:level]) + int(parts[3])
