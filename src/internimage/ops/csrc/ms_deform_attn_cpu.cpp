// Fused CPU kernels of multi-scale deformable attention (Deformable DETR): forward and backward, fp64 / fp32 / bf16 /
// fp16 (half precision is loaded, computed in fp32 and stored back).
//
// Semantics are those of internimage/ops/ms_deform_attn.py (grid_sample, bilinear, zero padding,
// align_corners=False): for every (n, query, head)
//   out[n, q, m, :] = sum_{l, p} attn[n, q, m, l, p] * bilinear(value_l[n, :, :, m, :], x * w_l - 0.5, y * h_l - 0.5)
// where (x, y) = loc[n, q, m, l, p] and corners outside the level read zero. A sample whose four corners are all
// outside contributes weight * 0 (NaN for a NaN or infinite weight) and gets zero gradients. NaN and Inf propagate
// to the same positions as through the grid_sample reference: a non-finite position samples NaN (output and
// weight gradient NaN; the gradient of the other coordinate NaN, its own 0), an outside sample with a non-finite
// weight has NaN position gradients.
//
// value: (N, S, M, D), S = sum h_l * w_l, levels flattened in order; loc: (N, Lq, M, L, P, 2); attn: (N, Lq, M, L, P);
// out: (N, Lq, M * D). The forward is one pass per (n, query, head): four D-wide rows gathered per sample and
// accumulated, instead of grid_sample materialising an (N*M, D, Lq, P) tensor per level. The backward scatters
// grad_value without atomics: either each task owns the (image, head) slice grad_value[n, :, m, :] (every query of
// that head writes only there), or every thread accumulates into a private buffer, summed at the end.
//
// Registered as internimage_cpu::ms_deform_attn_forward / ms_deform_attn_backward (a fragment of the namespace that
// dcnv3_cpu.cpp defines; each source file is its own extension, see internimage/ops/cpp_build.py).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <tuple>
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

struct Shape {
  int64_t n, s, m, d, lq, l, p;
  std::vector<int64_t> h, w, start;  // per level
};

// The four bilinear corners of one sample: value rows (zero_row where outside) and grad rows (trash_row where
// outside), weights in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1), and the fractions fx, fy.
template <typename A>
struct Sample {
  int64_t token[4];  // token index within the image, or -1 outside
  A fx, fy;
};

// `v` rounded to its type: keeps the compiler from contracting the multiply that produced it with a following add
// into one FMA (which rounds once, and so can land on the other side of an integer).
template <typename A>
inline A rounded(A v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(v));
#elif defined(__GNUC__)
  asm("" : "+m"(v));
#endif
  return v;
}

// grid_sample's unnormalisation with align_corners=False, x = lx * size - 0.5, computed as the reference computes it
// (grid = 2 lx - 1 in the caller's tensor op, then ATen's CPU kernel: (grid + 1) * (size / 2) - 0.5), so a location
// that lands on an integer (a pixel centre, where the bilinear weights have a kink) picks the same corners and the
// same one-sided position gradient as the reference, bit for bit in float64.
template <typename A>
inline A unnormalize(A l, int64_t size) {
  const A grid = rounded(A(2) * l) - A(1);
  return rounded((grid + A(1)) * (A(size) / A(2))) - A(0.5);
}

// Fills `out` for the normalised location (lx, ly) on a level of size (h, w) starting at token `start`; false when
// no corner is inside (nothing to read or write). Corners are floor(x) and floor(x) + 1.
template <typename A>
inline bool locate(A lx, A ly, int64_t h, int64_t w, int64_t start, Sample<A>& out) {
  const A x = unnormalize(lx, w), y = unnormalize(ly, h);
  // At x == -1 the corner x1 = 0 is inside with weight 0 but still carries a position gradient (as in
  // grid_sample); the negated test also rejects NaN.
  if (!(x >= A(-1) && x <= A(w) && y >= A(-1) && y <= A(h))) return false;
  const A xf = std::floor(x), yf = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(xf), y0 = static_cast<int64_t>(yf);
  out.fx = x - xf;
  out.fy = y - yf;
  const bool ix0 = x0 >= 0 && x0 < w, ix1 = x0 + 1 >= 0 && x0 + 1 < w;
  const bool iy0 = y0 >= 0 && y0 < h, iy1 = y0 + 1 >= 0 && y0 + 1 < h;
  const int64_t base = start + y0 * w + x0;
  out.token[0] = iy0 && ix0 ? base : -1;
  out.token[1] = iy0 && ix1 ? base + 1 : -1;
  out.token[2] = iy1 && ix0 ? base + w : -1;
  out.token[3] = iy1 && ix1 ? base + w + 1 : -1;
  return out.token[0] >= 0 || out.token[1] >= 0 || out.token[2] >= 0 || out.token[3] >= 0;
}

// DC > 0: the channel count D as a compile-time constant (the channel loops unroll and the accumulator stays in
// registers); 0: any D.
template <typename T, int DC>
void forward_kernel(const Shape& sh, const T* value, const T* loc, const T* attn, T* out) {
  using A = typename AccType<T>::type;
  const int64_t D = DC > 0 ? DC : sh.d, M = sh.m, LP = sh.l * sh.p;
  const int64_t items = sh.n * sh.lq * sh.m;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, LP * D / 16));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> acc_heap(DC > 0 ? 0 : D);
    A acc_fixed[DC > 0 ? DC : 1];
    A* __restrict__ a = DC > 0 ? acc_fixed : acc_heap.data();
    const std::vector<T> zero_row(D, T(0));
    for (int64_t it = begin; it < end; ++it) {
      const int64_t m = it % M, b = it / (sh.lq * M);
      const T* lp = loc + it * LP * 2;
      const T* ap = attn + it * LP;
      const T* vbase = value + (b * sh.s * M + m) * D;  // token t of this head: vbase + t * M * D
      for (int64_t c = 0; c < D; ++c) a[c] = A(0);
      for (int64_t lv = 0; lv < sh.l; ++lv) {
        for (int64_t pt = 0; pt < sh.p; ++pt) {
          const int64_t k = lv * sh.p + pt;
          const A lx = A(lp[2 * k]), ly = A(lp[2 * k + 1]), wgt = A(ap[k]);
          Sample<A> smp;
          if (!std::isfinite(lx) || !std::isfinite(ly)) {  // grid_sample samples NaN there
            for (int64_t c = 0; c < D; ++c) a[c] = std::numeric_limits<A>::quiet_NaN();
            continue;
          }
          if (!locate<A>(lx, ly, sh.h[lv], sh.w[lv], sh.start[lv], smp)) {
            if (!std::isfinite(wgt)) {  // weight * 0
              for (int64_t c = 0; c < D; ++c) a[c] = std::numeric_limits<A>::quiet_NaN();
            }
            continue;
          }
          const A gx = A(1) - smp.fx, gy = A(1) - smp.fy;
          const A w0 = wgt * gy * gx, w1 = wgt * gy * smp.fx, w2 = wgt * smp.fy * gx, w3 = wgt * smp.fy * smp.fx;
          const T* __restrict__ r0 = smp.token[0] >= 0 ? vbase + smp.token[0] * M * D : zero_row.data();
          const T* __restrict__ r1 = smp.token[1] >= 0 ? vbase + smp.token[1] * M * D : zero_row.data();
          const T* __restrict__ r2 = smp.token[2] >= 0 ? vbase + smp.token[2] * M * D : zero_row.data();
          const T* __restrict__ r3 = smp.token[3] >= 0 ? vbase + smp.token[3] * M * D : zero_row.data();
#pragma omp simd
          for (int64_t c = 0; c < D; ++c) {
            a[c] += w0 * A(r0[c]) + w1 * A(r1[c]) + w2 * A(r2[c]) + w3 * A(r3[c]);
          }
        }
      }
      T* o = out + it * D;
      for (int64_t c = 0; c < D; ++c) o[c] = static_cast<T>(a[c]);
    }
  });
}

// The backward of items [begin, end) of (n, query, head); grad_image(b) is the A-typed gradient of value[b].
// Writes grad_loc and grad_attn of those items and accumulates into grad_value rows of their (image, head).
template <typename T>
struct BackwardPass {
  using A = typename AccType<T>::type;
  const Shape& sh;
  const T* value;
  const T* loc;
  const T* attn;
  const T* grad_out;
  T* grad_loc;
  T* grad_attn;

  template <int DC>
  void run(int64_t it, A* grad_image, const T* zero_row, A* trash_row) const {
    const int64_t D = DC > 0 ? DC : sh.d, M = sh.m, LP = sh.l * sh.p;
    const int64_t m = it % M, b = it / (sh.lq * M);
    const T* lp = loc + it * LP * 2;
    const T* ap = attn + it * LP;
    const T* __restrict__ go = grad_out + it * D;
    const T* vbase = value + (b * sh.s * M + m) * D;
    A* gbase = grad_image + m * D;
    T* gl = grad_loc + it * LP * 2;
    T* ga = grad_attn + it * LP;
    for (int64_t lv = 0; lv < sh.l; ++lv) {
      for (int64_t pt = 0; pt < sh.p; ++pt) {
        const int64_t k = lv * sh.p + pt;
        const A lx = A(lp[2 * k]), ly = A(lp[2 * k + 1]), wgt = A(ap[k]);
        const T nan = std::numeric_limits<T>::quiet_NaN();
        Sample<A> smp;
        const bool bad_x = !std::isfinite(lx), bad_y = !std::isfinite(ly);
        if (bad_x || bad_y) {  // what grid_sample's backward gives at a non-finite position
          ga[k] = nan;
          gl[2 * k] = bad_y ? nan : T(0);
          gl[2 * k + 1] = bad_x ? nan : T(0);
          continue;
        }
        if (!locate<A>(lx, ly, sh.h[lv], sh.w[lv], sh.start[lv], smp)) {
          ga[k] = T(0);
          gl[2 * k] = gl[2 * k + 1] = std::isfinite(wgt) ? T(0) : nan;
          continue;
        }
        const A fx = smp.fx, fy = smp.fy, gx = A(1) - fx, gy = A(1) - fy;
        const T* r[4];
        A* g[4];
        for (int q = 0; q < 4; ++q) {
          r[q] = smp.token[q] >= 0 ? vbase + smp.token[q] * M * D : zero_row;
          g[q] = smp.token[q] >= 0 ? gbase + smp.token[q] * M * D : trash_row;
        }
        const T* __restrict__ r0 = r[0];
        const T* __restrict__ r1 = r[1];
        const T* __restrict__ r2 = r[2];
        const T* __restrict__ r3 = r[3];
        const A w0 = wgt * gy * gx, w1 = wgt * gy * fx, w2 = wgt * fy * gx, w3 = wgt * fy * fx;
        A dot_v = A(0), dot_x = A(0), dot_y = A(0);
#pragma omp simd reduction(+ : dot_v, dot_x, dot_y)
        for (int64_t c = 0; c < D; ++c) {
          const A v0 = A(r0[c]), v1 = A(r1[c]), v2 = A(r2[c]), v3 = A(r3[c]), o = A(go[c]);
          const A top = gx * v0 + fx * v1, bottom = gx * v2 + fx * v3;
          const A left = gy * v0 + fy * v2, right = gy * v1 + fy * v3;
          dot_v += o * (gy * top + fy * bottom);
          dot_x += o * (right - left);
          dot_y += o * (bottom - top);
        }
        // The four rows may alias one another only as trash_row (distinct tokens are distinct rows), whose content
        // is never read, so they are updated one after the other.
        const A ws[4] = {w0, w1, w2, w3};
        for (int q = 0; q < 4; ++q) {
          A* __restrict__ row = g[q];
          const A wq = ws[q];
#pragma omp simd
          for (int64_t c = 0; c < D; ++c) row[c] += wq * A(go[c]);
        }
        ga[k] = static_cast<T>(dot_v);
        gl[2 * k] = static_cast<T>(wgt * dot_x * A(sh.w[lv]));
        gl[2 * k + 1] = static_cast<T>(wgt * dot_y * A(sh.h[lv]));
      }
    }
  }
};

// Calls f(std::integral_constant<int, DC>) with DC = d for the common head widths, else 0 (runtime D).
template <typename F>
inline void with_channels(int64_t d, F&& f) {
  if (d == 32) {
    f(std::integral_constant<int, 32>{});
  } else if (d == 64) {
    f(std::integral_constant<int, 64>{});
  } else if (d == 16) {
    f(std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

Shape check(const at::Tensor& value, at::IntArrayRef spatial_shapes, const at::Tensor& loc, const at::Tensor& attn) {
  TORCH_CHECK(value.device().is_cpu() && loc.device().is_cpu() && attn.device().is_cpu(),
              "ms_deform_attn cpu: tensors must be on the CPU");
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn cpu: value must be (N, S, M, D)");
  TORCH_CHECK(loc.dim() == 6 && loc.size(5) == 2, "ms_deform_attn cpu: sampling_locations must be (N, Lq, M, L, P, 2)");
  TORCH_CHECK(attn.dim() == 5, "ms_deform_attn cpu: attention_weights must be (N, Lq, M, L, P)");
  TORCH_CHECK(spatial_shapes.size() % 2 == 0, "ms_deform_attn cpu: spatial_shapes must hold (h, w) pairs");
  Shape sh;
  sh.n = value.size(0);
  sh.s = value.size(1);
  sh.m = value.size(2);
  sh.d = value.size(3);
  sh.lq = loc.size(1);
  sh.l = loc.size(3);
  sh.p = loc.size(4);
  TORCH_CHECK(static_cast<int64_t>(spatial_shapes.size()) == 2 * sh.l, "ms_deform_attn cpu: ", sh.l,
              " levels in sampling_locations, ", spatial_shapes.size() / 2, " spatial shapes");
  TORCH_CHECK(loc.size(0) == sh.n && loc.size(2) == sh.m, "ms_deform_attn cpu: sampling_locations shape mismatch");
  TORCH_CHECK(attn.sizes() == loc.sizes().slice(0, 5), "ms_deform_attn cpu: attention_weights shape mismatch");
  int64_t total = 0;
  for (int64_t lv = 0; lv < sh.l; ++lv) {
    sh.h.push_back(spatial_shapes[2 * lv]);
    sh.w.push_back(spatial_shapes[2 * lv + 1]);
    sh.start.push_back(total);
    TORCH_CHECK(sh.h.back() >= 0 && sh.w.back() >= 0, "ms_deform_attn cpu: negative spatial shape");
    total += sh.h.back() * sh.w.back();
  }
  TORCH_CHECK(total == sh.s, "ms_deform_attn cpu: value has ", sh.s, " tokens, the spatial shapes give ", total);
  return sh;
}

at::Tensor ms_deform_attn_forward(const at::Tensor& value_, at::IntArrayRef spatial_shapes, const at::Tensor& loc_,
                                  const at::Tensor& attn_) {
  const Shape sh = check(value_, spatial_shapes, loc_, attn_);
  const at::Tensor value = value_.contiguous();
  const at::Tensor loc = loc_.to(value.scalar_type()).contiguous();
  const at::Tensor attn = attn_.to(value.scalar_type()).contiguous();
  at::Tensor out = at::empty({sh.n, sh.lq, sh.m * sh.d}, value.options());
  if (out.numel() == 0) return out;
  if (sh.s == 0 || sh.l == 0 || sh.p == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    with_channels(sh.d, [&](auto dc) {
      forward_kernel<scalar_t, decltype(dc)::value>(sh, value.const_data_ptr<scalar_t>(),
                                                    loc.const_data_ptr<scalar_t>(), attn.const_data_ptr<scalar_t>(),
                                                    out.mutable_data_ptr<scalar_t>());
    });
  });
  return out;
}

bool balanced(int64_t tasks, int64_t threads) { return tasks % threads == 0 || tasks >= 4 * threads; }

// mode: 0 = choose, 1 = tasks own (image, head) slices of grad_value, 2 = per-thread grad_value buffers.
// Returns (grad_value, grad_sampling_locations, grad_attention_weights), shaped and typed like the inputs.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward(const at::Tensor& grad_out_,
                                                                       const at::Tensor& value_,
                                                                       at::IntArrayRef spatial_shapes,
                                                                       const at::Tensor& loc_, const at::Tensor& attn_,
                                                                       int64_t mode) {
  const Shape sh = check(value_, spatial_shapes, loc_, attn_);
  const at::ScalarType dtype = value_.scalar_type();
  const at::ScalarType acc_type = (dtype == at::kBFloat16 || dtype == at::kHalf) ? at::kFloat : dtype;
  const at::Tensor value = value_.contiguous();
  const at::Tensor loc = loc_.to(dtype).contiguous();
  const at::Tensor attn = attn_.to(dtype).contiguous();
  const at::Tensor grad_out = grad_out_.to(dtype).contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({sh.n, sh.lq, sh.m * sh.d}),
              "ms_deform_attn cpu: grad_output has the wrong shape");
  at::Tensor grad_loc = at::empty(loc.sizes(), loc.options());
  at::Tensor grad_attn = at::empty(attn.sizes(), attn.options());
  const int64_t items = sh.n * sh.lq * sh.m;
  if (items == 0 || value.numel() == 0 || sh.l == 0 || sh.p == 0) {
    return {at::zeros_like(value), grad_loc.zero_(), grad_attn.zero_()};
  }
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t slices = sh.n * sh.m;
  if (mode == 0) mode = (threads == 1 || (slices >= threads && balanced(slices, threads))) ? 1 : 2;
  const int64_t image_size = sh.s * sh.m * sh.d;

  at::Tensor grad_value;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "ms_deform_attn_backward_cpu", [&] {
    using A = typename AccType<scalar_t>::type;
    const BackwardPass<scalar_t> pass{sh,
                                      value.const_data_ptr<scalar_t>(),
                                      loc.const_data_ptr<scalar_t>(),
                                      attn.const_data_ptr<scalar_t>(),
                                      grad_out.const_data_ptr<scalar_t>(),
                                      grad_loc.mutable_data_ptr<scalar_t>(),
                                      grad_attn.mutable_data_ptr<scalar_t>()};
    if (mode == 1) {
      at::Tensor acc = at::zeros(value.sizes(), value.options().dtype(acc_type));
      A* acc_ptr = acc.mutable_data_ptr<A>();
      at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
        const std::vector<scalar_t> zero_row(sh.d, scalar_t(0));
        std::vector<A> trash_row(sh.d);
        for (int64_t slice = begin; slice < end; ++slice) {
          const int64_t b = slice / sh.m, m = slice % sh.m;
          with_channels(sh.d, [&](auto dc) {
            for (int64_t q = 0; q < sh.lq; ++q) {
              pass.template run<decltype(dc)::value>((b * sh.lq + q) * sh.m + m, acc_ptr + b * image_size,
                                                     zero_row.data(), trash_row.data());
            }
          });
        }
      });
      grad_value = acc_type == dtype ? acc : acc.to(dtype);
    } else {
      at::Tensor buffers = at::zeros({threads, sh.n * image_size}, value.options().dtype(acc_type));
      A* buf_ptr = buffers.mutable_data_ptr<A>();
      at::parallel_for(0, items, 16, [&](int64_t begin, int64_t end) {
        const int64_t tid = threads == 1 ? 0 : at::get_thread_num();
        TORCH_CHECK(tid < threads, "ms_deform_attn cpu: thread id ", tid, " out of range ", threads);
        A* mine = buf_ptr + tid * sh.n * image_size;
        const std::vector<scalar_t> zero_row(sh.d, scalar_t(0));
        std::vector<A> trash_row(sh.d);
        with_channels(sh.d, [&](auto dc) {
          for (int64_t it = begin; it < end; ++it) {
            pass.template run<decltype(dc)::value>(it, mine + (it / (sh.lq * sh.m)) * image_size, zero_row.data(),
                                                   trash_row.data());
          }
        });
      });
      grad_value = buffers.sum(0).to(dtype).view(value.sizes());
    }
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(internimage_cpu, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, int[] spatial_shapes, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, int[] spatial_shapes, Tensor sampling_locations, "
      "Tensor attention_weights, int mode=0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(internimage_cpu, CPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward);
}
