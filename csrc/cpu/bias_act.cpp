// SPEC 3, StyleGAN2's bias_act with the equalized layers' runtime scales:
//   y      = clamp(lrelu(x * x_mul + bias[c] * b_mul, slope) * gain, -clamp, clamp)
//   grad_x = grad * x_mul * gain * (y > 0 ? 1 : slope) * (clamp < 0 || |y| < clamp)
// (slope 1: linear, 0: relu). Both are elementwise. The forward sees x as rows
// with one bias value each (NCHW: the H*W values of a channel plane) or, when
// the biased dim is innermost (channels-last, [N, C] rows), rows of C values
// against the bias vector. Vector code on at::vec chunks (half types in float).
#include "bias_act.h"

#include <vector>

namespace fastgan::cpu {
namespace {

// y[j] = ep(x[j] * x_mul + b[j]) for j < n, b[j] = b_row[j] * b_mul when b_row is
// given (bias along the row), else the constant b_const.
template <typename T>
void bias_act_row(const T* x, const T* b_row, T* y, int64_t n, at::opmath_type<T> b_const, at::opmath_type<T> b_mul,
                  const Epilogue<T>& ep) {
  using acc_t = at::opmath_type<T>;
  using Vec = AccVec<T>;
  const auto bias_at = [&](int64_t j) { return b_row ? static_cast<acc_t>(b_row[j]) * b_mul : b_const; };
  int64_t j = 0;
  if constexpr (kChunked<T>) {
    const Vec xm(ep.x_mul), bm(b_mul), bc(b_const);
    for (; j + kChunk<T> <= n; j += kChunk<T>) {
      auto v = load_chunk(x + j);
      if (b_row) {
        const auto b = load_chunk(b_row + j);
        for (int p = 0; p < kParts<T>; ++p) v[p] = ep(at::vec::fmadd(v[p], xm, b[p] * bm));
      } else {
        for (auto& part : v) part = ep(at::vec::fmadd(part, xm, bc));
      }
      store_chunk(y + j, v);
    }
  }
  for (; j < n; ++j) y[j] = static_cast<T>(ep(static_cast<acc_t>(x[j]) * ep.x_mul + bias_at(j)));
}

// Rows sharing one bias value that are a few chunks long (NCHW maps of a few pixels: a 4x4 map is
// half a bfloat16 chunk) spend most of their time in the per-row loop and its scalar tail. They
// run as whole samples of C * in values instead, against the bias repeated `in` times (the
// backward: summed per position, then per channel), when one sample's worth stays small. Rows
// shorter than `chunks` chunks: measured (bfloat16 8x8 maps, 4 chunks a row) the forward ran
// faster as rows from 2 chunks, the backward with the bias's sum as samples up to 4.
constexpr int64_t kMaxSampleLen = int64_t{1} << 16;
constexpr int64_t kForwardSampleChunks = 2, kBackwardSampleChunks = 4;

template <typename T>
bool by_samples(int64_t in, int64_t c, int64_t chunks) {
  return in > 1 && in < chunks * kChunk<T> && c * in <= kMaxSampleLen;
}

at::Tensor bias_act(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t dim, double slope,
                    double gain, double x_mul, double b_mul, double clamp) {
  TORCH_CHECK(x.dim() >= 1 && dim >= 0 && dim < x.dim(), "fastgan_cpu::bias_act: dim ", dim,
              " out of range for x of sizes ", x.sizes());
  const auto fmt = layout_of(x, "x");
  TORCH_CHECK(fmt == at::MemoryFormat::Contiguous || dim == 1,
              "fastgan_cpu::bias_act: a channels-last x takes its bias along dim 1, got dim ", dim);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(dim) && bias->is_contiguous(),
                "fastgan_cpu::bias_act: bias must be a contiguous vector of x.size(dim) = ", x.size(dim),
                " values, got sizes ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "fastgan_cpu::bias_act: bias has dtype ",
                bias->scalar_type(), ", expected ", x.scalar_type());
  }
  auto y = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return y;
  // x as [outer, C, in] along dim; channels-last has C innermost (in = 1).
  const int64_t c = x.size(dim);
  int64_t in = 1;
  if (fmt == at::MemoryFormat::Contiguous) {
    for (int64_t d = dim + 1; d < x.dim(); ++d) in *= x.size(d);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastgan_cpu::bias_act", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Epilogue<scalar_t> ep{static_cast<acc_t>(x_mul), static_cast<acc_t>(slope), static_cast<acc_t>(gain),
                                static_cast<acc_t>(clamp)};
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const acc_t bm = static_cast<acc_t>(b_mul);
    if (bp == nullptr) {
      // No bias: one flat run.
      at::parallel_for(0, x.numel(), kGrainElems, [&](int64_t begin, int64_t end) {
        bias_act_row<scalar_t>(xp + begin, nullptr, yp + begin, end - begin, acc_t(0), bm, ep);
      });
    } else if (in == 1) {
      // Rows of C values against the bias vector.
      at::parallel_for(0, x.numel() / c, grain(c), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) bias_act_row(xp + r * c, bp, yp + r * c, c, acc_t(0), bm, ep);
      });
    } else if (by_samples<scalar_t>(in, c, kForwardSampleChunks)) {
      // Samples of C * in values against the bias repeated along each row.
      const int64_t len = c * in;
      std::vector<scalar_t> repeated(len);
      for (int64_t ch = 0; ch < c; ++ch) std::fill_n(repeated.begin() + ch * in, in, bp[ch]);
      at::parallel_for(0, x.numel() / len, grain(len), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          bias_act_row(xp + r * len, repeated.data(), yp + r * len, len, acc_t(0), bm, ep);
        }
      });
    } else {
      // Rows of `in` values sharing bias[row % C].
      at::parallel_for(0, x.numel() / in, grain(in), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const acc_t b = static_cast<acc_t>(bp[r % c]) * bm;
          bias_act_row<scalar_t>(xp + r * in, nullptr, yp + r * in, in, b, bm, ep);
        }
      });
    }
  });
  return y;
}

at::Tensor bias_act_backward(const at::Tensor& grad, const at::Tensor& y, double slope, double gain, double x_mul,
                             double clamp) {
  TORCH_CHECK(grad.sizes() == y.sizes(), "fastgan_cpu::bias_act_backward: grad and y must have the same shape, got ",
              grad.sizes(), " and ", y.sizes());
  const auto fmt = layout_of(y, "y");
  check_like(grad, "grad", y, fmt);
  auto gx = at::empty(y.sizes(), y.options().memory_format(fmt));
  const int64_t n = y.numel();
  if (n == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fastgan_cpu::bias_act_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Epilogue<scalar_t> ep{static_cast<acc_t>(x_mul), static_cast<acc_t>(slope), static_cast<acc_t>(gain),
                                static_cast<acc_t>(clamp)};
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = gx.mutable_data_ptr<scalar_t>();
    if (slope == 1.0 && clamp < 0) {  // linear: a constant factor, y unread
      const acc_t k = static_cast<acc_t>(x_mul * gain);
      at::parallel_for(0, n, kGrainElems, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin + scale_vectorized(gp + begin, op + begin, end - begin, k); j < end; ++j) {
          op[j] = static_cast<scalar_t>(k * static_cast<acc_t>(gp[j]));
        }
      });
      return;
    }
    at::parallel_for(0, n, kGrainElems, [&](int64_t begin, int64_t end) {
      int64_t j = begin;
      if constexpr (kChunked<scalar_t>) {
        for (; j + kChunk<scalar_t> <= end; j += kChunk<scalar_t>) {
          auto g = load_chunk(gp + j);
          const auto v = load_chunk(yp + j);
          for (int p = 0; p < kParts<scalar_t>; ++p) g[p] = g[p] * ep.factor(v[p]);
          store_chunk(op + j, g);
        }
      }
      for (; j < end; ++j) op[j] = static_cast<scalar_t>(static_cast<acc_t>(gp[j]) * ep.factor(static_cast<acc_t>(yp[j])));
    });
  });
  return gx;
}

// grad_x[j] = grad[j] * factor for j < n (factor: ep's of y[j], or the constant k when `linear`),
// each value as stored in T added to sums[j] (cols: rows of C against the bias) or to the returned
// sum (a row sharing one bias value).
template <typename T, bool kCols>
at::opmath_type<T> backward_row(const T* g, const T* y, T* gx, int64_t n, const Epilogue<T>& ep, bool linear,
                                at::opmath_type<T>* sums) {
  using acc_t = at::opmath_type<T>;
  using Vec = AccVec<T>;
  const acc_t k = ep.x_mul * ep.gain;
  int64_t j = 0;
  acc_t total = 0;
  if constexpr (kChunked<T>) {
    Chunk<T> acc;
    acc.fill(Vec(0));
    for (; j + kChunk<T> <= n; j += kChunk<T>) {
      auto v = load_chunk(g + j);
      if (linear) {
        for (auto& part : v) part = part * Vec(k);
      } else {
        const auto f = load_chunk(y + j);
        for (int p = 0; p < kParts<T>; ++p) v[p] = v[p] * ep.factor(f[p]);
      }
      store_chunk(gx + j, v);
      if constexpr (kReduced<T>) v = load_chunk(gx + j);  // the sum reads grad_x as stored
      if constexpr (kCols) {
        auto s = load_acc_chunk<T>(sums + j);
        for (int p = 0; p < kParts<T>; ++p) s[p] = s[p] + v[p];
        store_acc_chunk<T>(sums + j, s);
      } else {
        for (int p = 0; p < kParts<T>; ++p) acc[p] = acc[p] + v[p];
      }
    }
    if constexpr (!kCols) {
      std::array<acc_t, kParts<T> * Vec::size()> lanes;
      store_acc_chunk<T>(lanes.data(), acc);
      for (const acc_t lane : lanes) total += lane;
    }
  }
  for (; j < n; ++j) {
    const acc_t f = linear ? k : ep.factor(static_cast<acc_t>(y[j]));
    gx[j] = static_cast<T>(static_cast<acc_t>(g[j]) * f);
    if constexpr (kCols) {
      sums[j] += static_cast<acc_t>(gx[j]);
    } else {
      total += static_cast<acc_t>(gx[j]);
    }
  }
  return total;
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_bias(const at::Tensor& grad, const at::Tensor& y, int64_t dim,
                                                          double slope, double gain, double x_mul, double b_scale,
                                                          double clamp) {
  TORCH_CHECK(y.dim() >= 1 && dim >= 0 && dim < y.dim(), "fastgan_cpu::bias_act_backward_bias: dim ", dim,
              " out of range for y of sizes ", y.sizes());
  TORCH_CHECK(grad.sizes() == y.sizes(), "fastgan_cpu::bias_act_backward_bias: grad and y must have the same "
              "shape, got ", grad.sizes(), " and ", y.sizes());
  const auto fmt = layout_of(y, "y");
  check_like(grad, "grad", y, fmt);
  TORCH_CHECK(fmt == at::MemoryFormat::Contiguous || dim == 1,
              "fastgan_cpu::bias_act_backward_bias: a channels-last y takes its bias along dim 1, got dim ", dim);
  auto gx = at::empty(y.sizes(), y.options().memory_format(fmt));
  const int64_t c = y.size(dim);
  auto gb = at::empty({c}, y.options().memory_format(at::MemoryFormat::Contiguous));
  // y as [outer, C, in] along dim (channels-last: C innermost, in = 1), seen as rows of `len` values:
  // rows of C against the bias (in = 1); samples of C * in values, summed per position into
  // `width` partial sums and then per channel (short rows, by_samples); else rows of `in` values
  // sharing bias[row % C].
  int64_t in = 1;
  if (fmt == at::MemoryFormat::Contiguous) {
    for (int64_t d = dim + 1; d < y.dim(); ++d) in *= y.size(d);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fastgan_cpu::bias_act_backward_bias",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool samples = by_samples<scalar_t>(in, c, kBackwardSampleChunks);
    const bool cols = in == 1 || samples;
    const int64_t len = in == 1 ? c : samples ? c * in : in;
    const int64_t width = samples ? c * in : c;
    const int64_t rows = len == 0 ? 0 : y.numel() / len;
    const Epilogue<scalar_t> ep{static_cast<acc_t>(x_mul), static_cast<acc_t>(slope), static_cast<acc_t>(gain),
                                static_cast<acc_t>(clamp)};
    const bool linear = slope == 1.0 && clamp < 0;  // a constant factor, y unread
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = gx.mutable_data_ptr<scalar_t>();
    // Fixed runs of rows, each with its own partial sums, added in run order afterwards: the sums
    // depend on the thread count (as at::sum's do), not on the scheduling.
    const int64_t runs = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                rows / grain(len)));
    const int64_t per = (rows + runs - 1) / runs;
    std::vector<acc_t> partial(runs * width, acc_t(0));
    at::parallel_for(0, runs, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        acc_t* sums = partial.data() + t * width;
        for (int64_t r = t * per; r < std::min(rows, (t + 1) * per); ++r) {
          const int64_t o = r * len;
          if (cols) {
            backward_row<scalar_t, true>(gp + o, yp + o, op + o, len, ep, linear, sums);
          } else {
            sums[r % c] += backward_row<scalar_t, false>(gp + o, yp + o, op + o, len, ep, linear, nullptr);
          }
        }
      }
    });
    scalar_t* bp = gb.mutable_data_ptr<scalar_t>();
    const int64_t per_channel = samples ? in : 1;
    for (int64_t ch = 0; ch < c; ++ch) {
      acc_t s = 0;
      for (int64_t t = 0; t < runs; ++t) {
        for (int64_t k = 0; k < per_channel; ++k) s += partial[t * width + ch * per_channel + k];
      }
      bp[ch] = static_cast<scalar_t>(s * static_cast<acc_t>(b_scale));
    }
  });
  return {gx, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("bias_act", &bias_act);
  m.impl("bias_act_backward", &bias_act_backward);
  m.impl("bias_act_backward_bias", &bias_act_backward_bias);
}

}  // namespace fastgan::cpu
