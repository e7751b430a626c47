"""DCNv3: the public function, its ``torch.library`` custom op and the ``DCNv3`` module.

The operator (the official ``ops_dcnv3/functions/dcnv3_func.py``) samples, for every output pixel and group,
P = Kh*Kw points around a base grid displaced by learned offsets, and returns their mask-weighted sum::

    out[n, y, x, g*D:(g+1)*D] = sum_p mask[n, y, x, g, p] * bilinear(input[..., g*D:(g+1)*D], loc(n, y, x, g, p))

Everything is NHWC; offsets are laid out [g][p][x, y] with the x (width) component first and points in x-outer
order; ``offset_scale`` multiplies both the base grid and the offsets; samples outside the image read zeros. With
``softmax=True`` the mask holds logits and the op normalises them over each group's P points itself (the module's
softmax, fused); offset and mask may be pixel-strided views of one projection output.

One op name (``internimage::dcnv3``) fronts every backend; the backend is resolved in
:mod:`internimage.ops.backends`. Under ``torch.export`` / ONNX export the pure-PyTorch reference is traced
instead, so exported graphs contain only standard ops (``GridSample``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .args import DCNv3Args, check_inputs, make_args
from .backends import get_backend
from .custom_op import DCN_SCALARS, differentiable_op
from .dcnv4 import dcnv4, pack_offset_mask
from .dispatch import CenterFeatureScaleModule, is_exporting, keep_dcn_custom_op, plain_eager_inference, resolve
from .fused_linear import fused_linear, onednn_eligible
from .reference import dcnv3_reference, point_weights

__all__ = ["dcnv3", "DCNv3", "CenterFeatureScaleModule", "plain_eager_inference"]


def _forward(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, args: DCNv3Args, backend: str
) -> torch.Tensor:
    """The op's body (also called directly in plain eager inference)."""
    if input.numel() == 0 or offset.numel() == 0:
        return input.new_zeros(_out_shape(input, offset))
    # Backends may return views; the fake kernel promises a contiguous NHWC tensor.
    return get_backend(backend).forward(input, offset, mask, args).contiguous()


def _op_forward(input, offset, mask, *static) -> torch.Tensor:
    return _forward(input, offset, mask, DCNv3Args(*static[:-1]), static[-1])


def _op_backward(grad_output, input, offset, mask, *static) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if input.numel() == 0 or offset.numel() == 0:
        return input.new_zeros(input.shape), offset.new_zeros(offset.shape), mask.new_zeros(mask.shape)
    grads = get_backend(static[-1]).backward(grad_output, input, offset, mask, DCNv3Args(*static[:-1]))
    return tuple(g.contiguous() for g in grads)


def _out_shape(input: torch.Tensor, offset: torch.Tensor) -> tuple[int, int, int, int]:
    return (input.shape[0], offset.shape[1], offset.shape[2], input.shape[3])


_dcnv3_op, _ = differentiable_op(
    "internimage::dcnv3",
    ("input", "offset", "mask"),
    DCN_SCALARS,
    _op_forward,
    _op_backward,
    lambda input, offset, mask, *static: input.new_empty(_out_shape(input, offset)),
)


def dcnv3(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int | tuple[int, int] = 3,
    stride: int | tuple[int, int] = 1,
    pad: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
    backend: str | None = None,
    softmax: bool = False,
) -> torch.Tensor:
    """Deformable convolution v3 sampling core (no projections; optionally the mask softmax).

    Args:
        input: (N, H, W, G*D) features.
        offset: (N, Ho, Wo, G*P*2) offsets in pixels, laid out [g][p][x, y], P = Kh*Kw (minus 1 with
            ``remove_center``), points in x-outer order.
        mask: (N, Ho, Wo, G*P) weight of each sampled point, or its logits with ``softmax``.
            ``offset`` and ``mask`` may be slices of one wider tensor (one projection): the fused CPU and Triton
            kernels read such pixel-strided views in place.
        kernel_size: K or (Kh, Kw).
        stride: Stride of the base grid, int or (h, w).
        pad: Zero padding, int or (h, w).
        dilation: Dilation of the base grid, int or (h, w).
        group: Number of groups G.
        offset_scale: Multiplies both the base grid and the offsets.
        remove_center: Skip the centre point of an odd square kernel.
        backend: ``None``/``'auto'``, ``'reference'``, ``'cpu'`` or ``'triton'``; default from
            ``INTERNIMAGE_DCN_BACKEND`` or the device.
        softmax: Normalise ``mask`` with a softmax over the P points of each (pixel, group) inside the op (what
            the DCNv3 module does; fused, it costs no extra pass over memory and the gradient is w.r.t. the
            logits).

    Returns:
        (N, Ho, Wo, G*D) in ``input.dtype``.

    Raises:
        ValueError: on inconsistent shapes, dtypes or arguments (one line naming the problem).
    """
    args = make_args(kernel_size, stride, pad, dilation, group, offset_scale, remove_center, softmax)
    check_inputs(input, offset, mask, args)
    offset = offset.to(input.dtype)
    mask = mask.to(input.dtype)
    keep_op = keep_dcn_custom_op()
    if is_exporting():
        if not keep_op:
            return dcnv3_reference(input, offset, mask, args)
        if softmax:
            # The TensorRT plugin takes normalised masks.
            mask = point_weights(mask, args, mask.dtype)
            args = args._replace(softmax=False)
    name = resolve(backend, input.device.type, input.dtype)
    if not keep_op and plain_eager_inference(input, offset, mask):
        # Skipping the custom-op dispatch saves ~20 us per call, visible at batch 1 (30 calls per InternImage-T).
        return _forward(input, offset, mask, args, name)
    return _dcnv3_op(input, offset, mask, *args, name)


class DCNv3(nn.Module):
    """The DCNv3 token mixer of InternImage, with the official parameter names.

    ``x = input_proj(in)``; ``x1 = GELU(LN(dw_conv(in)))``; offsets and per-group-softmaxed masks are linear in
    ``x1``; ``y = dcnv3(x, offset, mask)``; with ``center_feature_scale`` the output is blended with ``x`` by a
    per-group sigmoid gate; ``out = output_proj(y)``.

    As computed: the offset and mask projections run as one GEMM whose halves the op reads in place, the softmax
    happens inside the op, the linear layers go through :mod:`internimage.ops.fused_linear` (oneDNN on CPU float32)
    and ``forward(input, residual)`` can add a residual inside ``output_proj``. All of it equals the plain
    computation above (tests check float64 equality).

    Args:
        channels: C, input and output channels.
        kernel_size: DCN kernel size K.
        dw_kernel_size: Depthwise conv kernel of the offset branch (defaults to ``kernel_size``).
        stride: Operator stride.
        pad: Operator padding.
        dilation: Operator dilation.
        group: Groups G; C must be divisible by G.
        offset_scale: Multiplies base grid and offsets (2.0 for InternImage-L/XL).
        center_feature_scale: Add the centre-feature gate (InternImage-H/G).
        remove_center: Drop the centre sampling point.
        backend: Force a DCN backend for this module (default: automatic).
        use_dcn_v4_op: Run the sampling through :func:`~internimage.ops.dcnv4.dcnv4` (InternImage PR #277): the
            offsets and the already-softmaxed masks are packed per group into the fused DCNv4 tensor, so the output
            and the weights are those of DCNv3.
        recompute_activations: In training, recompute the depthwise-conv branch (conv, LayerNorm, GELU) in
            backward instead of storing its intermediates.
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        backend: str | None = None,
        use_dcn_v4_op: bool = False,
        recompute_activations: bool = False,
    ) -> None:
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"DCNv3: channels ({channels}) must be divisible by group ({group})")
        if remove_center and kernel_size % 2 == 0:
            raise ValueError(f"DCNv3: remove_center needs an odd kernel_size, got {kernel_size}")
        dw_kernel_size = dw_kernel_size if dw_kernel_size is not None else kernel_size
        self.channels = channels
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = offset_scale
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        self.backend = backend
        self.use_dcn_v4_op = use_dcn_v4_op
        self.recompute_activations = recompute_activations
        points = kernel_size * kernel_size - self.remove_center

        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2, groups=channels),
            nn.Sequential(ToChannelsLast(), nn.LayerNorm(channels, eps=1e-6)),
            nn.GELU(),
        )
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
            self.center_feature_scale_module = CenterFeatureScaleModule()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: zero offset/mask projections (start as a fixed grid), xavier in/out projections."""
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.center_feature_scale:
            nn.init.zeros_(self.center_feature_scale_proj_weight)
            nn.init.zeros_(self.center_feature_scale_proj_bias)

    def _offset_mask_projection(
        self, x1: torch.Tensor, eligible: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # One GEMM for both projections (the weights stay separate parameters, as in official checkpoints); the
        # op reads the two halves in place and applies the per-group mask softmax itself.
        # (Not cached across calls: writes through ``.data`` would not invalidate a cache.)
        weight = torch.cat((self.offset.weight, self.mask.weight))
        bias = torch.cat((self.offset.bias, self.mask.bias))
        out = fused_linear(x1, weight, bias, eligible=eligible)
        return out.split((self.offset.out_features, self.mask.out_features), -1)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Args: input: (N, H, W, C); residual: optional (N, Ho, Wo, C) added to the output (fused on CPU
        inference). Returns: (N, Ho, Wo, C)."""
        n, h, w, _ = input.shape
        eligible = onednn_eligible(input, self.input_proj.weight)  # once for the three projections
        x = fused_linear(input, self.input_proj.weight, self.input_proj.bias, eligible=eligible)
        x_proj = x
        if self.recompute_activations and self.training and torch.is_grad_enabled():
            # Depthwise conv + LN + GELU are cheap to redo and their intermediates are 2C per pixel.
            x1 = checkpoint(self.dw_conv, input.permute(0, 3, 1, 2), use_reentrant=False, preserve_rng_state=False)
        else:
            x1 = self.dw_conv(input.permute(0, 3, 1, 2))
        offset, mask = self._offset_mask_projection(x1, eligible)
        geometry = (self.kernel_size, self.stride, self.pad, self.dilation, self.group, self.offset_scale)
        if self.use_dcn_v4_op:
            mask = F.softmax(mask.reshape(n, h, w, self.group, -1), -1).reshape(n, h, w, -1)
            offset_mask = pack_offset_mask(offset, mask.to(offset.dtype), self.group)
            x = dcnv4(x, offset_mask, *geometry, bool(self.remove_center), backend=self.backend)
        else:
            x = dcnv3(x, offset, mask, *geometry, bool(self.remove_center), backend=self.backend, softmax=True)
        if self.center_feature_scale:
            scale = self.center_feature_scale_module(
                x1, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
            )
            scale = scale.to(x.dtype).repeat_interleave(self.group_channels, dim=-1)
            x = x * (1 - scale) + x_proj * scale
        return fused_linear(x, self.output_proj.weight, self.output_proj.bias, residual=residual, eligible=eligible)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, group={self.group}, "
            f"offset_scale={self.offset_scale}, center_feature_scale={self.center_feature_scale}, "
            f"remove_center={bool(self.remove_center)}, use_dcn_v4_op={self.use_dcn_v4_op}"
        )


class ToChannelsLast(nn.Module):
    """NCHW -> NHWC permute, a module so the official ``Sequential`` indices (and state-dict keys) line up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """NHWC -> NCHW permute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)
