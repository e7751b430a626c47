"""DCNv4: the public function, its ``torch.library`` custom op and the ``DCNv4`` module.

DCNv4 (Xiong et al., "Efficient Deformable ConvNets", arXiv 2401.06197; original code OpenGVLab/DCNv4, MIT) keeps
the sampling geometry of DCNv3 exactly (the official ``DCNv4_op``): same base grid, ``offset_scale`` on grid and
offsets, x-outer point order, same out-of-bounds rule. It differs in two ways that matter to callers:

* **No softmax**: the masks are used as given (the DCNv3 *module* softmaxes; the DCNv4 module does not).
* **One fused tensor** ``offset_mask`` of shape (N, Ho, Wo, W) with W >= 3*G*P (the module emits
  W = ceil(3*G*P / 8) * 8): for group g, columns ``[3*P*g, 3*P*g + 2*P)`` are the P (x, y) offset pairs and
  ``[3*P*g + 2*P, 3*P*(g+1))`` the P masks; columns from 3*G*P on are padding and ignored (zero gradient).

Since the geometry is DCNv3's, the op runs on the DCNv3 backends (:mod:`internimage.ops.backends`, same names and
``INTERNIMAGE_DCN_BACKEND`` override). The C++ CPU kernel reads the fused tensor in place (offset and mask views
with group strides of 3P); the other backends get it split into DCNv3's offset/mask tensors. Offset and mask
gradients are packed back into the fused layout. ``benchmarks/dcnv4.py`` measures the cost against DCNv3 on the same
values: 0.87-0.97x on CPU (InternImage-T stage shapes). Under ``torch.export`` / ONNX export the pure-PyTorch
reference is traced instead, so exported graphs hold only standard ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .args import DCNv3Args, check_layout, make_args
from .backends import get_backend
from .custom_op import dcn_scalars, differentiable_op
from .dispatch import CenterFeatureScaleModule, is_exporting, plain_eager_inference, resolve
from .fused_linear import fused_linear
from .reference import dcnv3_reference

__all__ = ["dcnv4", "DCNv4", "offset_mask_channels", "pack_offset_mask", "split_offset_mask"]


def offset_mask_channels(group: int, num_points: int) -> int:
    """Width of the fused tensor the DCNv4 module emits: 3*G*P rounded up to a multiple of 8."""
    return math.ceil(3 * group * num_points / 8) * 8


def split_offset_mask(offset_mask: torch.Tensor, group: int, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused DCNv4 tensor -> DCNv3 (offset, mask).

    Args:
        offset_mask: (N, Ho, Wo, W), W >= 3*G*P, per group [2P offsets (x, y pairs), P masks], then padding.
        group: G.
        num_points: P.

    Returns:
        ``(offset, mask)``: contiguous (N, Ho, Wo, G*P*2) and (N, Ho, Wo, G*P).
    """
    n, ho, wo, width = offset_mask.shape
    # Flattening the pixels first keeps the copies 2-level loops over rows (measured ~4x faster than copying the
    # 5-D strided views directly).
    rows = offset_mask.reshape(n * ho * wo, width)[:, : 3 * group * num_points].unflatten(-1, (group, 3 * num_points))
    offset, mask = rows.split((2 * num_points, num_points), dim=-1)
    offset = offset.contiguous().view(n, ho, wo, group * 2 * num_points)
    return offset, mask.contiguous().view(n, ho, wo, group * num_points)


def _fused_views(offset_mask: torch.Tensor, group: int, num_points: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Views of the fused tensor covering the offsets and the masks of all groups, and the group stride (3P).

    Group g's offsets start at column 3Pg and its masks at 3Pg + 2P; the views span from the first group's start to
    the last group's end, so a kernel with group stride 3P reads exactly those columns.
    """
    stride = 3 * num_points
    offsets = offset_mask[..., : (group - 1) * stride + 2 * num_points]
    masks = offset_mask[..., 2 * num_points : 2 * num_points + (group - 1) * stride + num_points]
    return offsets, masks, stride


def pack_offset_mask(offset: torch.Tensor, mask: torch.Tensor, group: int, width: int | None = None) -> torch.Tensor:
    """DCNv3 (offset, mask) -> fused DCNv4 tensor (differentiable; the inverse of :func:`split_offset_mask`).

    Args:
        offset: (N, Ho, Wo, G*P*2) offsets [g][p][x, y].
        mask: (N, Ho, Wo, G*P) masks.
        group: G.
        width: Total width W >= 3*G*P; default ``offset_mask_channels(G, P)``. Padding columns are zero.

    Returns:
        (N, Ho, Wo, W).
    """
    n, ho, wo, _ = offset.shape
    points = mask.shape[-1] // group
    width = offset_mask_channels(group, points) if width is None else width
    fused = torch.cat((offset.reshape(n, ho, wo, group, 2 * points), mask.reshape(n, ho, wo, group, points)), dim=-1)
    fused = fused.reshape(n, ho, wo, 3 * group * points)
    pad = width - 3 * group * points
    return F.pad(fused, (0, pad)) if pad else fused


def check_inputs(input: torch.Tensor, offset_mask: torch.Tensor, args: DCNv3Args) -> None:
    """Raise a one-line ``ValueError`` naming the first inconsistent shape, dtype or device."""
    n, ho, wo = check_layout("dcnv4", {"input": input, "offset_mask": offset_mask}, args)
    used = 3 * args.group * args.num_points
    if tuple(offset_mask.shape[:3]) != (n, ho, wo) or offset_mask.shape[3] < used:
        want = (n, ho, wo, offset_mask_channels(args.group, args.num_points))
        raise ValueError(
            f"dcnv4: offset_mask must have shape {want} (N, Ho, Wo, ceil(3*G*P/8)*8; any width >= {used} works), "
            f"got {tuple(offset_mask.shape)}"
        )
    if not (input.is_floating_point() and offset_mask.is_floating_point()):
        raise ValueError(f"dcnv4: expected floating point tensors, got {input.dtype} and {offset_mask.dtype}")
    if input.device != offset_mask.device:
        raise ValueError(f"dcnv4: tensors are on different devices: {input.device} and {offset_mask.device}")


# ------------------------------------------------------------------------------------------------- custom op
def _forward(input: torch.Tensor, offset_mask: torch.Tensor, args: DCNv3Args, backend: str) -> torch.Tensor:
    """The op's body (also called directly in plain eager inference)."""
    if input.numel() == 0 or offset_mask.numel() == 0:
        return input.new_zeros(_out_shape(input, offset_mask))
    if backend == "cpu":
        # The C++ kernel reads the fused layout in place (group strides 3P): no split copies.
        from . import cpu

        offset, mask, stride = _fused_views(offset_mask, args.group, args.num_points)
        return cpu.forward(input, offset, mask, args, stride, stride)
    offset, mask = split_offset_mask(offset_mask, args.group, args.num_points)
    # Backends may return views; the fake kernel promises a contiguous NHWC tensor.
    return get_backend(backend).forward(input, offset, mask, args).contiguous()


def _op_forward(input, offset_mask, *static) -> torch.Tensor:
    return _forward(input, offset_mask, DCNv3Args(*static[:-1]), static[-1])


def _op_backward(grad_output, input, offset_mask, *static) -> tuple[torch.Tensor, torch.Tensor]:
    args, backend = DCNv3Args(*static[:-1]), static[-1]
    if input.numel() == 0 or offset_mask.numel() == 0:
        return input.new_zeros(input.shape), offset_mask.new_zeros(offset_mask.shape)
    if backend == "cpu":
        from . import cpu

        offset, mask, stride = _fused_views(offset_mask, args.group, args.num_points)
        grad_input, grad_offset, grad_mask = cpu.backward(
            grad_output, input, offset, mask, args, offset_group_stride=stride, mask_group_stride=stride
        )
    else:
        offset, mask = split_offset_mask(offset_mask, args.group, args.num_points)
        grad_input, grad_offset, grad_mask = get_backend(backend).backward(grad_output, input, offset, mask, args)
    grad_offset_mask = pack_offset_mask(grad_offset, grad_mask, args.group, offset_mask.shape[-1])
    return grad_input.contiguous(), grad_offset_mask.to(offset_mask.dtype)


def _out_shape(input: torch.Tensor, offset_mask: torch.Tensor) -> tuple[int, int, int, int]:
    return (input.shape[0], offset_mask.shape[1], offset_mask.shape[2], input.shape[3])


# The DCNv3 scalars but `softmax`: DCNv4 never normalises.
_dcnv4_op, _ = differentiable_op(
    "internimage::dcnv4",
    ("input", "offset_mask"),
    dcn_scalars(softmax=False),
    _op_forward,
    _op_backward,
    lambda input, offset_mask, *static: input.new_empty(_out_shape(input, offset_mask)),
)


def dcnv4(
    input: torch.Tensor,
    offset_mask: torch.Tensor,
    kernel_size: int | tuple[int, int] = 3,
    stride: int | tuple[int, int] = 1,
    pad: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Deformable convolution v4 sampling core (no projections, no softmax).

    ``out[n, y, x, g*D:(g+1)*D] = sum_p mask[n, y, x, g, p] * bilinear(input[..., g*D:(g+1)*D], loc(n, y, x, g, p))``
    with the locations of :func:`~internimage.ops.dcnv3` and offsets/masks read from the fused tensor.

    Args:
        input: (N, H, W, G*D) features.
        offset_mask: (N, Ho, Wo, W) with W >= 3*G*P (canonically ceil(3*G*P/8)*8): per group, 2P offsets as
            (x, y) pairs in x-outer point order, then P masks; trailing columns are ignored. P = Kh*Kw (minus 1
            with ``remove_center``).
        kernel_size: K or (Kh, Kw).
        stride: Stride of the base grid, int or (h, w).
        pad: Zero padding, int or (h, w).
        dilation: Dilation of the base grid, int or (h, w).
        group: Number of groups G.
        offset_scale: Multiplies both the base grid and the offsets.
        remove_center: Skip the centre point of an odd square kernel.
        backend: ``None``/``'auto'``, ``'reference'``, ``'cpu'`` or ``'triton'``; default from
            ``INTERNIMAGE_DCN_BACKEND`` or the device.

    Returns:
        (N, Ho, Wo, G*D) in ``input.dtype``.

    Raises:
        ValueError: on inconsistent shapes, dtypes or arguments (one line naming the problem).
    """
    args = make_args(kernel_size, stride, pad, dilation, group, offset_scale, remove_center)
    check_inputs(input, offset_mask, args)
    offset_mask = offset_mask.to(input.dtype)
    if is_exporting():
        offset, mask = split_offset_mask(offset_mask, args.group, args.num_points)
        return dcnv3_reference(input, offset, mask, args)
    name = resolve(backend, input.device.type, input.dtype)
    if plain_eager_inference(input, offset_mask):
        return _forward(input, offset_mask, args, name)  # no custom-op dispatch (as in dcnv3)
    return _dcnv4_op(input, offset_mask, *args[:-1], name)  # all but `softmax`: DCNv4 never normalises


# --------------------------------------------------------------------------------------------------- module
class DCNv4(nn.Module):
    """The DCNv4 token mixer of FlashInternImage, with the official parameter names.

    ``x = value_proj(in)``; ``om = offset_mask(dw(in))`` (one Linear to ceil(3*G*P/8)*8 channels; ``dw`` is the
    plain depthwise ``offset_mask_dw`` conv when ``dw_kernel_size`` is set, else the identity); ``y = dcnv4(x, om)``
    with the masks used as they are (no softmax); ``out = output_proj(y)``.

    Args:
        channels: C, input and output channels.
        kernel_size: DCN kernel size K.
        stride: Operator stride (the offsets are predicted at input resolution, so the output must keep it).
        pad: Operator padding.
        dilation: Operator dilation.
        group: Groups G; C must be divisible by G. The original asserts C/G % 16 == 0 for its CUDA kernel; no
            backend here needs that, so it is not enforced.
        offset_scale: Multiplies base grid and offsets.
        dw_kernel_size: Kernel of the depthwise conv feeding ``offset_mask`` (None: no conv, FlashInternImage-T).
        center_feature_scale: Blend the output with the value projection by a per-group sigmoid gate; as in the
            original DCNv4 module the gate is computed from the sampled output (DCNv3 computes it from ``dw``).
        remove_center: Drop the centre sampling point.
        output_bias: Bias of ``output_proj`` (False for FlashInternImage-T/S/B).
        without_pointwise: No ``value_proj``/``output_proj`` (the bare sampling core with a learned offset_mask).
        backend: Force a DCN backend for this module (default: automatic).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        output_bias: bool = True,
        without_pointwise: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"DCNv4: channels ({channels}) must be divisible by group ({group})")
        if remove_center and kernel_size % 2 == 0:
            raise ValueError(f"DCNv4: remove_center needs an odd kernel_size, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = offset_scale
        self.dw_kernel_size = dw_kernel_size
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        self.without_pointwise = without_pointwise
        self.backend = backend
        self.num_points = kernel_size * kernel_size - self.remove_center

        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(
                channels, channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2, groups=channels
            )
        self.offset_mask = nn.Linear(channels, offset_mask_channels(group, self.num_points))
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
            self.center_feature_scale_module = CenterFeatureScaleModule()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: zero ``offset_mask`` (all masks 0 at start), xavier value/output projections."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        if not self.without_pointwise:
            for layer in (self.value_proj, self.output_proj):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        if self.center_feature_scale:
            nn.init.zeros_(self.center_feature_scale_proj_weight)
            nn.init.zeros_(self.center_feature_scale_proj_bias)

    def forward(
        self, input: torch.Tensor, shape: tuple[int, int] | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mix tokens.

        Args:
            input: (N, L, C) tokens with ``shape`` = (H, W) (square L if omitted, like the original), or an
                (N, H, W, C) map.
            shape: (H, W) of the token grid.
            residual: Optional tensor of the output's shape added to the output (inside ``output_proj``, fused on
                CPU inference).

        Returns:
            Same layout as ``input``: (N, L, C) or (N, H, W, C).
        """
        tokens = input.dim() == 3
        if tokens:
            n, length, c = input.shape
            h, w = shape if shape is not None else (math.isqrt(length), math.isqrt(length))
            if h * w != length:
                raise ValueError(f"DCNv4: {length} tokens do not form a {h}x{w} grid; pass shape=(H, W)")
            input = input.reshape(n, h, w, c)
        elif input.dim() != 4:
            raise ValueError(f"DCNv4: expected (N, L, C) tokens or an (N, H, W, C) map, got {tuple(input.shape)}")
        x = input if self.without_pointwise else fused_linear(input, self.value_proj.weight, self.value_proj.bias)
        om_input = input
        if self.dw_kernel_size is not None:
            om_input = self.offset_mask_dw(input.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        offset_mask = fused_linear(om_input, self.offset_mask.weight, self.offset_mask.bias)
        x_proj = x
        x = dcnv4(
            x,
            offset_mask,
            self.kernel_size,
            self.stride,
            self.pad,
            self.dilation,
            self.group,
            self.offset_scale,
            bool(self.remove_center),
            backend=self.backend,
        )
        if self.center_feature_scale:
            scale = self.center_feature_scale_module(
                x, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
            )
            scale = scale.to(x.dtype).repeat_interleave(self.group_channels, dim=-1)
            x = x * (1 - scale) + x_proj * scale
        res = None if residual is None else residual.reshape(x.shape)
        if not self.without_pointwise:
            x = fused_linear(x, self.output_proj.weight, self.output_proj.bias, residual=res)
        elif res is not None:
            x = x + res
        return x.flatten(1, 2) if tokens else x

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, group={self.group}, "
            f"offset_scale={self.offset_scale}, dw_kernel_size={self.dw_kernel_size}, "
            f"remove_center={bool(self.remove_center)}"
        )
