"""Static arguments of the DCNv3 operator and the geometry they imply."""

from __future__ import annotations

from typing import NamedTuple

import torch


class DCNv3Args(NamedTuple):
    """The non-tensor arguments of one DCNv3 call (the official ``ops_dcnv3`` function's arguments).

    Attributes:
        kernel_h: Kernel height Kh.
        kernel_w: Kernel width Kw.
        stride_h: Vertical stride.
        stride_w: Horizontal stride.
        pad_h: Zero padding added on top and bottom.
        pad_w: Zero padding added left and right.
        dilation_h: Vertical dilation of the base grid.
        dilation_w: Horizontal dilation of the base grid.
        group: Number of groups G; channels are split into G groups of D = C / G.
        offset_scale: Scales both the base grid and the learned offsets.
        remove_center: Drop the centre point, so P = Kh * Kw - 1.
        softmax: ``mask`` holds logits; the op normalises them with a softmax over the P points of each
            (pixel, group) before weighting (the DCNv3 module's softmax, fused into the kernels).
    """

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    group: int
    offset_scale: float
    remove_center: bool
    softmax: bool = False

    @property
    def num_points(self) -> int:
        """Sampling points per group, P."""
        return self.kernel_h * self.kernel_w - int(self.remove_center)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Output (Ho, Wo) for an input of (height, width)."""
        ho = (height + 2 * self.pad_h - (self.dilation_h * (self.kernel_h - 1) + 1)) // self.stride_h + 1
        wo = (width + 2 * self.pad_w - (self.dilation_w * (self.kernel_w - 1) + 1)) // self.stride_w + 1
        return ho, wo

    def kernel_points(self) -> list[tuple[int, int]]:
        """The (dx, dy) base offsets of the P points in operator order (x outer, y inner), before offset_scale."""
        cx = (self.dilation_w * (self.kernel_w - 1)) // 2
        cy = (self.dilation_h * (self.kernel_h - 1)) // 2
        points = [
            (i * self.dilation_w - cx, j * self.dilation_h - cy)
            for i in range(self.kernel_w)
            for j in range(self.kernel_h)
        ]
        if self.remove_center:
            del points[(self.kernel_h * self.kernel_w) // 2]
        return points

    def base_origin(self) -> tuple[int, int]:
        """(x, y) of the kernel centre of output pixel (0, 0) in input pixel coordinates."""
        cx = (self.dilation_w * (self.kernel_w - 1)) // 2
        cy = (self.dilation_h * (self.kernel_h - 1)) // 2
        return cx - self.pad_w, cy - self.pad_h


def make_args(
    kernel_size: int | tuple[int, int] = 3,
    stride: int | tuple[int, int] = 1,
    pad: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    group: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
    softmax: bool = False,
) -> DCNv3Args:
    """Build and validate :class:`DCNv3Args` from scalar-or-pair arguments (pairs are (h, w))."""
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(pad, "pad")
    dh, dw = _pair(dilation, "dilation")
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(
            f"dcnv3: kernel_size, stride and dilation must be >= 1 and pad >= 0, got "
            f"kernel_size={(kh, kw)}, stride={(sh, sw)}, dilation={(dh, dw)}, pad={(ph, pw)}"
        )
    if int(group) < 1:
        raise ValueError(f"dcnv3: group must be >= 1, got {group}")
    if remove_center and (kh % 2 == 0 or kw % 2 == 0 or kh != kw):
        raise ValueError(f"dcnv3: remove_center needs an odd square kernel, got kernel_size={(kh, kw)}")
    return DCNv3Args(
        kh, kw, sh, sw, ph, pw, dh, dw, int(group), float(offset_scale), bool(remove_center), bool(softmax)
    )


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"dcnv3: {name} must be an int or a pair (h, w), got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_layout(op: str, tensors: dict[str, torch.Tensor], args: DCNv3Args) -> tuple[int, int, int]:
    """The checks DCNv3 and DCNv4 share: 4-D tensors, channels divisible by the groups, a non-empty output.

    Args:
        op: Operator name for the messages.
        tensors: The op's tensors by name, the input first.
        args: Operator arguments.

    Returns:
        ``(N, Ho, Wo)``.
    """
    if any(t.dim() != 4 for t in tensors.values()):
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"{op}: {', '.join(tensors)} must be 4-D NHWC tensors, got {shapes}")
    n, h, w, c = next(iter(tensors.values())).shape
    if c % args.group != 0:
        raise ValueError(f"{op}: input channels {c} are not divisible by group={args.group}")
    ho, wo = args.output_size(h, w)
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: input {h}x{w} is too small for the kernel, stride, pad and dilation given")
    return n, ho, wo


def check_inputs(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, args: DCNv3Args) -> None:
    """Raise a one-line ``ValueError`` naming the first inconsistent shape or dtype."""
    n, ho, wo = check_layout("dcnv3", {"input": input, "offset": offset, "mask": mask}, args)
    p = args.num_points
    want_offset = (n, ho, wo, args.group * p * 2)
    want_mask = (n, ho, wo, args.group * p)
    if tuple(offset.shape) != want_offset:
        raise ValueError(f"dcnv3: offset must have shape {want_offset} (N, Ho, Wo, G*P*2), got {tuple(offset.shape)}")
    if tuple(mask.shape) != want_mask:
        raise ValueError(f"dcnv3: mask must have shape {want_mask} (N, Ho, Wo, G*P), got {tuple(mask.shape)}")
    if not (input.is_floating_point() and offset.is_floating_point() and mask.is_floating_point()):
        raise ValueError(f"dcnv3: expected floating point tensors, got {input.dtype}, {offset.dtype}, {mask.dtype}")
    if not (input.device == offset.device == mask.device):
        raise ValueError(f"dcnv3: tensors are on different devices: {input.device}, {offset.device}, {mask.device}")
