"""Pure-PyTorch reference of the DCNv3 operator: forward through ``grid_sample``, analytic backward.

The forward is export-safe (grids are built from ``arange``, never ``linspace``, so H and W stay dynamic) and
is what ONNX / ``torch.export`` see. The backward is written out by hand with gathers and ``index_add_`` so the
custom op can run it below autograd; ``tests/test_ops.py`` checks it against autograd through the forward.
Half-precision inputs are computed in float32 and cast back, like the accumulation of the original CUDA op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .args import DCNv3Args

__all__ = ["dcnv3_reference", "dcnv3_reference_backward", "sampling_locations", "point_weights"]


def point_weights(mask: torch.Tensor, args: DCNv3Args, dtype: torch.dtype) -> torch.Tensor:
    """The weights the operator applies: ``mask`` itself, or its softmax over each group's P points.

    Args:
        mask: (N, Ho, Wo, G*P) weights, or logits when ``args.softmax``.
        args: Operator arguments.
        dtype: Compute dtype.

    Returns:
        (N, Ho, Wo, G*P) in ``dtype``.
    """
    mask = mask.to(dtype)
    if not args.softmax:
        return mask
    n, ho, wo, _ = mask.shape
    return torch.softmax(mask.reshape(n, ho, wo, args.group, args.num_points), -1).reshape(mask.shape)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sampling_locations(offset: torch.Tensor, args: DCNv3Args) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sampling positions in input pixel coordinates (pixel centres at integers).

    ``x = w*stride - pad + c + (i*dilation - c + dx) * offset_scale`` with ``c = dilation*(K-1)//2``.

    Args:
        offset: (N, Ho, Wo, G*P*2) learned offsets, laid out [g][p][x, y].
        args: Operator arguments.

    Returns:
        ``(loc_x, loc_y)``, each (N, Ho, Wo, G, P), in ``offset.dtype``.
    """
    n, ho, wo, _ = offset.shape
    origin_x, origin_y = args.base_origin()
    base_x = torch.arange(wo, device=offset.device, dtype=offset.dtype) * args.stride_w + origin_x
    base_y = torch.arange(ho, device=offset.device, dtype=offset.dtype) * args.stride_h + origin_y
    points = torch.tensor(args.kernel_points(), device=offset.device, dtype=offset.dtype)  # (P, 2)
    rel = (offset.reshape(n, ho, wo, args.group, args.num_points, 2) + points) * args.offset_scale
    loc_x = rel[..., 0] + base_x.view(1, 1, wo, 1, 1)
    loc_y = rel[..., 1] + base_y.view(1, ho, 1, 1, 1)
    return loc_x, loc_y


def dcnv3_reference(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, args: DCNv3Args) -> torch.Tensor:
    """DCNv3 forward: ``out[n,y,x,g,:] = sum_p mask[n,y,x,g,p] * bilinear(input[n,:,:,g,:], loc[n,y,x,g,p])``.

    Args:
        input: (N, H, W, G*D) features.
        offset: (N, Ho, Wo, G*P*2) offsets [g][p][x, y].
        mask: (N, Ho, Wo, G*P) point weights (logits if ``args.softmax``).
        args: Operator arguments.

    Returns:
        (N, Ho, Wo, G*D) in ``input.dtype``.
    """
    n, h, w, c = input.shape
    _, ho, wo, _ = offset.shape
    g, p = args.group, args.num_points
    d = c // g
    dtype = _compute_dtype(input.dtype)
    loc_x, loc_y = sampling_locations(offset.to(dtype), args)
    # grid_sample with align_corners=False maps pixel x to (2x + 1) / W - 1 and pads with zeros, which is
    # exactly the operator's rule that corners outside the image contribute nothing.
    grid = torch.stack(((2 * loc_x + 1) / w - 1, (2 * loc_y + 1) / h - 1), dim=-1)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * g, ho * wo, p, 2)
    value = input.to(dtype).reshape(n, h, w, g, d).permute(0, 3, 4, 1, 2).reshape(n * g, d, h, w)
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = point_weights(mask, args, dtype).reshape(n, ho * wo, g, p)
    weights = weights.permute(0, 2, 1, 3).reshape(n * g, 1, ho * wo, p)
    out = (sampled * weights).sum(-1)  # (N*G, D, Ho*Wo)
    out = out.reshape(n, g, d, ho * wo).permute(0, 3, 1, 2).reshape(n, ho, wo, c)
    return out.to(input.dtype)


def _corners(loc_x: torch.Tensor, loc_y: torch.Tensor, height: int, width: int):
    """Yield (y, x, weight, d_weight/dx, d_weight/dy, valid) for the four bilinear corners."""
    x0 = torch.floor(loc_x)
    y0 = torch.floor(loc_y)
    lx, ly = loc_x - x0, loc_y - y0
    hx, hy = 1 - lx, 1 - ly
    inside = (loc_x > -1) & (loc_x < width) & (loc_y > -1) & (loc_y < height)
    x0, y0 = x0.long(), y0.long()
    for dy, dx, weight, gx, gy in (
        (0, 0, hy * hx, -hy, -hx),
        (0, 1, hy * lx, hy, -lx),
        (1, 0, ly * hx, -ly, hx),
        (1, 1, ly * lx, ly, lx),
    ):
        cy, cx = y0 + dy, x0 + dx
        valid = inside & (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
        yield cy.clamp(0, height - 1), cx.clamp(0, width - 1), weight, gx, gy, valid


def dcnv3_reference_backward(
    grad_output: torch.Tensor, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, args: DCNv3Args
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`dcnv3_reference` with respect to input, offset and mask.

    A sample whose location is outside ``-1 < loc < size`` contributes no gradient at all, as in the original
    CUDA kernel (``grid_sample`` differs only on that measure-zero border).

    Returns:
        ``(grad_input, grad_offset, grad_mask)`` shaped and typed like ``input``, ``offset`` and ``mask``.
    """
    n, h, w, c = input.shape
    _, ho, wo, _ = offset.shape
    g, p = args.group, args.num_points
    d = c // g
    dtype = _compute_dtype(input.dtype)
    rows = input.to(dtype).reshape(n * h * w * g, d)
    go = grad_output.to(dtype).reshape(n, ho, wo, g, 1, d)
    m = point_weights(mask, args, dtype).reshape(n, ho, wo, g, p)
    loc_x, loc_y = sampling_locations(offset.to(dtype), args)
    batch = torch.arange(n, device=input.device).view(n, 1, 1, 1, 1)
    group = torch.arange(g, device=input.device).view(1, 1, 1, g, 1)

    grad_rows = torch.zeros_like(rows)
    sample = torch.zeros(n, ho, wo, g, p, d, dtype=dtype, device=input.device)
    grad_lx = torch.zeros_like(loc_x)
    grad_ly = torch.zeros_like(loc_y)
    for cy, cx, weight, gx, gy, valid in _corners(loc_x, loc_y, h, w):
        index = ((batch * h + cy) * w + cx) * g + group  # (N, Ho, Wo, G, P)
        # `where`, not a multiply by `valid`: a corner outside the image reads the clamped index, whose value (or a
        # non-finite weight) times 0 would be NaN where the forward reads nothing.
        corner = torch.where(valid.unsqueeze(-1), rows[index], 0)  # (N, Ho, Wo, G, P, D)
        sample += weight.unsqueeze(-1) * corner
        dot = (go * corner).sum(-1)
        grad_lx += gx * dot
        grad_ly += gy * dot
        contrib = torch.where(valid.unsqueeze(-1), (m * weight).unsqueeze(-1) * go, 0)
        grad_rows.index_add_(0, index.reshape(-1), contrib.reshape(-1, d))
    grad_mask = (go * sample).sum(-1)
    if args.softmax:
        # Jacobian of the softmax: d logit_p = m_p * (d m_p - sum_j m_j d m_j).
        grad_mask = m * (grad_mask - (m * grad_mask).sum(-1, keepdim=True))
    grad_offset = torch.stack((m * grad_lx, m * grad_ly), dim=-1) * args.offset_scale
    return (
        grad_rows.reshape(n, h, w, c).to(input.dtype),
        grad_offset.reshape(offset.shape).to(offset.dtype),
        grad_mask.reshape(mask.shape).to(mask.dtype),
    )
