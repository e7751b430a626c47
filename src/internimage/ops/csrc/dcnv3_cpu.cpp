// Fused CPU kernels of the DCNv3 sampling core: forward and backward, NHWC, fp64 / fp32 / bf16 / fp16.
//
// Semantics are those of internimage/ops/reference.py (the official ops_dcnv3/functions/dcnv3_func.py):
//   loc_x = (offset_x + i*dil_w - cx) * offset_scale + (w*stride_w - pad_w + cx), the same for y;
//   a sample counts only if -1 < loc_x < W and -1 < loc_y < H; corners outside the image read zero;
//   NaN and Inf propagate as in the reference: a NaN/Inf position samples NaN, a NaN/Inf weight of an outside sample
//   still gives NaN (0 * NaN);
//   out[n, ho, wo, g, :] = sum_p mask[p] * bilinear(input[n, :, :, g, :], loc_p),
// where with `softmax` the mask holds logits and the weights are their softmax over the P points of (pixel, group)
// (the DCNv3 module's softmax, fused so it costs no separate pass over memory).
// offset and mask may be pixel-strided views (e.g. the two halves of one projection output): rows of each pixel
// are contiguous, consecutive pixels `stride` elements apart.
// Half-precision tensors are loaded, computed in fp32 and stored back (fp32 gradient buffers), so the kernel
// is one pass over the data instead of the reference's grid_sample + multiply + sum chain.
//
// The ops are registered with the dispatcher as internimage_cpu::dcnv3_forward / dcnv3_backward (no pybind,
// which keeps the JIT build short); the Python wrapper is internimage/ops/cpu.py.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};
template <>
struct AccType<c10::Half> {
  using type = float;
};

// bf16 -> fp32 is a 16-bit shift; written out so the compiler can vectorise the channel loops with it.
inline float to_acc(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float to_acc(c10::Half v) { return static_cast<float>(v); }
inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }

template <typename T, typename A>
inline T from_acc(A v) {
  return static_cast<T>(v);  // c10::BFloat16(float) rounds to nearest even
}

// Static geometry of one call, shared by forward and backward.
struct Geometry {
  int64_t n, h, w, c, g, d, ho, wo, p;
  int64_t stride_h, stride_w;
  int64_t origin_x, origin_y;  // kernel centre of output pixel (0, 0) in input coordinates
  double scale;
  bool softmax;
  int64_t offset_stride = 0, mask_stride = 0;  // elements between consecutive pixels of offset / mask
  int64_t offset_group_stride = 0, mask_group_stride = 0;  // elements between groups (2P / P when packed)
  std::vector<int64_t> point_x, point_y;  // base offsets of the P points, x-outer order

  Geometry(const at::Tensor& input, const at::Tensor& offset, int64_t kernel_h, int64_t kernel_w, int64_t stride_h_,
           int64_t stride_w_, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
           double offset_scale, bool remove_center, bool softmax_, int64_t offset_gs = 0, int64_t mask_gs = 0)
      : stride_h(stride_h_), stride_w(stride_w_), scale(offset_scale), softmax(softmax_) {
    n = input.size(0);
    h = input.size(1);
    w = input.size(2);
    c = input.size(3);
    g = group;
    d = c / g;
    ho = offset.size(1);
    wo = offset.size(2);
    const int64_t cx = dilation_w * (kernel_w - 1) / 2;
    const int64_t cy = dilation_h * (kernel_h - 1) / 2;
    origin_x = cx - pad_w;
    origin_y = cy - pad_h;
    const int64_t centre = kernel_h * kernel_w / 2;
    for (int64_t i = 0; i < kernel_w; ++i) {
      for (int64_t j = 0; j < kernel_h; ++j) {
        if (remove_center && i * kernel_h + j == centre) continue;
        point_x.push_back(i * dilation_w - cx);
        point_y.push_back(j * dilation_h - cy);
      }
    }
    p = static_cast<int64_t>(point_x.size());
    offset_group_stride = offset_gs > 0 ? offset_gs : 2 * p;
    mask_group_stride = mask_gs > 0 ? mask_gs : p;
    TORCH_CHECK(c == g * d, "dcnv3 cpu: channels ", c, " not divisible by group ", g);
    TORCH_CHECK(offset_group_stride >= 2 * p && mask_group_stride >= p, "dcnv3 cpu: group strides too small");
    TORCH_CHECK(offset.size(3) == (g - 1) * offset_group_stride + 2 * p, "dcnv3 cpu: offset has ", offset.size(3),
                " channels, expected ", (g - 1) * offset_group_stride + 2 * p);
  }
};

// ----------------------------------------------------------------------------------------------------------
// Channel vectors. The D channels of a group are processed in blocks of fixed width B (32, 16, 8, 4, 2, 1),
// held in GCC/Clang vector-extension values so accumulators stay in registers whatever D is (16, 32, 30, 5...).

template <typename A, int B>
struct VecOf {
  typedef A type __attribute__((vector_size(sizeof(A) * B)));
};
template <typename A, int B>
using Vec = typename VecOf<A, B>::type;

template <typename T, int B>
struct Load {
  // float / double: a plain unaligned vector load.
  static Vec<T, B> run(const T* p) {
    Vec<T, B> v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
};
template <int B>
struct Load<c10::BFloat16, B> {
  // bf16 -> fp32 is a widening 16-bit shift.
  static Vec<float, B> run(const c10::BFloat16* p) {
    Vec<uint16_t, B> raw;
    std::memcpy(&raw, p, sizeof(raw));
    const Vec<uint32_t, B> bits = __builtin_convertvector(raw, Vec<uint32_t, B>) << 16;
    Vec<float, B> v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
  }
};
template <int B>
struct Load<c10::Half, B> {
  static Vec<float, B> run(const c10::Half* p) {
    Vec<float, B> v;
    for (int k = 0; k < B; ++k) v[k] = static_cast<float>(p[k]);
    return v;
  }
};

template <typename T, int B>
inline auto load_acc(const T* p) {
  return Load<T, B>::run(p);
}

template <typename A, int B>
inline void store_acc(A* p, Vec<A, B> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T, typename A, int B>
inline void store_out(T* p, Vec<A, B> v) {
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    for (int k = 0; k < B; ++k) p[k] = from_acc<T>(v[k]);  // rounds like the rest of torch
  }
}

// Tree sum of the lanes (a sequential sum would be a chain of B dependent adds).
template <typename A, int B>
inline A hsum(Vec<A, B> v) {
  if constexpr (B == 1) {
    return v[0];
  } else {
    Vec<A, B / 2> lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    return hsum<A, B / 2>(lo + hi);
  }
}

// Calls f(block_width_constant, channel_begin) for blocks covering [0, D).
template <typename F>
inline void for_blocks(int64_t d, F&& f) {
  int64_t c0 = 0;
  for (; c0 + 32 <= d; c0 += 32) f(std::integral_constant<int, 32>{}, c0);
  if (c0 + 16 <= d) f(std::integral_constant<int, 16>{}, c0), c0 += 16;
  if (c0 + 8 <= d) f(std::integral_constant<int, 8>{}, c0), c0 += 8;
  if (c0 + 4 <= d) f(std::integral_constant<int, 4>{}, c0), c0 += 4;
  if (c0 + 2 <= d) f(std::integral_constant<int, 2>{}, c0), c0 += 2;
  if (c0 + 1 <= d) f(std::integral_constant<int, 1>{}, c0), c0 += 1;
}

// exp(x) = 2^n * exp(r) with r = x - n ln2 (ln2 split in two for accuracy, |r| <= ln2/2): Cephes-style
// polynomial, relative error ~2e-7. V is float or a vector of floats (the same code serves both).
template <typename V>
inline V exp_reduced(V x, V n) {
  V r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  V poly = r * 1.9875691500e-4f + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  return poly * r * r + r + 1.0f;
}

// exp(x) for x <= 80 in float, branch-free and without a libm call.
inline float exp_clamped(float x) {
  x = std::max(x, -87.0f);  // below this exp underflows; such softmax terms are negligible anyway
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 116]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return exp_reduced(x, n) * scale;
}
inline double exp_clamped(double x) { return std::exp(x); }

// exp_clamped on 16 floats at once (n rounded to nearest by the 1.5 * 2^23 trick instead of floor(x + 0.5));
// written with vector types because GCC leaves a loop over the scalar version unvectorised.
inline Vec<float, 16> exp_clamped(Vec<float, 16> x) {
  using VF = Vec<float, 16>;
  using VI = Vec<int32_t, 16>;
  const VF lo = VF{} - 87.0f, magic = VF{} + 12582912.0f;
  x = x < lo ? lo : x;
  const VF t = x * 1.44269504088896341f + magic;
  const VI bits = (((VI)t - (VI)magic) + 127) << 23;  // 2^n
  return exp_reduced(x, t - magic) * (VF)bits;
}

// out[k] = exp(min(logit[k], 80)) for k < count, 16 at a time.
template <typename T>
inline void exp_logits(const T* logit, int64_t count, float* out) {
  using VF = Vec<float, 16>;
  const VF hi = VF{} + 80.0f;
  int64_t k = 0;
  for (; k + 16 <= count; k += 16) {
    const VF v = load_acc<T, 16>(logit + k);
    store_acc<float, 16>(out + k, exp_clamped(v > hi ? hi : v));
  }
  if (k < count) {
    T tail[16] = {};
    std::copy(logit + k, logit + count, tail);
    float res[16];
    const VF v = load_acc<T, 16>(tail);
    store_acc<float, 16>(res, exp_clamped(v > hi ? hi : v));
    std::copy(res, res + (count - k), out + k);
  }
}
template <typename T>
inline void exp_logits(const T* logit, int64_t count, double* out) {
  for (int64_t k = 0; k < count; ++k) out[k] = exp_clamped(std::min(double(to_acc(logit[k])), 80.0));
}

// The weights of `groups` consecutive groups of P points (their masks are contiguous) in the accumulation type:
// the mask itself, or its softmax over each group's P points.
template <typename T, typename A>
inline void point_weights(const T* msk, int64_t groups, int64_t p, bool softmax, A* out) {
  const int64_t count = groups * p;
  if (!softmax) {
    for (int64_t k = 0; k < count; ++k) out[k] = to_acc(msk[k]);
    return;
  }
  // Logits of a learned projection are small, so exp(l) itself fits a float for every l <= 80 and no max needs
  // subtracting (the max is a serial chain that cost more than the exponentials). A group whose terms could have
  // overflowed or were clamped (sum above 1e34 means some l > ~78) or underflowed (sum below 1e-20, where the -87
  // clamp could matter) is redone with the usual max shift.
  exp_logits<T>(msk, count, out);
  for (int64_t g = 0; g < groups; ++g) {
    A* e = out + g * p;
    A total = A(0);
    for (int64_t k = 0; k < p; ++k) total += e[k];
    if (!(total >= A(1e-20) && total <= A(1e34))) {
      const T* logit = msk + g * p;
      A own = to_acc(logit[0]);
      for (int64_t k = 1; k < p; ++k) own = std::max(own, A(to_acc(logit[k])));
      total = A(0);
      for (int64_t k = 0; k < p; ++k) total += (e[k] = exp_clamped(A(to_acc(logit[k])) - own));
    }
    const A inv = A(1) / total;
    for (int64_t k = 0; k < p; ++k) e[k] *= inv;
  }
}

// The point weights of groups [g_begin, g_end) of one pixel (mask_row: the pixel's mask row), packed P per group.
template <typename T, typename A>
inline void group_weights(const Geometry& geo, const T* mask_row, int64_t g_begin, int64_t g_end, A* out) {
  const int64_t P = geo.p;
  if (geo.mask_group_stride == P) {
    point_weights<T, A>(mask_row + g_begin * P, g_end - g_begin, P, geo.softmax, out);
    return;
  }
  for (int64_t g = g_begin; g < g_end; ++g) {
    point_weights<T, A>(mask_row + g * geo.mask_group_stride, 1, P, geo.softmax, out + (g - g_begin) * P);
  }
}

// The fraction of a sampling position within its corner square, or NaN if the position is NaN or infinite.
// Such a position fails the inside test like a far one, but the reference (grid_sample) gives NaN, not 0: with a
// NaN fraction every bilinear weight is NaN, so the sample, its mask gradient and the offset gradient of the other
// axis are NaN (NaN * zero row), while it still reads and writes no pixel. One select on the fast path.
template <typename A>
inline A nan_unless_finite(A loc, A fraction) {
  return std::isfinite(loc) ? fraction : std::numeric_limits<A>::quiet_NaN();
}

// ----------------------------------------------------------------------------------------------------------
// The sampling plan of a tile of (pixel, group) pairs (backward): for each sample (P per pair) the input rows of
// its 4 bilinear corners (order (dy, dx) = (0,0), (0,1), (1,0), (1,1), as in the reference), the matching
// grad_input rows, and its fractional position (lx, ly). Corners outside the image (and all corners of a sample
// outside -1 < loc < size, which contributes no gradient at all) read a zero row and write a scratch row, so the
// channel loop needs no masks: a zero row contributes nothing to the value or to either position derivative,
// and what lands in the scratch row is never read back.
//
// Plans are built for a whole tile before any of it is consumed: reading an entry right after writing it
// stalls on store-to-load forwarding (the writes are partly vectorised), which measured 2x slower.

constexpr int64_t kTilePixels = 4;

template <typename T, typename A>
struct Plan {
  std::vector<const T*> in;  // 4 per sample: input rows (already offset to the group's channels)
  std::vector<A*> grad;      // 4 per sample: grad_input rows
  std::vector<A> lx, ly;     // 1 per sample: position within the corner square
  std::vector<A> m;          // 1 per sample: point weight (filled by the caller)
  std::vector<T> zero_row;   // D zeros
  std::vector<A> trash_row;  // D scratch values, written and never read back

  Plan(int64_t samples, int64_t d)
      : in(4 * samples), grad(4 * samples), lx(samples), ly(samples), m(samples), zero_row(d, T(0)),
        trash_row(d, A(0)) {}

  // Fills samples [first, first + P) for one (pixel, group). image / grad_image: the batch element's input /
  // grad_input, offset to this group's first channel.
  void build(int64_t first, const Geometry& geo, const T* off, A base_x, A base_y, const T* image, A* grad_image) {
    const A scale = static_cast<A>(geo.scale);
    const A width = static_cast<A>(geo.w), height = static_cast<A>(geo.h);
    const int64_t row_stride = geo.w * geo.c;
    for (int64_t pt = 0; pt < geo.p; ++pt) {
      // Same operation order as the reference, so the inside test agrees bit for bit in float64.
      const A loc_x = (to_acc(off[2 * pt]) + A(geo.point_x[pt])) * scale + base_x;
      const A loc_y = (to_acc(off[2 * pt + 1]) + A(geo.point_y[pt])) * scale + base_y;
      const int64_t s = first + pt;
      const bool inside = loc_x > A(-1) && loc_x < width && loc_y > A(-1) && loc_y < height;
      // Outside samples are moved to a harmless location (all their corners get masked); this also keeps the
      // int cast defined.
      const A px = inside ? loc_x : A(0), py = inside ? loc_y : A(0);
      const A fx = std::floor(px), fy = std::floor(py);
      const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
      lx[s] = nan_unless_finite(loc_x, px - fx);
      ly[s] = nan_unless_finite(loc_y, py - fy);
      const bool x_in[2] = {inside && x0 >= 0, inside && x0 + 1 < geo.w};
      const bool y_in[2] = {y0 >= 0, y0 + 1 < geo.h};
      for (int q = 0; q < 4; ++q) {
        const int dy = q >> 1, dx = q & 1;
        const bool valid = y_in[dy] && x_in[dx];
        const int64_t row = (y0 + dy) * row_stride + (x0 + dx) * geo.c;
        in[4 * s + q] = valid ? image + row : zero_row.data();
        grad[4 * s + q] = valid ? grad_image + row : trash_row.data();
      }
    }
  }
};

// Decomposes a pixel index into (n, y, x) and the base location of its kernel centre.
template <typename A>
struct PixelBase {
  int64_t n;
  A x, y;
  PixelBase(const Geometry& geo, int64_t pix) {
    n = pix / (geo.ho * geo.wo);
    const int64_t rem = pix - n * geo.ho * geo.wo;
    const int64_t row = rem / geo.wo;
    const int64_t col = rem - row * geo.wo;
    x = static_cast<A>(col * geo.stride_w + geo.origin_x);
    y = static_cast<A>(row * geo.stride_h + geo.origin_y);
  }
};

// ----------------------------------------------------------------------------------------------------------
// Forward. Tasks are runs of output pixels (the groups of a pixel are consecutive in memory). The sample
// geometry is computed inline, right before its four row loads: interleaving that arithmetic with the loads
// hides their L1-miss latency, and measured faster than precomputing a plan or a group-major order. Two groups
// of a pixel share one pass when each is a single channel block (5-11% faster than one; four were slower).
// Masked corners (and all four corners of samples outside -1 < loc < size) read a zero row instead of
// branching, which keeps the loop free of data-dependent branches near the image borders.

template <typename T>
void forward_kernel(const Geometry& geo, const T* __restrict__ input, const T* __restrict__ offset,
                    const T* __restrict__ mask, T* __restrict__ output) {
  using A = typename AccType<T>::type;
  const int64_t pixels = geo.n * geo.ho * geo.wo;
  const int64_t D = geo.d, P = geo.p, G = geo.g;
  const A scale = static_cast<A>(geo.scale);
  const A width = static_cast<A>(geo.w), height = static_cast<A>(geo.h);
  const int64_t row_stride = geo.w * geo.c;
  // Work per pixel is G*P*4*D FMAs; keep tiny calls on one thread where the fork would cost more.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, G * P * 4 * D));
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> pixel_weights(G * P);
    const std::vector<T> zero_row(D, T(0));
    for (int64_t pix = begin; pix < end; ++pix) {
      const PixelBase<A> base(geo, pix);
      const T* image = input + base.n * geo.h * geo.w * geo.c;
      group_weights<T, A>(geo, mask + pix * geo.mask_stride, 0, G, pixel_weights.data());
      // Two groups per pass: twice the independent loads in flight. for_blocks makes D = 8, 16, 32 one block.
      const int64_t step = (D == 8 || D == 16 || D == 32) && G % 2 == 0 ? 2 : 1;
      for (int64_t g = 0; g < G; g += step) {
        for_blocks(D, [&](auto block, int64_t c0) {
          constexpr int B = decltype(block)::value;
          Vec<A, B> acc[2][4] = {};  // one accumulator per corner: four independent FMA chains per group
          for (int64_t pt = 0; pt < P; ++pt) {
            for (int64_t j = 0; j < step; ++j) {
              const int64_t gg = g + j;
              const T* off = offset + pix * geo.offset_stride + gg * geo.offset_group_stride;
              // Same operation order as the reference, so the inside test agrees bit for bit in float64.
              const A loc_x = (to_acc(off[2 * pt]) + A(geo.point_x[pt])) * scale + base.x;
              const A loc_y = (to_acc(off[2 * pt + 1]) + A(geo.point_y[pt])) * scale + base.y;
              const bool inside = loc_x > A(-1) && loc_x < width && loc_y > A(-1) && loc_y < height;
              const A px = inside ? loc_x : A(0), py = inside ? loc_y : A(0);
              // Unmasked: an outside sample reads zero rows (x0_in, x1_in below), so a finite weight adds 0 and a
              // NaN/Inf one NaN, as `mask * 0` does in the reference.
              const A m = pixel_weights[gg * P + pt];
              const A fx = std::floor(px), fy = std::floor(py);
              const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
              const A lx = nan_unless_finite(loc_x, px - fx), ly = nan_unless_finite(loc_y, py - fy);
              const A mhy = m * (A(1) - ly), mly = m * ly;
              const T* base_row = image + gg * D + c0;
              const int64_t r0 = y0 * row_stride + x0 * geo.c;
              const bool x0_in = inside && x0 >= 0, x1_in = inside && x0 + 1 < geo.w;
              const bool y0_in = y0 >= 0, y1_in = y0 + 1 < geo.h;
              const T* p0 = (y0_in && x0_in) ? base_row + r0 : zero_row.data();
              const T* p1 = (y0_in && x1_in) ? base_row + r0 + geo.c : zero_row.data();
              const T* p2 = (y1_in && x0_in) ? base_row + r0 + row_stride : zero_row.data();
              const T* p3 = (y1_in && x1_in) ? base_row + r0 + row_stride + geo.c : zero_row.data();
              Vec<A, B>* a = acc[j];
              a[0] += (mhy * (A(1) - lx)) * load_acc<T, B>(p0);
              a[1] += (mhy * lx) * load_acc<T, B>(p1);
              a[2] += (mly * (A(1) - lx)) * load_acc<T, B>(p2);
              a[3] += (mly * lx) * load_acc<T, B>(p3);
            }
          }
          for (int64_t j = 0; j < step; ++j) {
            const Vec<A, B>* a = acc[j];
            store_out<T, A, B>(output + (pix * G + g + j) * D + c0, (a[0] + a[1]) + (a[2] + a[3]));
          }
        });
      }
    }
  });
}

// ----------------------------------------------------------------------------------------------------------
// Backward. grad_offset and grad_mask are per-sample dot products with grad_output; grad_input is a scatter,
// written into an A-typed image that the caller guarantees no other thread writes at the same time (either
// because each task owns whole (image, group-range) slices, or because each thread has a private buffer).

template <typename T>
struct BackwardPass {
  using A = typename AccType<T>::type;
  const Geometry& geo;
  const T* __restrict__ input;
  const T* __restrict__ offset;
  const T* __restrict__ mask;
  const T* __restrict__ grad_output;
  T* __restrict__ grad_offset;
  T* __restrict__ grad_mask;

  // Pixels [pix_begin, pix_end) (global indices, all in image n), groups [g_begin, g_end); grad_image is the
  // A-typed gradient image of batch element n.
  void run(int64_t n, int64_t pix_begin, int64_t pix_end, int64_t g_begin, int64_t g_end, A* grad_image) const {
    const int64_t D = geo.d, P = geo.p, G = geo.g, groups = g_end - g_begin;
    const A scale = static_cast<A>(geo.scale);
    Plan<T, A> plan(kTilePixels * groups * P, D);
    std::vector<A> dot_m(P), dot_x(P), dot_y(P);
    const T* image = input + n * geo.h * geo.w * geo.c;
    for (int64_t tile = pix_begin; tile < pix_end; tile += kTilePixels) {
      const int64_t tile_end = std::min(pix_end, tile + kTilePixels);
      for (int64_t pix = tile; pix < tile_end; ++pix) {
        const PixelBase<A> base(geo, pix);
        A* weights = plan.m.data() + (pix - tile) * groups * P;
        group_weights<T, A>(geo, mask + pix * geo.mask_stride, g_begin, g_end, weights);
        for (int64_t g = g_begin; g < g_end; ++g) {
          const int64_t first = ((pix - tile) * groups + g - g_begin) * P;
          const T* off = offset + pix * geo.offset_stride + g * geo.offset_group_stride;
          plan.build(first, geo, off, base.x, base.y, image + g * D, grad_image + g * D);
        }
      }
      for (int64_t pix = tile; pix < tile_end; ++pix) {
        for (int64_t g = g_begin; g < g_end; ++g) {
          const int64_t pg = pix * G + g;
          const int64_t first = ((pix - tile) * groups + g - g_begin) * P;
          const T* const* rows = plan.in.data() + 4 * first;
          A* const* grad_rows = plan.grad.data() + 4 * first;
          const A* lx = plan.lx.data() + first;
          const A* ly = plan.ly.data() + first;
          const A* m = plan.m.data() + first;
          std::fill(dot_m.begin(), dot_m.end(), A(0));
          std::fill(dot_x.begin(), dot_x.end(), A(0));
          std::fill(dot_y.begin(), dot_y.end(), A(0));
          const T* gout = grad_output + pg * D;
          for_blocks(D, [&](auto width, int64_t c0) {
            constexpr int B = decltype(width)::value;
            const Vec<A, B> go = load_acc<T, B>(gout + c0);
            for (int64_t pt = 0; pt < P; ++pt) {
              const A fx = lx[pt], fy = ly[pt], gx = A(1) - fx, gy = A(1) - fy;
              const T* const* r = rows + 4 * pt;
              const Vec<A, B> r0 = load_acc<T, B>(r[0] + c0), r1 = load_acc<T, B>(r[1] + c0);
              const Vec<A, B> r2 = load_acc<T, B>(r[2] + c0), r3 = load_acc<T, B>(r[3] + c0);
              // Bilinear value and its derivatives in x and y, factored by rows / columns (masked corners are
              // zero rows, so the unmasked weights are exact).
              const Vec<A, B> top = gx * r0 + fx * r1, bottom = gx * r2 + fx * r3;
              const Vec<A, B> left = gy * r0 + fy * r2, right = gy * r1 + fy * r3;
              dot_m[pt] += hsum<A, B>(go * (gy * top + fy * bottom));
              dot_x[pt] += hsum<A, B>(go * (right - left));
              dot_y[pt] += hsum<A, B>(go * (bottom - top));
              const A mt = m[pt] * gy, mb = m[pt] * fy;
              const A w[4] = {mt * gx, mt * fx, mb * gx, mb * fx};
              for (int q = 0; q < 4; ++q) {
                A* grow = grad_rows[4 * pt + q] + c0;
                store_acc<A, B>(grow, load_acc<A, B>(grow) + w[q] * go);
              }
            }
          });
          T* goff = grad_offset + pg * P * 2;
          T* gmsk = grad_mask + pg * P;
          A weighted = A(0);  // sum_j m_j * dL/dm_j, for the softmax Jacobian
          if (geo.softmax) {
            for (int64_t pt = 0; pt < P; ++pt) weighted += m[pt] * dot_m[pt];
          }
          for (int64_t pt = 0; pt < P; ++pt) {
            gmsk[pt] = from_acc<T>(geo.softmax ? m[pt] * (dot_m[pt] - weighted) : dot_m[pt]);
            goff[2 * pt] = from_acc<T>(m[pt] * dot_x[pt] * scale);
            goff[2 * pt + 1] = from_acc<T>(m[pt] * dot_y[pt] * scale);
          }
        }
      }
    }
  }
};

at::ScalarType acc_scalar_type(at::ScalarType t) {
  return (t == at::kBFloat16 || t == at::kHalf) ? at::kFloat : t;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "dcnv3 cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, "dcnv3 cpu: ", name, " must be 4-D NHWC");
}

// `t` in `dtype` with contiguous pixel rows, read in place when it already is one (a slice of a wider tensor), and
// the element distance between consecutive pixels.
std::pair<at::Tensor, int64_t> pixel_rows(const at::Tensor& t, at::ScalarType dtype) {
  at::Tensor rows = t.to(dtype);
  const int64_t step = rows.stride(2);
  const bool strided_rows = rows.stride(3) == 1 && step >= rows.size(3) && rows.stride(1) == rows.size(2) * step &&
                            rows.stride(0) == rows.size(1) * rows.stride(1);
  if (!strided_rows) rows = rows.contiguous();
  return {rows, strided_rows ? step : rows.size(3)};
}

// The tensors of one call as the kernels read them (contiguous input; offset and mask in its dtype with contiguous
// pixel rows, read in place when they already are) and their geometry: the prologue of forward and backward.
struct Operands {
  at::Tensor input, offset, mask;
  Geometry geo;
};

Operands prepare(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& mask_, int64_t kernel_h,
                 int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                 int64_t dilation_w, int64_t group, double offset_scale, bool remove_center, bool softmax,
                 int64_t offset_group_stride, int64_t mask_group_stride) {
  check_cpu(input_, "input");
  check_cpu(offset_, "offset");
  check_cpu(mask_, "mask");
  at::Tensor input = input_.contiguous();
  std::pair<at::Tensor, int64_t> offset_rows = pixel_rows(offset_, input.scalar_type());
  std::pair<at::Tensor, int64_t> mask_rows = pixel_rows(mask_, input.scalar_type());
  Geometry geo(input, offset_rows.first, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
               group, offset_scale, remove_center, softmax, offset_group_stride, mask_group_stride);
  geo.offset_stride = offset_rows.second;
  geo.mask_stride = mask_rows.second;
  const int64_t mask_channels = (geo.g - 1) * geo.mask_group_stride + geo.p;
  TORCH_CHECK(mask_rows.first.size(3) == mask_channels, "dcnv3 cpu: mask has ", mask_rows.first.size(3),
              " channels, expected ", mask_channels);
  return {std::move(input), std::move(offset_rows.first), std::move(mask_rows.first), std::move(geo)};
}

at::Tensor dcnv3_forward(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& mask_, int64_t kernel_h,
                         int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                         int64_t dilation_h, int64_t dilation_w, int64_t group, double offset_scale,
                         bool remove_center, bool softmax, int64_t offset_group_stride, int64_t mask_group_stride) {
  const Operands ops = prepare(input_, offset_, mask_, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                               dilation_w, group, offset_scale, remove_center, softmax, offset_group_stride,
                               mask_group_stride);
  const at::Tensor &input = ops.input, &offset = ops.offset, &mask = ops.mask;
  const Geometry& geo = ops.geo;
  at::Tensor output = at::empty({geo.n, geo.ho, geo.wo, geo.c}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dcnv3_forward_cpu", [&] {
    forward_kernel<scalar_t>(geo, input.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
                             mask.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>());
  });
  return output;
}

bool balanced(int64_t tasks, int64_t threads) { return tasks % threads == 0 || tasks >= 4 * threads; }

// Groups per (image, group-range) slice of the backward: the most that still give the threads balanced work and
// keep a slice of input and grad_input within L2. Wider slices read each pixel's offset/mask row once instead of
// once per group (a group's 3P values are a fraction of a cache line apart from the next pixel's), which measured
// 25-35% faster on InternImage-T stage shapes.
int64_t slice_groups(const Geometry& geo, int64_t threads) {
  constexpr int64_t kSliceBytes = 1 << 20;
  for (int64_t span = geo.g; span > 1; --span) {
    if (geo.g % span == 0 && balanced(geo.n * (geo.g / span), threads) &&
        geo.h * geo.w * span * geo.d * 4 <= kSliceBytes)
      return span;
  }
  return 1;
}

// mode: 0 = choose, 1 = tasks own (image, group-range) slices of grad_input, 2 = per-thread grad_input buffers.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& mask_,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, double offset_scale, bool remove_center, bool softmax,
    int64_t mode, int64_t offset_group_stride, int64_t mask_group_stride) {
  check_cpu(grad_output_, "grad_output");
  const Operands ops = prepare(input_, offset_, mask_, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                               dilation_w, group, offset_scale, remove_center, softmax, offset_group_stride,
                               mask_group_stride);
  const at::Tensor &input = ops.input, &offset = ops.offset, &mask = ops.mask;
  const Geometry& geo = ops.geo;
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor grad_output = grad_output_.to(dtype).contiguous();
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({geo.n, geo.ho, geo.wo, geo.c}),
              "dcnv3 cpu: grad_output has the wrong shape");
  // Gradients are packed ([g][p][x, y] and [g][p]) whatever the input strides.
  at::Tensor grad_offset = at::empty({geo.n, geo.ho, geo.wo, geo.g * geo.p * 2}, offset.options());
  at::Tensor grad_mask = at::empty({geo.n, geo.ho, geo.wo, geo.g * geo.p}, mask.options());
  const at::ScalarType acc_type = acc_scalar_type(dtype);
  if (input.numel() == 0 || grad_output.numel() == 0) {
    return {at::zeros_like(input), grad_offset.zero_(), grad_mask.zero_()};
  }

  const int64_t image_size = geo.h * geo.w * geo.c;
  const int64_t image_pixels = geo.ho * geo.wo;
  const int64_t items = geo.n * geo.g;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t work = geo.n * image_pixels * geo.g * geo.p * 4 * geo.d;
  if (mode == 0) {
    // Owning whole (image, group-range) slices needs no buffers and no reduction, and a slice stays in L2 (see
    // slice_groups); it only loses when there are too few (image, group) slices to balance the threads.
    mode = (threads == 1 || work < 65536 || (items >= threads && balanced(items, threads))) ? 1 : 2;
  }

  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dcnv3_backward_cpu", [&] {
    using A = typename AccType<scalar_t>::type;
    const BackwardPass<scalar_t> pass{geo,
                                      input.const_data_ptr<scalar_t>(),
                                      offset.const_data_ptr<scalar_t>(),
                                      mask.const_data_ptr<scalar_t>(),
                                      grad_output.const_data_ptr<scalar_t>(),
                                      grad_offset.mutable_data_ptr<scalar_t>(),
                                      grad_mask.mutable_data_ptr<scalar_t>()};
    {
      if (mode == 1) {
        at::Tensor acc = at::zeros(input.sizes(), input.options().dtype(acc_type));
        A* acc_ptr = acc.mutable_data_ptr<A>();
        const int64_t span = slice_groups(geo, threads);
        const int64_t slices = geo.g / span, tasks = geo.n * slices;
        const int64_t grain = work < 65536 ? tasks : 1;
        at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
          for (int64_t it = begin; it < end; ++it) {
            const int64_t n = it / slices, g = (it - n * slices) * span;
            pass.run(n, n * image_pixels, (n + 1) * image_pixels, g, g + span, acc_ptr + n * image_size);
          }
        });
        grad_input = acc_type == dtype ? acc : acc.to(dtype);
      } else {
        at::Tensor buffers = at::zeros({threads, geo.n * image_size}, input.options().dtype(acc_type));
        A* buf_ptr = buffers.mutable_data_ptr<A>();
        const int64_t pixels = geo.n * image_pixels;
        at::parallel_for(0, pixels, 1, [&](int64_t begin, int64_t end) {
          // Nested in another parallel region this runs inline on one buffer (threads == 1 there).
          const int64_t tid = threads == 1 ? 0 : at::get_thread_num();
          TORCH_CHECK(tid < threads, "dcnv3 cpu: thread id ", tid, " out of range ", threads);
          A* mine = buf_ptr + tid * geo.n * image_size;
          for (int64_t pix = begin; pix < end;) {
            const int64_t n = pix / image_pixels;
            const int64_t stop = std::min(end, (n + 1) * image_pixels);
            pass.run(n, pix, stop, 0, geo.g, mine + n * image_size);
            pix = stop;
          }
        });
        // Reduce in the accumulation type, then round once.
        grad_input = buffers.sum(0).to(dtype).view(input.sizes());
      }
    }
  });
  return {grad_input, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY(internimage_cpu, m) {
  m.def(
      "dcnv3_forward(Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, int stride_h, "
      "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, float offset_scale, "
      "bool remove_center, bool softmax=False, int offset_group_stride=0, int mask_group_stride=0) -> Tensor");
  m.def(
      "dcnv3_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, "
      "float offset_scale, bool remove_center, bool softmax=False, int mode=0, int offset_group_stride=0, "
      "int mask_group_stride=0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(internimage_cpu, CPU, m) {
  m.impl("dcnv3_forward", &dcnv3_forward);
  m.impl("dcnv3_backward", &dcnv3_backward);
}
