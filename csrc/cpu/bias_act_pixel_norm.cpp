// SPEC 3 + 4, the ProGAN generator's epilogue in one pass:
//   y      = a * r,  a = lrelu(x + bias[c], slope) * gain,  r = rsqrt(mean_c(a^2) + eps)
//   grad_x = M * (r * g - a * r^3 * sum_c(g * a) / C),  M = gain * (a > 0 ? 1 : slope)
// a is recomputed wherever it is needed, never stored. x is seen as [N, C, S]:
// channels-last (or S == 1) pixels are rows of C contiguous values, reduced then
// written from L1; NCHW runs tiles of pixels of one sample that stay in L2
// between the reduction over the channels and the write (as pixel_norm.cpp), and
// maps of a few pixels as rows, transposed in a buffer.
#include <array>

#include "bias_act.h"
#include "layout.h"

namespace fastgan::cpu {
namespace {

constexpr int64_t kL2Bytes = 1024 * 1024;
constexpr int64_t kMaxTile = 1024;  // pixels per NCHW tile: their statistics live on the stack

// Pixel statistics: sums of a^2 and (backward) g * a, then r and r^3 * sum(g * a) / C.
template <typename acc_t>
void finish_stats(acc_t& ss, acc_t& sg, int64_t c, acc_t eps) {
  const acc_t r = acc_t(1) / std::sqrt(ss / c + eps);
  ss = r;
  sg = r * r * r * sg / c;
}

// One pixel's row of C contiguous values: out = a * r (forward) or grad_x (backward, g given).
template <typename T, bool kBackward>
void pixel_row(const T* gr, const T* xr, const T* b, T* o, int64_t c, const Epilogue<T>& ep,
               at::opmath_type<T> e) {
  using acc_t = at::opmath_type<T>;
  using Vec = AccVec<T>;
  acc_t ss = 0, sg = 0;
  int64_t j = 0;
  if constexpr (kChunked<T>) {
    Vec acc_ss(0), acc_sg(0);
    for (; j + kChunk<T> <= c; j += kChunk<T>) {
      const auto v = load_chunk(xr + j), bv = load_chunk(b + j);
      for (int p = 0; p < kParts<T>; ++p) {
        const Vec a = ep(v[p] + bv[p]);
        acc_ss = at::vec::fmadd(a, a, acc_ss);
        if constexpr (kBackward) acc_sg = at::vec::fmadd(load_chunk(gr + j)[p], a, acc_sg);
      }
    }
    const auto add = [](const Vec& u, const Vec& v) { return u + v; };
    ss = at::vec::vec_reduce_all<acc_t>(add, acc_ss);
    if constexpr (kBackward) sg = at::vec::vec_reduce_all<acc_t>(add, acc_sg);
  }
  for (; j < c; ++j) {
    const acc_t a = ep(static_cast<acc_t>(xr[j]) + static_cast<acc_t>(b[j]));
    ss += a * a;
    if constexpr (kBackward) sg += static_cast<acc_t>(gr[j]) * a;
  }
  finish_stats(ss, sg, c, e);
  const acc_t r = ss, k = sg;
  j = 0;
  if constexpr (kChunked<T>) {
    for (; j + kChunk<T> <= c; j += kChunk<T>) {
      auto v = load_chunk(xr + j);
      const auto bv = load_chunk(b + j);
      const auto gv = kBackward ? load_chunk(gr + j) : v;
      for (int p = 0; p < kParts<T>; ++p) {
        const Vec a = ep(v[p] + bv[p]);
        v[p] = kBackward ? (Vec(r) * gv[p] - Vec(k) * a) * ep.factor(a) : a * Vec(r);
      }
      store_chunk(o + j, v);
    }
  }
  for (; j < c; ++j) {
    const acc_t a = ep(static_cast<acc_t>(xr[j]) + static_cast<acc_t>(b[j]));
    o[j] = static_cast<T>(kBackward ? (r * static_cast<acc_t>(gr[j]) - k * a) * ep.factor(a) : a * r);
  }
}

// Channels-last rows (pixels of C contiguous values).
template <typename T, bool kBackward>
void rows_kernel(const T* g, const T* x, const T* b, T* out, int64_t rows, int64_t c, const Epilogue<T>& ep,
                 double eps) {
  const auto e = static_cast<at::opmath_type<T>>(eps);
  at::parallel_for(0, rows, grain(c), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      pixel_row<T, kBackward>(kBackward ? g + row * c : nullptr, x + row * c, b, out + row * c, c, ep, e);
    }
  });
}

// NCHW: a task takes tiles of up to kMaxTile pixels of one sample; per tile one
// pass over the C channel rows accumulates the statistics, a second (from L2) writes.
template <typename T, bool kBackward>
void strided_kernel(const T* g, const T* x, const T* b, T* out, int64_t n, int64_t c, int64_t s,
                    const Epilogue<T>& ep, double eps) {
  using acc_t = at::opmath_type<T>;
  using Vec = AccVec<T>;
  constexpr int64_t V = kChunked<T> ? kChunk<T> : 1;
  const acc_t e = static_cast<acc_t>(eps);
  const int64_t row_bytes = c * static_cast<int64_t>(sizeof(T)) * (kBackward ? 2 : 1);
  const int64_t tile = std::min(s, std::clamp<int64_t>(kL2Bytes / 2 / row_bytes / V * V, V, kMaxTile));
  const int64_t tiles = (s + tile - 1) / tile;
  at::parallel_for(0, n * tiles, grain(tile * c), [&](int64_t begin, int64_t end) {
    std::array<acc_t, kMaxTile> ss, sg;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p0 = t % tiles * tile, cnt = std::min(tile, s - p0);
      const int64_t base = t / tiles * c * s + p0;
      std::fill_n(ss.begin(), cnt, acc_t(0));
      std::fill_n(sg.begin(), cnt, acc_t(0));
      for (int64_t ch = 0; ch < c; ++ch) {
        const T* xc = x + base + ch * s;
        const T* gc = kBackward ? g + base + ch * s : nullptr;
        const acc_t bc = static_cast<acc_t>(b[ch]);
        int64_t j = 0;
        if constexpr (kChunked<T>) {
          for (; j + kChunk<T> <= cnt; j += kChunk<T>) {
            const auto v = load_chunk(xc + j);
            auto acc_ss = load_acc_chunk<T>(ss.data() + j);
            auto acc_sg = kBackward ? load_acc_chunk<T>(sg.data() + j) : acc_ss;
            const auto gv = kBackward ? load_chunk(gc + j) : v;
            for (int p = 0; p < kParts<T>; ++p) {
              const Vec a = ep(v[p] + Vec(bc));
              acc_ss[p] = at::vec::fmadd(a, a, acc_ss[p]);
              if constexpr (kBackward) acc_sg[p] = at::vec::fmadd(gv[p], a, acc_sg[p]);
            }
            store_acc_chunk<T>(ss.data() + j, acc_ss);
            if constexpr (kBackward) store_acc_chunk<T>(sg.data() + j, acc_sg);
          }
        }
        for (; j < cnt; ++j) {
          const acc_t a = ep(static_cast<acc_t>(xc[j]) + bc);
          ss[j] += a * a;
          if constexpr (kBackward) sg[j] += static_cast<acc_t>(gc[j]) * a;
        }
      }
      for (int64_t j = 0; j < cnt; ++j) finish_stats(ss[j], sg[j], c, e);
      for (int64_t ch = 0; ch < c; ++ch) {
        const T* xc = x + base + ch * s;
        const T* gc = kBackward ? g + base + ch * s : nullptr;
        T* oc = out + base + ch * s;
        const acc_t bc = static_cast<acc_t>(b[ch]);
        int64_t j = 0;
        if constexpr (kChunked<T>) {
          for (; j + kChunk<T> <= cnt; j += kChunk<T>) {
            auto v = load_chunk(xc + j);
            const auto rv = load_acc_chunk<T>(ss.data() + j);
            const auto kv = kBackward ? load_acc_chunk<T>(sg.data() + j) : rv;
            const auto gv = kBackward ? load_chunk(gc + j) : v;
            for (int p = 0; p < kParts<T>; ++p) {
              const Vec a = ep(v[p] + Vec(bc));
              v[p] = kBackward ? (rv[p] * gv[p] - kv[p] * a) * ep.factor(a) : a * rv[p];
            }
            store_chunk(oc + j, v);
          }
        }
        for (; j < cnt; ++j) {
          const acc_t a = ep(static_cast<acc_t>(xc[j]) + bc);
          oc[j] = static_cast<T>(kBackward ? (ss[j] * static_cast<acc_t>(gc[j]) - sg[j] * a) * ep.factor(a)
                                           : a * ss[j]);
        }
      }
    }
  });
}

// grad undefined: the forward.
template <bool kBackward>
at::Tensor bias_act_pixel_norm_impl(const char* op, const at::Tensor& grad, const at::Tensor& x,
                                    const at::Tensor& bias, double slope, double gain, double eps) {
  TORCH_CHECK(x.dim() >= 2, "fastgan_cpu::", op, ": x must have at least 2 dimensions, got ", x.sizes());
  const auto fmt = layout_of(x, "x");
  if constexpr (kBackward) {
    TORCH_CHECK(grad.sizes() == x.sizes(), "fastgan_cpu::", op, ": grad and x must have the same shape, got ",
                grad.sizes(), " and ", x.sizes());
    check_like(grad, "grad", x, fmt);
  }
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(1) && bias.is_contiguous(), "fastgan_cpu::", op,
              ": bias must be a contiguous vector of x.size(1) = ", x.size(1), " values, got sizes ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == x.scalar_type(), "fastgan_cpu::", op, ": bias has dtype ", bias.scalar_type(),
              ", expected ", x.scalar_type());
  auto out = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return out;
  const int64_t n = x.size(0), c = x.size(1), s = x.numel() / (n * c);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastgan_cpu::bias_act_pixel_norm", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Epilogue<scalar_t> ep{acc_t(1), static_cast<acc_t>(slope), static_cast<acc_t>(gain), acc_t(-1)};
    const scalar_t* gp = kBackward ? grad.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast || s == 1) {
      rows_kernel<scalar_t, kBackward>(gp, xp, bp, op_, n * s, c, ep, eps);
    } else if (s < 2 * kChunk<scalar_t>) {  // maps of a few pixels: rows, transposed (sample_rows)
      const acc_t e = static_cast<acc_t>(eps);
      sample_rows(gp, xp, op_, n, c, s, [&](const scalar_t* gr, const scalar_t* xr, scalar_t* o) {
        pixel_row<scalar_t, kBackward>(gr, xr, bp, o, c, ep, e);
      });
    } else {
      strided_kernel<scalar_t, kBackward>(gp, xp, bp, op_, n, c, s, ep, eps);
    }
  });
  return out;
}

at::Tensor bias_act_pixel_norm(const at::Tensor& x, const at::Tensor& bias, double slope, double gain, double eps) {
  return bias_act_pixel_norm_impl<false>("bias_act_pixel_norm", at::Tensor(), x, bias, slope, gain, eps);
}

at::Tensor bias_act_pixel_norm_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias,
                                        double slope, double gain, double eps) {
  return bias_act_pixel_norm_impl<true>("bias_act_pixel_norm_backward", grad, x, bias, slope, gain, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("bias_act_pixel_norm", &bias_act_pixel_norm);
  m.impl("bias_act_pixel_norm_backward", &bias_act_pixel_norm_backward);
}

}  // namespace fastgan::cpu
