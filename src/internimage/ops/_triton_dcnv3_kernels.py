"""Triton kernel bodies of the DCNv3 operator (undecorated; see :mod:`internimage.ops.triton_dcnv3`).

This module imports ``triton.language`` and is therefore only imported lazily, by the Triton backend. The
functions are deliberately *not* decorated with ``@triton.jit``: Triton decides between compiling and
interpreting (``TRITON_INTERPRET=1``) when the decorator runs, so the backend wraps them with ``triton.jit``
itself, once per mode, at first use (:data:`HELPERS`, the device functions both kernels call, are wrapped too and
bound into the kernels' globals per mode). That keeps the interpreter usable from a test that sets the variable
after something else in the process already imported this module.

Work decomposition (both kernels): the output is viewed as ``rows = N*Ho*Wo*G`` rows of ``D`` channels, row
``r = ((n*Ho + y)*Wo + x)*G + g``. One program owns ``BLOCK_R`` consecutive rows and all ``D`` channels of each,
held as a ``(BLOCK_R, BLOCK_D)`` register tile with ``BLOCK_D = next_pow2(D)`` and a channel mask, so any group
width works. Consecutive rows are the groups of one pixel and then neighbouring pixels, so output and grad-output
accesses of a program are one contiguous span, and each bilinear corner is a contiguous D-vector (the "all channels
of a group per query" access pattern of the DCNv4 paper). The P points are unrolled at compile time; the
sampling geometry (kernel, stride, pad, dilation, point order) is ``constexpr``.

Offset and mask are addressed per output pixel ``q = r // G`` with a runtime pixel stride (elements between
consecutive pixels): ``offset[q*offset_stride + g*2P + 2p (+1)]`` and ``mask[q*mask_stride + g*P + p]``. A
contiguous tensor has stride ``2GP`` (``GP``); the DCNv3 module's fused offset/mask projection yields both as slices
of one (N, Ho, Wo, 3GP) tensor with stride ``3GP``, which the kernels read in place.

With ``SOFTMAX`` the mask holds logits and the point weights are their softmax over the P points of a row. The
forward first runs two unrolled passes over the logits (row max, then sum of exponentials), so the main loop gets
each probability from one more load and exp. The backward returns the gradient with respect to the logits,
``prob_p * (grad_prob_p - sum_j prob_j * grad_prob_j)``: the main loop stores ``grad_prob_p`` and accumulates the
sum, a second pass (after a block barrier, so the stores are visible to whichever thread reloads them) rewrites
them in place.

NaN and Inf propagate as in :mod:`internimage.ops.reference`: a NaN/Inf sampling position fails the inside test
like a far one (no pixel read or written) but its bilinear fractions are NaN, so the sample is NaN as
``grid_sample`` gives; weights are never masked, so a NaN/Inf weight of an outside sample gives NaN (``0 * NaN``).
"""

from __future__ import annotations

import triton.language as tl

__all__ = ["HELPERS", "dcnv3_forward_kernel", "dcnv3_backward_kernel"]

# Library helpers such as ``tl.zeros`` and ``tl.sum`` are themselves ``@triton.jit`` functions, frozen in compile
# or interpret mode when triton is first imported, so the kernels use only builtins (``tl.full``, ``tl.reduce``)
# and stay runnable in both modes whatever the import order. ``_sum_combine`` is the combine function behind
# ``tl.sum``; the interpreter recognises it and reduces with numpy.
_SUM_COMBINE = tl.standard._sum_combine


def row_geometry(
    start,
    rows,
    groups,
    height,
    width,
    out_h,
    out_w,
    offset_stride,
    mask_stride,
    GROUP_CHANNELS: tl.constexpr,
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr,
    PAD_W: tl.constexpr,
    DIL_H: tl.constexpr,
    DIL_W: tl.constexpr,
    NUM_POINTS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Where the rows ``start + arange(BLOCK_R)`` read and write (device function of both kernels).

    Returns:
        ``(r, row_ok, image_base, base_x, base_y, off_base, mask_base)``: row indices, rows in range, element index
        of (n, 0, 0, g, 0) in the input, the kernel-centre location of the output pixel, and where the row's
        offsets and masks start.
    """
    r = start + tl.arange(0, BLOCK_R)
    row_ok = r < rows
    g = r % groups
    q = r // groups
    ox = q % out_w
    t = q // out_w
    oy = t % out_h
    n = t // out_h
    # Element index of (n, 0, 0, g, 0); corners add y*row_stride + x*C.
    image_base = n * height * (width * (groups * GROUP_CHANNELS)) + g * GROUP_CHANNELS
    base_x = (ox * STRIDE_W + ((DIL_W * (KERNEL_W - 1)) // 2 - PAD_W)).to(ACC)
    base_y = (oy * STRIDE_H + ((DIL_H * (KERNEL_H - 1)) // 2 - PAD_H)).to(ACC)
    off_base = q * offset_stride + g * (2 * NUM_POINTS)
    mask_base = q * mask_stride + g * NUM_POINTS
    return r, row_ok, image_base, base_x, base_y, off_base, mask_base


def softmax_stats(mask_ptr, mask_base, row_ok, NUM_POINTS: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr):
    """Row max and sum of exponentials of the P logits of each row (masked-off rows see logits of 0)."""
    logit_max = tl.full((BLOCK_R,), float("-inf"), ACC)
    for p in tl.static_range(NUM_POINTS):
        logit = tl.load(mask_ptr + mask_base + p, mask=row_ok, other=0.0).to(ACC)
        logit_max = tl.maximum(logit_max, logit)
    exp_sum = tl.full((BLOCK_R,), 0, ACC)
    for p in tl.static_range(NUM_POINTS):
        logit = tl.load(mask_ptr + mask_base + p, mask=row_ok, other=0.0).to(ACC)
        exp_sum += tl.exp(logit - logit_max)
    return logit_max, exp_sum


def sample_point(
    offset_ptr,
    mask_ptr,
    row_ok,
    off_base,
    mask_base,
    image_base,
    base_x,
    base_y,
    logit_max,
    exp_sum,
    height,
    width,
    row_stride,
    pixel_stride,
    offset_scale,
    p: tl.constexpr,
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    DIL_H: tl.constexpr,
    DIL_W: tl.constexpr,
    SKIP_FROM: tl.constexpr,
    SOFTMAX: tl.constexpr,
    ACC: tl.constexpr,
):
    """The sampling block of point ``p`` (device function of both kernels): weight, location, corners.

    Returns:
        ``(m, lx, ly, ok00, ok01, ok10, ok11, i00)``: the point weight (softmaxed with ``SOFTMAX``), the position
        within the corner square (NaN on an axis whose location is NaN/Inf), which of the four corners (dy, dx) are
        read, and the element index of corner (0, 0); the others are ``+ pixel_stride`` / ``+ row_stride``.
    """
    k = p + (p >= SKIP_FROM)
    kx = (k // KERNEL_H) * DIL_W - (DIL_W * (KERNEL_W - 1)) // 2
    ky = (k % KERNEL_H) * DIL_H - (DIL_H * (KERNEL_H - 1)) // 2
    off_x = tl.load(offset_ptr + off_base + 2 * p, mask=row_ok, other=0.0).to(ACC)
    off_y = tl.load(offset_ptr + off_base + (2 * p + 1), mask=row_ok, other=0.0).to(ACC)
    m = tl.load(mask_ptr + mask_base + p, mask=row_ok, other=0.0).to(ACC)
    if SOFTMAX:
        m = tl.exp(m - logit_max) / exp_sum
    x = (off_x + kx) * offset_scale + base_x
    y = (off_y + ky) * offset_scale + base_y
    inside = row_ok & (x > -1) & (x < width) & (y > -1) & (y < height)
    # Samples outside (-1, size), NaN/Inf ones included, read no corner: any in-range position serves them, and
    # keeps floor / int conversion defined.
    xs = tl.where(inside, x, 0.0)
    ys = tl.where(inside, y, 0.0)
    x0f = tl.floor(xs)
    y0f = tl.floor(ys)
    # A NaN/Inf location samples NaN in the reference (grid_sample), not 0: NaN fractions make every bilinear weight
    # NaN. One compare and select per point on finite data.
    lx = tl.where(tl.abs(x) < float("inf"), xs - x0f, float("nan"))
    ly = tl.where(tl.abs(y) < float("inf"), ys - y0f, float("nan"))
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    ok_x0 = x0 >= 0
    ok_x1 = x0 + 1 < width
    ok_y0 = inside & (y0 >= 0)
    ok_y1 = inside & (y0 + 1 < height)
    i00 = image_base + y0 * row_stride + x0 * pixel_stride
    return m, lx, ly, ok_y0 & ok_x0, ok_y0 & ok_x1, ok_y1 & ok_x0, ok_y1 & ok_x1, i00


#: Device functions called by the kernels, wrapped with ``triton.jit`` per mode by the backend.
HELPERS = ("row_geometry", "softmax_stats", "sample_point")


def dcnv3_forward_kernel(
    input_ptr,
    offset_ptr,
    mask_ptr,
    output_ptr,
    rows,
    groups,
    height,
    width,
    out_h,
    out_w,
    offset_scale,
    offset_stride,
    mask_stride,
    GROUP_CHANNELS: tl.constexpr,
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr,
    PAD_W: tl.constexpr,
    DIL_H: tl.constexpr,
    DIL_W: tl.constexpr,
    NUM_POINTS: tl.constexpr,
    SKIP_FROM: tl.constexpr,
    SOFTMAX: tl.constexpr,
    ACC: tl.constexpr,
    USE_INT64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``output[r, :] = sum_p mask[r, p] * bilinear(input, loc(r, p))`` for a block of rows.

    Args:
        input_ptr: (N, H, W, G*D) contiguous input.
        offset_ptr: (N, Ho, Wo, G*P*2) offsets, [g][p][x, y], last dim contiguous, ``offset_stride`` elements
            between pixels.
        mask_ptr: (N, Ho, Wo, G*P) point weights (logits with ``SOFTMAX``), last dim contiguous,
            ``mask_stride`` elements between pixels.
        output_ptr: (N, Ho, Wo, G*D) contiguous output, written in its own dtype.
        rows: N*Ho*Wo*G.
        offset_stride: Pixel stride of the offsets (2GP when contiguous).
        mask_stride: Pixel stride of the mask (GP when contiguous).
        SKIP_FROM: Kernel points with index >= SKIP_FROM are shifted by one (``remove_center``); set past the
            last point otherwise.
        SOFTMAX: The mask holds logits; weight each point by their softmax over the P points of the row.
        ACC: Accumulation and geometry dtype (fp32, or fp64 for fp64 tensors).
        USE_INT64: Do index arithmetic in int64 (tensors with 2**30 elements or more).
    """
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK_R if USE_INT64 else pid * BLOCK_R
    r, row_ok, image_base, base_x, base_y, off_base, mask_base = row_geometry(
        start, rows, groups, height, width, out_h, out_w, offset_stride, mask_stride, GROUP_CHANNELS, KERNEL_H,
        KERNEL_W, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, NUM_POINTS, ACC, BLOCK_R
    )  # fmt: skip
    pixel_stride = groups * GROUP_CHANNELS
    row_stride = width * pixel_stride  # elements per input image row
    d = tl.arange(0, BLOCK_D)
    d_cols = d[None, :]
    d_mask = (d < GROUP_CHANNELS)[None, :]
    logit_max = tl.full((BLOCK_R,), 0, ACC)
    exp_sum = tl.full((BLOCK_R,), 1, ACC)
    if SOFTMAX:
        logit_max, exp_sum = softmax_stats(mask_ptr, mask_base, row_ok, NUM_POINTS, ACC, BLOCK_R)

    acc = tl.full((BLOCK_R, BLOCK_D), 0, ACC)
    for p in tl.static_range(NUM_POINTS):
        m, lx, ly, ok00, ok01, ok10, ok11, i00 = sample_point(
            offset_ptr, mask_ptr, row_ok, off_base, mask_base, image_base, base_x, base_y, logit_max, exp_sum,
            height, width, row_stride, pixel_stride, offset_scale, p, KERNEL_H, KERNEL_W, DIL_H, DIL_W, SKIP_FROM,
            SOFTMAX, ACC
        )  # fmt: skip
        hx = 1 - lx
        hy = 1 - ly
        i01 = i00 + pixel_stride
        i10 = i00 + row_stride
        i11 = i10 + pixel_stride
        v00 = tl.load(input_ptr + (i00[:, None] + d_cols), mask=ok00[:, None] & d_mask, other=0.0)
        v01 = tl.load(input_ptr + (i01[:, None] + d_cols), mask=ok01[:, None] & d_mask, other=0.0)
        v10 = tl.load(input_ptr + (i10[:, None] + d_cols), mask=ok10[:, None] & d_mask, other=0.0)
        v11 = tl.load(input_ptr + (i11[:, None] + d_cols), mask=ok11[:, None] & d_mask, other=0.0)
        # Fold the point weight into the four bilinear weights: 4 scalar products per row instead of a tile-wide
        # multiply.
        acc += (m * hy * hx)[:, None] * v00.to(ACC)
        acc += (m * hy * lx)[:, None] * v01.to(ACC)
        acc += (m * ly * hx)[:, None] * v10.to(ACC)
        acc += (m * ly * lx)[:, None] * v11.to(ACC)

    out_ptrs = output_ptr + (r * GROUP_CHANNELS)[:, None] + d_cols
    tl.store(out_ptrs, acc.to(output_ptr.dtype.element_ty), mask=row_ok[:, None] & d_mask)


def dcnv3_backward_kernel(
    grad_output_ptr,
    input_ptr,
    offset_ptr,
    mask_ptr,
    grad_input_ptr,
    grad_offset_ptr,
    grad_mask_ptr,
    rows,
    groups,
    height,
    width,
    out_h,
    out_w,
    offset_scale,
    offset_stride,
    mask_stride,
    GROUP_CHANNELS: tl.constexpr,
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr,
    PAD_W: tl.constexpr,
    DIL_H: tl.constexpr,
    DIL_W: tl.constexpr,
    NUM_POINTS: tl.constexpr,
    SKIP_FROM: tl.constexpr,
    SOFTMAX: tl.constexpr,
    ACC: tl.constexpr,
    USE_INT64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradients of :func:`dcnv3_forward_kernel` for a block of rows.

    ``grad_mask`` and ``grad_offset`` of each (row, point) are reduced over D in registers and written once;
    ``grad_input`` is scattered with atomic adds into ``grad_input_ptr`` (an fp32/fp64 buffer, zero-initialised by
    the caller), because arbitrary offsets let any output touch any input pixel.

    Args:
        grad_output_ptr: (N, Ho, Wo, G*D) contiguous gradient of the output.
        input_ptr, offset_ptr, mask_ptr: As in :func:`dcnv3_forward_kernel`.
        grad_input_ptr: (N, H, W, G*D) accumulation buffer in ``ACC``.
        grad_offset_ptr: (N, Ho, Wo, G*P*2) output, written in its own dtype.
        grad_mask_ptr: (N, Ho, Wo, G*P) contiguous output, written in its own dtype; the gradient with respect to
            the logits with ``SOFTMAX`` (then it also holds the intermediate ``grad_prob``, so the caller passes an
            fp32/fp64 buffer for half-precision masks).
    """
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK_R if USE_INT64 else pid * BLOCK_R
    r, row_ok, image_base, base_x, base_y, off_base, mask_base = row_geometry(
        start, rows, groups, height, width, out_h, out_w, offset_stride, mask_stride, GROUP_CHANNELS, KERNEL_H,
        KERNEL_W, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, NUM_POINTS, ACC, BLOCK_R
    )  # fmt: skip
    pixel_stride = groups * GROUP_CHANNELS
    row_stride = width * pixel_stride
    d = tl.arange(0, BLOCK_D)
    d_cols = d[None, :]
    d_mask = (d < GROUP_CHANNELS)[None, :]
    logit_max = tl.full((BLOCK_R,), 0, ACC)
    exp_sum = tl.full((BLOCK_R,), 1, ACC)
    if SOFTMAX:
        logit_max, exp_sum = softmax_stats(mask_ptr, mask_base, row_ok, NUM_POINTS, ACC, BLOCK_R)

    go_ptrs = grad_output_ptr + (r * GROUP_CHANNELS)[:, None] + d_cols
    go = tl.load(go_ptrs, mask=row_ok[:, None] & d_mask, other=0.0).to(ACC)
    prob_dot_grad = tl.full((BLOCK_R,), 0, ACC)  # sum_p prob_p * grad_prob_p (SOFTMAX only)

    for p in tl.static_range(NUM_POINTS):
        m, lx, ly, ok00, ok01, ok10, ok11, i00 = sample_point(
            offset_ptr, mask_ptr, row_ok, off_base, mask_base, image_base, base_x, base_y, logit_max, exp_sum,
            height, width, row_stride, pixel_stride, offset_scale, p, KERNEL_H, KERNEL_W, DIL_H, DIL_W, SKIP_FROM,
            SOFTMAX, ACC
        )  # fmt: skip
        hx = 1 - lx
        hy = 1 - ly
        p00 = i00[:, None] + d_cols
        p01 = p00 + pixel_stride
        p10 = p00 + row_stride
        p11 = p10 + pixel_stride
        v00 = tl.load(input_ptr + p00, mask=ok00[:, None] & d_mask, other=0.0).to(ACC)
        v01 = tl.load(input_ptr + p01, mask=ok01[:, None] & d_mask, other=0.0).to(ACC)
        v10 = tl.load(input_ptr + p10, mask=ok10[:, None] & d_mask, other=0.0).to(ACC)
        v11 = tl.load(input_ptr + p11, mask=ok11[:, None] & d_mask, other=0.0).to(ACC)
        # <grad_out, corner value> per row: everything the offset and mask gradients need, reduced in registers.
        dot00 = tl.reduce(go * v00, 1, _SUM_COMBINE)
        dot01 = tl.reduce(go * v01, 1, _SUM_COMBINE)
        dot10 = tl.reduce(go * v10, 1, _SUM_COMBINE)
        dot11 = tl.reduce(go * v11, 1, _SUM_COMBINE)

        w00 = hy * hx
        w01 = hy * lx
        w10 = ly * hx
        w11 = ly * lx
        grad_m = w00 * dot00 + w01 * dot01 + w10 * dot10 + w11 * dot11
        if SOFTMAX:
            prob_dot_grad += m * grad_m
        # d(bilinear)/dx and /dy, times the point weight and the chain-rule factor offset_scale.
        gx = (hy * (dot01 - dot00) + ly * (dot11 - dot10)) * (m * offset_scale)
        gy = (hx * (dot10 - dot00) + lx * (dot11 - dot01)) * (m * offset_scale)
        tl.store(grad_mask_ptr + r * NUM_POINTS + p, grad_m.to(grad_mask_ptr.dtype.element_ty), mask=row_ok)
        goff = grad_offset_ptr + r * (2 * NUM_POINTS) + 2 * p
        tl.store(goff, gx.to(grad_offset_ptr.dtype.element_ty), mask=row_ok)
        tl.store(goff + 1, gy.to(grad_offset_ptr.dtype.element_ty), mask=row_ok)

        tl.atomic_add(grad_input_ptr + p00, (m * w00)[:, None] * go, mask=ok00[:, None] & d_mask, sem="relaxed")
        tl.atomic_add(grad_input_ptr + p01, (m * w01)[:, None] * go, mask=ok01[:, None] & d_mask, sem="relaxed")
        tl.atomic_add(grad_input_ptr + p10, (m * w10)[:, None] * go, mask=ok10[:, None] & d_mask, sem="relaxed")
        tl.atomic_add(grad_input_ptr + p11, (m * w11)[:, None] * go, mask=ok11[:, None] & d_mask, sem="relaxed")

    if SOFTMAX:
        # grad_logit_p = prob_p * (grad_prob_p - sum_j prob_j * grad_prob_j). The barrier orders the grad_prob
        # stores above before the reloads: a row's values may be stored and reloaded by different threads.
        tl.debug_barrier()
        for p in tl.static_range(NUM_POINTS):
            logit = tl.load(mask_ptr + mask_base + p, mask=row_ok, other=0.0).to(ACC)
            prob = tl.exp(logit - logit_max) / exp_sum
            grad_prob = tl.load(grad_mask_ptr + r * NUM_POINTS + p, mask=row_ok, other=0.0).to(ACC)
            grad_logit = prob * (grad_prob - prob_dot_grad)
            tl.store(grad_mask_ptr + r * NUM_POINTS + p, grad_logit.to(grad_mask_ptr.dtype.element_ty), mask=row_ok)
