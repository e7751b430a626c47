// Fused CPU kernels of the DCNv3 sampling core: forward and backward, NHWC, fp64 / fp32 / bf16 / fp16.
//
// Semantics are those of internimage/ops/reference.py (ORIGINAL.md section 2):
//   loc_x = (offset_x + i*dil_w - cx) * offset_scale + (w*stride_w - pad_w + cx), the same for y;
//   a sample counts only if -1 < loc_x < W and -1 < loc_y < H; corners outside the image read zero;
//   out[n, ho, wo, g, :] = sum_p mask[p] * bilinear(input[n, :, :, g, :], loc_p).
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
  std::vector<int64_t> point_x, point_y;  // base offsets of the P points, x-outer order

  Geometry(const at::Tensor& input, const at::Tensor& offset, int64_t kernel_h, int64_t kernel_w, int64_t stride_h_,
           int64_t stride_w_, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
           double offset_scale, bool remove_center)
      : stride_h(stride_h_), stride_w(stride_w_), scale(offset_scale) {
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
    TORCH_CHECK(c == g * d, "dcnv3 cpu: channels ", c, " not divisible by group ", g);
    TORCH_CHECK(offset.size(3) == g * p * 2, "dcnv3 cpu: offset has ", offset.size(3), " channels, expected ",
                g * p * 2);
  }
};

// Bilinear corners of one sample: row offsets (in elements, relative to the image base + group channel
// offset), interpolation weights and their derivatives with respect to loc_x / loc_y.
template <typename A>
struct Corners {
  int64_t row[4];
  A weight[4];
  A grad_x[4];
  A grad_y[4];
  bool valid[4];
};

// Returns false if the sample lies outside (-1, W) x (-1, H): it then contributes nothing, not even gradients.
template <typename A>
inline bool corners(A loc_x, A loc_y, const Geometry& geo, Corners<A>& out) {
  if (!(loc_x > A(-1) && loc_x < A(geo.w) && loc_y > A(-1) && loc_y < A(geo.h))) return false;
  const A fx = std::floor(loc_x);
  const A fy = std::floor(loc_y);
  const int64_t x0 = static_cast<int64_t>(fx);
  const int64_t y0 = static_cast<int64_t>(fy);
  const A lx = loc_x - fx, ly = loc_y - fy;
  const A hx = A(1) - lx, hy = A(1) - ly;
  const bool x0_in = x0 >= 0, x1_in = x0 + 1 < geo.w;
  const bool y0_in = y0 >= 0, y1_in = y0 + 1 < geo.h;
  // Corner order (dy, dx): (0,0), (0,1), (1,0), (1,1), as in the reference.
  out.valid[0] = y0_in && x0_in;
  out.valid[1] = y0_in && x1_in;
  out.valid[2] = y1_in && x0_in;
  out.valid[3] = y1_in && x1_in;
  out.row[0] = (y0 * geo.w + x0) * geo.c;
  out.row[1] = out.row[0] + geo.c;
  out.row[2] = out.row[0] + geo.w * geo.c;
  out.row[3] = out.row[2] + geo.c;
  out.weight[0] = hy * hx;
  out.weight[1] = hy * lx;
  out.weight[2] = ly * hx;
  out.weight[3] = ly * lx;
  out.grad_x[0] = -hy;
  out.grad_x[1] = hy;
  out.grad_x[2] = -ly;
  out.grad_x[3] = ly;
  out.grad_y[0] = -hx;
  out.grad_y[1] = -lx;
  out.grad_y[2] = hx;
  out.grad_y[3] = lx;
  return true;
}

// A small scratch vector: a fixed-size array when the group width DC is known at compile time (so the
// compiler keeps it in registers), a heap buffer otherwise.
template <typename A, int DC>
struct Scratch {
  A fixed[DC > 0 ? DC : 1];
  std::vector<A> dynamic;
  explicit Scratch(int64_t d) : dynamic(DC > 0 ? 0 : d) {}
  A* data() { return DC > 0 ? fixed : dynamic.data(); }
};

// ----------------------------------------------------------------------------------------------------------
// Forward: one task per output pixel; the groups of a pixel are consecutive in memory.

template <typename T, int DC>
void forward_kernel(const Geometry& geo, const T* __restrict__ input, const T* __restrict__ offset,
                    const T* __restrict__ mask, T* __restrict__ output) {
  using A = typename AccType<T>::type;
  const int64_t pixels = geo.n * geo.ho * geo.wo;
  const int64_t D = DC > 0 ? DC : geo.d;
  const int64_t P = geo.p;
  const A scale = static_cast<A>(geo.scale);
  // Work per pixel is G*P*4*D FMAs; keep tiny calls on one thread where the fork would cost more.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, geo.g * P * 4 * D));
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    Scratch<A, DC> acc_buf(D);
    A* __restrict__ acc = acc_buf.data();
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t n = pix / (geo.ho * geo.wo);
      const int64_t rem = pix - n * geo.ho * geo.wo;
      const int64_t y = rem / geo.wo;
      const int64_t x = rem - y * geo.wo;
      const A base_x = static_cast<A>(x * geo.stride_w + geo.origin_x);
      const A base_y = static_cast<A>(y * geo.stride_h + geo.origin_y);
      const T* image = input + n * geo.h * geo.w * geo.c;
      for (int64_t g = 0; g < geo.g; ++g) {
        const T* off = offset + (pix * geo.g + g) * P * 2;
        const T* msk = mask + (pix * geo.g + g) * P;
        const T* image_g = image + g * D;
        for (int64_t k = 0; k < D; ++k) acc[k] = A(0);
        for (int64_t pt = 0; pt < P; ++pt) {
          const A loc_x = (to_acc(off[2 * pt]) + A(geo.point_x[pt])) * scale + base_x;
          const A loc_y = (to_acc(off[2 * pt + 1]) + A(geo.point_y[pt])) * scale + base_y;
          Corners<A> cr;
          if (!corners(loc_x, loc_y, geo, cr)) continue;
          const A m = to_acc(msk[pt]);
          for (int q = 0; q < 4; ++q) {
            if (!cr.valid[q]) continue;
            const A wq = m * cr.weight[q];
            const T* __restrict__ row = image_g + cr.row[q];
#pragma omp simd
            for (int64_t k = 0; k < D; ++k) acc[k] += wq * to_acc(row[k]);
          }
        }
        T* out = output + (pix * geo.g + g) * D;
        for (int64_t k = 0; k < D; ++k) out[k] = from_acc<T>(acc[k]);
      }
    }
  });
}

// ----------------------------------------------------------------------------------------------------------
// Backward. grad_offset and grad_mask are per-sample dot products with grad_output; grad_input is a scatter,
// written into an A-typed image that the caller guarantees no other thread writes at the same time (either
// because each task owns whole (image, group) slices, or because each thread has a private buffer).

template <typename T, int DC>
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
    const int64_t D = DC > 0 ? DC : geo.d;
    const int64_t P = geo.p;
    const A scale = static_cast<A>(geo.scale);
    Scratch<A, DC> go_buf(D), sv_buf(D), sx_buf(D), sy_buf(D);
    A* __restrict__ go = go_buf.data();
    A* __restrict__ sv = sv_buf.data();
    A* __restrict__ sx = sx_buf.data();
    A* __restrict__ sy = sy_buf.data();
    const T* image = input + n * geo.h * geo.w * geo.c;
    for (int64_t pix = pix_begin; pix < pix_end; ++pix) {
      const int64_t rem = pix - n * geo.ho * geo.wo;
      const int64_t y = rem / geo.wo;
      const int64_t x = rem - y * geo.wo;
      const A base_x = static_cast<A>(x * geo.stride_w + geo.origin_x);
      const A base_y = static_cast<A>(y * geo.stride_h + geo.origin_y);
      for (int64_t g = g_begin; g < g_end; ++g) {
        const int64_t pg = pix * geo.g + g;
        const T* off = offset + pg * P * 2;
        const T* msk = mask + pg * P;
        T* goff = grad_offset + pg * P * 2;
        T* gmsk = grad_mask + pg * P;
        const T* gout = grad_output + pg * D;
        for (int64_t k = 0; k < D; ++k) go[k] = to_acc(gout[k]);
        const T* image_g = image + g * D;
        A* grad_g = grad_image + g * D;
        for (int64_t pt = 0; pt < P; ++pt) {
          const A loc_x = (to_acc(off[2 * pt]) + A(geo.point_x[pt])) * scale + base_x;
          const A loc_y = (to_acc(off[2 * pt + 1]) + A(geo.point_y[pt])) * scale + base_y;
          Corners<A> cr;
          if (!corners(loc_x, loc_y, geo, cr)) {
            goff[2 * pt] = T(0);
            goff[2 * pt + 1] = T(0);
            gmsk[pt] = T(0);
            continue;
          }
          const A m = to_acc(msk[pt]);
          for (int64_t k = 0; k < D; ++k) sv[k] = sx[k] = sy[k] = A(0);
          for (int q = 0; q < 4; ++q) {
            if (!cr.valid[q]) continue;
            const A wq = cr.weight[q], gxq = cr.grad_x[q], gyq = cr.grad_y[q], mw = m * wq;
            const T* __restrict__ row = image_g + cr.row[q];
            A* __restrict__ grow = grad_g + cr.row[q];
#pragma omp simd
            for (int64_t k = 0; k < D; ++k) {
              const A r = to_acc(row[k]);
              sv[k] += wq * r;
              sx[k] += gxq * r;
              sy[k] += gyq * r;
              grow[k] += mw * go[k];
            }
          }
          A dm = 0, dx = 0, dy = 0;
#pragma omp simd reduction(+ : dm, dx, dy)
          for (int64_t k = 0; k < D; ++k) {
            dm += go[k] * sv[k];
            dx += go[k] * sx[k];
            dy += go[k] * sy[k];
          }
          gmsk[pt] = from_acc<T>(dm);
          goff[2 * pt] = from_acc<T>(m * dx * scale);
          goff[2 * pt + 1] = from_acc<T>(m * dy * scale);
        }
      }
    }
  }
};

template <typename F>
void dispatch_group_width(int64_t d, F&& f) {
  // Compile-time widths for the common group widths of InternImage (16 for T/S/B/L/XL, 32 for H/G).
  switch (d) {
    case 16:
      f(std::integral_constant<int, 16>{});
      break;
    case 32:
      f(std::integral_constant<int, 32>{});
      break;
    default:
      f(std::integral_constant<int, 0>{});
  }
}

at::ScalarType acc_scalar_type(at::ScalarType t) {
  return (t == at::kBFloat16 || t == at::kHalf) ? at::kFloat : t;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "dcnv3 cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, "dcnv3 cpu: ", name, " must be 4-D NHWC");
}

at::Tensor dcnv3_forward(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& mask_, int64_t kernel_h,
                         int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                         int64_t dilation_h, int64_t dilation_w, int64_t group, double offset_scale,
                         bool remove_center) {
  check_cpu(input_, "input");
  check_cpu(offset_, "offset");
  check_cpu(mask_, "mask");
  const at::Tensor input = input_.contiguous();
  const at::Tensor offset = offset_.to(input.scalar_type()).contiguous();
  const at::Tensor mask = mask_.to(input.scalar_type()).contiguous();
  const Geometry geo(input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                     group, offset_scale, remove_center);
  TORCH_CHECK(mask.size(3) == geo.g * geo.p, "dcnv3 cpu: mask has ", mask.size(3), " channels, expected ",
              geo.g * geo.p);
  at::Tensor output = at::empty({geo.n, geo.ho, geo.wo, geo.c}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dcnv3_forward_cpu", [&] {
    dispatch_group_width(geo.d, [&](auto dc) {
      constexpr int DC = decltype(dc)::value;
      forward_kernel<scalar_t, DC>(geo, input.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
                                   mask.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>());
    });
  });
  return output;
}

// mode: 0 = choose, 1 = tasks own (image, group) slices of grad_input, 2 = per-thread grad_input buffers.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& mask_,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, double offset_scale, bool remove_center, int64_t mode) {
  check_cpu(grad_output_, "grad_output");
  check_cpu(input_, "input");
  check_cpu(offset_, "offset");
  check_cpu(mask_, "mask");
  const at::Tensor input = input_.contiguous();
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor offset = offset_.to(dtype).contiguous();
  const at::Tensor mask = mask_.to(dtype).contiguous();
  const at::Tensor grad_output = grad_output_.to(dtype).contiguous();
  const Geometry geo(input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                     group, offset_scale, remove_center);
  TORCH_CHECK(mask.size(3) == geo.g * geo.p, "dcnv3 cpu: mask has ", mask.size(3), " channels, expected ",
              geo.g * geo.p);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({geo.n, geo.ho, geo.wo, geo.c}),
              "dcnv3 cpu: grad_output has the wrong shape");
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = at::empty_like(mask);
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
    // Owning whole (image, group) slices needs no buffers and no reduction, and a slice (e.g. 56*56*16 floats)
    // stays in L2; it only loses when there are too few slices to balance the threads.
    const bool balanced = items % threads == 0 || items >= 4 * threads;
    mode = (threads == 1 || work < 65536 || (items >= threads && balanced)) ? 1 : 2;
  }

  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "dcnv3_backward_cpu", [&] {
    using A = typename AccType<scalar_t>::type;
    dispatch_group_width(geo.d, [&](auto dc) {
      constexpr int DC = decltype(dc)::value;
      const BackwardPass<scalar_t, DC> pass{geo,
                                            input.const_data_ptr<scalar_t>(),
                                            offset.const_data_ptr<scalar_t>(),
                                            mask.const_data_ptr<scalar_t>(),
                                            grad_output.const_data_ptr<scalar_t>(),
                                            grad_offset.mutable_data_ptr<scalar_t>(),
                                            grad_mask.mutable_data_ptr<scalar_t>()};
      if (mode == 1) {
        at::Tensor acc = at::zeros(input.sizes(), input.options().dtype(acc_type));
        A* acc_ptr = acc.mutable_data_ptr<A>();
        const int64_t grain = work < 65536 ? items : 1;
        at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
          for (int64_t it = begin; it < end; ++it) {
            const int64_t n = it / geo.g, g = it - n * geo.g;
            pass.run(n, n * image_pixels, (n + 1) * image_pixels, g, g + 1, acc_ptr + n * image_size);
          }
        });
        grad_input = acc_type == dtype ? acc : acc.to(dtype);
      } else {
        at::Tensor buffers = at::zeros({threads, geo.n * image_size}, input.options().dtype(acc_type));
        A* buf_ptr = buffers.mutable_data_ptr<A>();
        const int64_t pixels = geo.n * image_pixels;
        at::parallel_for(0, pixels, 1, [&](int64_t begin, int64_t end) {
          A* mine = buf_ptr + at::get_thread_num() * geo.n * image_size;
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
    });
  });
  return {grad_input, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY(internimage_cpu, m) {
  m.def(
      "dcnv3_forward(Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, int stride_h, "
      "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, float offset_scale, "
      "bool remove_center) -> Tensor");
  m.def(
      "dcnv3_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, "
      "float offset_scale, bool remove_center, int mode=0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(internimage_cpu, CPU, m) {
  m.impl("dcnv3_forward", &dcnv3_forward);
  m.impl("dcnv3_backward", &dcnv3_backward);
}
