// SPEC 5, minibatch standard deviation with strided groups, and its backward:
//   out    = cat([x, f broadcast], dim 1),  f[m, j] = mean over channel group j and pixels of s,
//            s = sqrt(mean_g((x - mean_g x)^2) + 1e-8) over the G samples g * M + m of group m
//   grad_x = grad[:, :C] + A[m, j] * (x - mean_g x) / (G * s),  A = sum of grad's channel C + j over
//            the group's samples and pixels / K,  K = C/F * H * W
//   and the double backward (minibatch_stddev_double_backward in schemas.h), the same way.
// Each sample is seen as L = C*H*W values in its own layout order. A task takes a span of
// them in the G samples of one group: it sums the G rows for the mean, then re-reads them
// from L1 for the squared deviations (two-pass), so x is read from memory once. The forward
// copies x into out as it reads it; the backward writes grad_x from the same rows.
// Channel group j of value e: the values of a group come in runs of `run` = C/F (NHWC) or
// C/F * H * W (NCHW) consecutive values, the run of e being e / run, its group (e / run) % F.
#include <cstring>
#include <vector>

#include "common.h"

namespace fastgan::cpu {
namespace {

constexpr double kEps = 1e-8;
// Values per task and row: G rows of them stay in L1 for the second read.
constexpr int64_t kSpan = 1024;

struct Groups {
  int64_t n, c, hw, g, m, f;
  bool nhwc;
  int64_t sample() const { return c * hw; }
  int64_t out_sample() const { return (c + f) * hw; }
  int64_t run() const { return nhwc ? c / f : c / f * hw; }
  int64_t k() const { return c / f * hw; }
  // Spans of whole pixels in NHWC, so that each pixel's C values move as one block.
  int64_t span() const { return nhwc ? std::max<int64_t>(1, kSpan / c) * c : kSpan; }
  int64_t spans() const { return (sample() + span() - 1) / span(); }
};

Groups groups_of(const at::Tensor& x, int64_t group_size, int64_t num_channels, at::MemoryFormat fmt) {
  const int64_t n = x.size(0), c = x.size(1);
  TORCH_CHECK(group_size >= 1 && n % group_size == 0, "fastgan_cpu::minibatch_stddev: group_size (", group_size,
              ") must divide the batch (", n, ")");
  TORCH_CHECK(num_channels >= 1 && c % num_channels == 0, "fastgan_cpu::minibatch_stddev: num_channels (",
              num_channels, ") must divide the channels (", c, ")");
  TORCH_CHECK(c >= 1, "fastgan_cpu::minibatch_stddev: x must have channels to take the deviation of, got ",
              x.sizes());
  return {n, c, x.size(2) * x.size(3), group_size, n / group_size, num_channels,
          fmt == at::MemoryFormat::ChannelsLast};
}

// Calls f(begin, end, group) for the runs of one channel group that cover values [e0, e0 + cnt).
template <typename F>
void for_each_run(const Groups& q, int64_t e0, int64_t cnt, const F& f) {
  const int64_t run = q.run();
  for (int64_t e = e0; e < e0 + cnt;) {
    const int64_t end = std::min(e0 + cnt, (e / run + 1) * run);
    f(e - e0, end - e0, (e / run) % q.f);
    e = end;
  }
}

template <typename acc_t>
acc_t sum_of(const acc_t* v, int64_t cnt) {
  using Vec = Vectorized<acc_t>;
  Vec acc(0);
  int64_t j = 0;
  for (; j + Vec::size() <= cnt; j += Vec::size()) acc = acc + Vec::loadu(v + j);
  acc_t s = at::vec::vec_reduce_all<acc_t>([](const Vec& u, const Vec& v) { return u + v; }, acc);
  for (; j < cnt; ++j) s += v[j];
  return s;
}

// The group statistics of values [e0, e0 + cnt) of group m: mean[i], then s[i] (two-pass).
template <typename T>
void group_stats(const T* x, const Groups& q, int64_t m, int64_t e0, int64_t cnt, at::opmath_type<T>* mean,
                 at::opmath_type<T>* s) {
  using acc_t = at::opmath_type<T>;
  std::fill_n(mean, cnt, acc_t(0));
  std::fill_n(s, cnt, acc_t(0));
  const auto row = [&](int64_t gi) { return x + (gi * q.m + m) * q.sample() + e0; };
  for (int64_t gi = 0; gi < q.g; ++gi) {
    const T* xr = row(gi);
    int64_t j = 0;
    if constexpr (kChunked<T>) {
      for (; j + kChunk<T> <= cnt; j += kChunk<T>) {
        const auto v = load_chunk(xr + j);
        auto acc = load_acc_chunk<T>(mean + j);
        for (int p = 0; p < kParts<T>; ++p) acc[p] = acc[p] + v[p];
        store_acc_chunk<T>(mean + j, acc);
      }
    }
    for (; j < cnt; ++j) mean[j] += static_cast<acc_t>(xr[j]);
  }
  const acc_t inv_g = acc_t(1) / static_cast<acc_t>(q.g);
  for (int64_t j = 0; j < cnt; ++j) mean[j] *= inv_g;
  for (int64_t gi = 0; gi < q.g; ++gi) {
    const T* xr = row(gi);
    int64_t j = 0;
    if constexpr (kChunked<T>) {
      for (; j + kChunk<T> <= cnt; j += kChunk<T>) {
        const auto v = load_chunk(xr + j);
        const auto mu = load_acc_chunk<T>(mean + j);
        auto acc = load_acc_chunk<T>(s + j);
        for (int p = 0; p < kParts<T>; ++p) {
          const auto d = v[p] - mu[p];
          acc[p] = at::vec::fmadd(d, d, acc[p]);
        }
        store_acc_chunk<T>(s + j, acc);
      }
    }
    for (; j < cnt; ++j) {
      const acc_t d = static_cast<acc_t>(xr[j]) - mean[j];
      s[j] += d * d;
    }
  }
  const acc_t eps = static_cast<acc_t>(kEps);
  int64_t j = 0;
  using Vec = Vectorized<acc_t>;
  for (; j + Vec::size() <= cnt; j += Vec::size())
    (Vec::loadu(s + j) * Vec(inv_g) + Vec(eps)).sqrt().store(s + j);
  for (; j < cnt; ++j) s[j] = std::sqrt(s[j] * inv_g + eps);
}

// Copies the values [e0, e0 + cnt) of sample n of x into out (whose samples have F more channels).
template <typename T>
void copy_span(const T* x, T* out, const Groups& q, int64_t n, int64_t e0, int64_t cnt) {
  const T* src = x + n * q.sample() + e0;
  T* dst = out + n * q.out_sample();
  if (!q.nhwc) {
    std::memcpy(dst + e0, src, cnt * sizeof(T));
    return;
  }
  for (int64_t p = 0; p < cnt / q.c; ++p)
    std::memcpy(dst + (e0 / q.c + p) * (q.c + q.f), src + p * q.c, q.c * sizeof(T));
}

// f[m * F + j] broadcast into channel C + j of every sample of group m of out [N, C + F, H, W].
template <typename T>
void fill_features(T* out, const std::vector<at::opmath_type<T>>& f, const Groups& q) {
  at::parallel_for(0, q.n, grain(q.f * q.hw), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T* o = out + n * q.out_sample();
      const auto* fm = f.data() + n % q.m * q.f;
      for (int64_t j = 0; j < q.f; ++j) {
        const T v = static_cast<T>(fm[j]);
        if (q.nhwc) {
          for (int64_t p = 0; p < q.hw; ++p) o[p * (q.c + q.f) + q.c + j] = v;
        } else {
          std::fill_n(o + (q.c + j) * q.hw, q.hw, v);
        }
      }
    }
  });
}

// f[m, j] from the per-task partial sums [(m * spans + t) * F + j], added in a fixed order
// (deterministic) and divided by `divisor`.
template <typename acc_t>
std::vector<acc_t> merge_partials(const std::vector<acc_t>& partial, const Groups& q, int64_t spans, acc_t divisor) {
  std::vector<acc_t> f(q.m * q.f, acc_t(0));
  for (int64_t m = 0; m < q.m; ++m)
    for (int64_t t = 0; t < spans; ++t)
      for (int64_t j = 0; j < q.f; ++j) f[m * q.f + j] += partial[(m * spans + t) * q.f + j];
  for (auto& v : f) v /= divisor;
  return f;
}

template <typename T>
void minibatch_stddev_kernel(const T* x, T* out, const Groups& q) {
  using acc_t = at::opmath_type<T>;
  const int64_t span = q.span(), spans = q.spans();
  // partial[(m * spans + t) * F + j]: the sum of s over span t's values of channel group j.
  std::vector<acc_t> partial(q.m * spans * q.f, acc_t(0));
  at::parallel_for(0, q.m * spans, grain(q.g * span), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> mean(span), s(span);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m = task / spans, e0 = task % spans * span, cnt = std::min(span, q.sample() - e0);
      group_stats(x, q, m, e0, cnt, mean.data(), s.data());
      for (int64_t gi = 0; gi < q.g; ++gi) copy_span(x, out, q, gi * q.m + m, e0, cnt);
      for_each_run(q, e0, cnt, [&](int64_t i0, int64_t i1, int64_t j) {
        partial[task * q.f + j] += sum_of(s.data() + i0, i1 - i0);
      });
    }
  });
  // f[m, j], then broadcast into the F new channels.
  fill_features(out, merge_partials(partial, q, spans, static_cast<acc_t>(q.k())), q);
}

// o[i] = g[i] + coef[i] * (x[i] - mean[i]) for i < cnt.
template <typename T>
void backward_run(const T* g, const T* x, T* o, const at::opmath_type<T>* mean, const at::opmath_type<T>* coef,
                  int64_t cnt) {
  using acc_t = at::opmath_type<T>;
  int64_t j = 0;
  if constexpr (kChunked<T>) {
    for (; j + kChunk<T> <= cnt; j += kChunk<T>) {
      auto gv = load_chunk(g + j);
      const auto v = load_chunk(x + j), mu = load_acc_chunk<T>(mean + j), k = load_acc_chunk<T>(coef + j);
      for (int p = 0; p < kParts<T>; ++p) gv[p] = at::vec::fmadd(k[p], v[p] - mu[p], gv[p]);
      store_chunk(o + j, gv);
    }
  }
  for (; j < cnt; ++j)
    o[j] = static_cast<T>(static_cast<acc_t>(g[j]) + coef[j] * (static_cast<acc_t>(x[j]) - mean[j]));
}

// a[m * F + j] = A[m, j] / G: the sum of grad's channel C + j over group m's samples and pixels / (K * G).
template <typename T>
std::vector<at::opmath_type<T>> feature_grads(const T* grad, const Groups& q) {
  using acc_t = at::opmath_type<T>;
  std::vector<acc_t> a(q.m * q.f, acc_t(0));
  at::parallel_for(0, q.m, grain(q.g * q.f * q.hw), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> plane(q.hw);
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t gi = 0; gi < q.g; ++gi) {
        const T* gn = grad + (gi * q.m + m) * q.out_sample();
        for (int64_t j = 0; j < q.f; ++j) {
          for (int64_t p = 0; p < q.hw; ++p)
            plane[p] = static_cast<acc_t>(q.nhwc ? gn[p * (q.c + q.f) + q.c + j] : gn[(q.c + j) * q.hw + p]);
          a[m * q.f + j] += sum_of(plane.data(), q.hw);
        }
      }
      for (int64_t j = 0; j < q.f; ++j) a[m * q.f + j] /= static_cast<acc_t>(q.k() * q.g);
    }
  });
  return a;
}

template <typename T>
void minibatch_stddev_backward_kernel(const T* grad, const T* x, T* gx, const Groups& q) {
  using acc_t = at::opmath_type<T>;
  const std::vector<acc_t> a = feature_grads(grad, q);
  const int64_t span = q.span(), spans = q.spans();
  at::parallel_for(0, q.m * spans, grain(2 * q.g * span), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> mean(span), coef(span);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m = task / spans, e0 = task % spans * span, cnt = std::min(span, q.sample() - e0);
      group_stats(x, q, m, e0, cnt, mean.data(), coef.data());
      for_each_run(q, e0, cnt, [&](int64_t i0, int64_t i1, int64_t j) {
        for (int64_t i = i0; i < i1; ++i) coef[i] = a[m * q.f + j] / coef[i];
      });
      for (int64_t gi = 0; gi < q.g; ++gi) {
        const int64_t n = gi * q.m + m;
        const T* xr = x + n * q.sample() + e0;
        T* o = gx + n * q.sample() + e0;
        const T* gn = grad + n * q.out_sample();
        if (!q.nhwc) {
          backward_run(gn + e0, xr, o, mean.data(), coef.data(), cnt);
          continue;
        }
        for (int64_t i = 0; i < cnt; i += q.c)
          backward_run(gn + (e0 + i) / q.c * (q.c + q.f), xr + i, o + i, mean.data() + i, coef.data() + i, q.c);
      }
    }
  });
}

// Per feature i < cnt of group m's span at e0: gsum[i] = sum_g gg, u[i] = sum_g gg * (x - mean[i]),
// the G rows of x re-read from L1 (group_stats read them just before).
template <typename T>
void gg_sums(const T* gg, const T* x, const Groups& q, int64_t m, int64_t e0, int64_t cnt,
             const at::opmath_type<T>* mean, at::opmath_type<T>* gsum, at::opmath_type<T>* u) {
  using acc_t = at::opmath_type<T>;
  std::fill_n(gsum, cnt, acc_t(0));
  std::fill_n(u, cnt, acc_t(0));
  for (int64_t gi = 0; gi < q.g; ++gi) {
    const int64_t row = (gi * q.m + m) * q.sample() + e0;
    const T *gr = gg + row, *xr = x + row;
    int64_t j = 0;
    if constexpr (kChunked<T>) {
      for (; j + kChunk<T> <= cnt; j += kChunk<T>) {
        const auto gv = load_chunk(gr + j), xv = load_chunk(xr + j), mu = load_acc_chunk<T>(mean + j);
        auto gs = load_acc_chunk<T>(gsum + j), uu = load_acc_chunk<T>(u + j);
        for (int p = 0; p < kParts<T>; ++p) {
          gs[p] = gs[p] + gv[p];
          uu[p] = at::vec::fmadd(gv[p], xv[p] - mu[p], uu[p]);
        }
        store_acc_chunk<T>(gsum + j, gs);
        store_acc_chunk<T>(u + j, uu);
      }
    }
    for (; j < cnt; ++j) {
      const acc_t gv = static_cast<acc_t>(gr[j]);
      gsum[j] += gv;
      u[j] += gv * (static_cast<acc_t>(xr[j]) - mean[j]);
    }
  }
}

// o[i] = coef[i] * (gg[i] - gmean[i] - w[i] * (x[i] - mean[i])) for i < cnt.
template <typename T>
void double_backward_run(const T* gg, const T* x, T* o, const at::opmath_type<T>* mean, const at::opmath_type<T>* gmean,
                         const at::opmath_type<T>* w, const at::opmath_type<T>* coef, int64_t cnt) {
  using acc_t = at::opmath_type<T>;
  int64_t j = 0;
  if constexpr (kChunked<T>) {
    for (; j + kChunk<T> <= cnt; j += kChunk<T>) {
      auto gv = load_chunk(gg + j);
      const auto xv = load_chunk(x + j), mu = load_acc_chunk<T>(mean + j), gm = load_acc_chunk<T>(gmean + j),
                 wv = load_acc_chunk<T>(w + j), k = load_acc_chunk<T>(coef + j);
      for (int p = 0; p < kParts<T>; ++p) gv[p] = k[p] * (gv[p] - gm[p] - wv[p] * (xv[p] - mu[p]));
      store_chunk(o + j, gv);
    }
  }
  for (; j < cnt; ++j) {
    const acc_t d = static_cast<acc_t>(x[j]) - mean[j];
    o[j] = static_cast<T>(coef[j] * (static_cast<acc_t>(gg[j]) - gmean[j] - w[j] * d));
  }
}

template <typename T>
void minibatch_stddev_double_backward_kernel(const T* gg, const T* grad, const T* x, T* d_grad, T* d_x,
                                             const Groups& q, bool need_grad, bool need_x) {
  using acc_t = at::opmath_type<T>;
  const std::vector<acc_t> a = need_x ? feature_grads(grad, q) : std::vector<acc_t>();
  const int64_t span = q.span(), spans = q.spans();
  // partial[(m * spans + t) * F + j]: the sum of u / s over span t's values of channel group j.
  std::vector<acc_t> partial(need_grad ? q.m * spans * q.f : 0, acc_t(0));
  at::parallel_for(0, q.m * spans, grain(3 * q.g * span), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> mean(span), s(span), gsum(span), u(span);
    const acc_t inv_g = acc_t(1) / static_cast<acc_t>(q.g);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m = task / spans, e0 = task % spans * span, cnt = std::min(span, q.sample() - e0);
      group_stats(x, q, m, e0, cnt, mean.data(), s.data());
      gg_sums(gg, x, q, m, e0, cnt, mean.data(), gsum.data(), u.data());
      if (need_grad) {
        for (int64_t gi = 0; gi < q.g; ++gi) copy_span(gg, d_grad, q, gi * q.m + m, e0, cnt);
        for_each_run(q, e0, cnt, [&](int64_t i0, int64_t i1, int64_t j) {
          acc_t t = 0;
          for (int64_t i = i0; i < i1; ++i) t += u[i] / s[i];
          partial[task * q.f + j] += t;
        });
      }
      if (!need_x) continue;
      // In place: s -> coef = A / (G s), u -> w = u / (G s^2), gsum -> mean_g(gg).
      for_each_run(q, e0, cnt, [&](int64_t i0, int64_t i1, int64_t j) {
        for (int64_t i = i0; i < i1; ++i) {
          const acc_t inv_s = acc_t(1) / s[i];
          s[i] = a[m * q.f + j] * inv_s;
          u[i] = u[i] * inv_g * inv_s * inv_s;
          gsum[i] *= inv_g;
        }
      });
      for (int64_t gi = 0; gi < q.g; ++gi) {
        const int64_t row = (gi * q.m + m) * q.sample() + e0;
        double_backward_run(gg + row, x + row, d_x + row, mean.data(), gsum.data(), u.data(), s.data(), cnt);
      }
    }
  });
  if (need_grad) fill_features(d_grad, merge_partials(partial, q, spans, static_cast<acc_t>(q.k() * q.g)), q);
}

at::Tensor minibatch_stddev(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  TORCH_CHECK(x.dim() == 4, "fastgan_cpu::minibatch_stddev: x must be 4-D, got ", x.sizes());
  const auto fmt = layout_of(x, "x");
  const Groups q = groups_of(x, group_size, num_channels, fmt);
  auto out = at::empty({q.n, q.c + q.f, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastgan_cpu::minibatch_stddev", [&] {
    minibatch_stddev_kernel(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), q);
  });
  return out;
}

// grad [N, C + F, H, W] (the gradient of the output), laid out like x.
void check_grad(const at::Tensor& grad, const at::Tensor& x, const Groups& q, at::MemoryFormat fmt, const char* op) {
  const std::array<int64_t, 4> grad_sizes{q.n, q.c + q.f, x.size(2), x.size(3)};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(grad_sizes), "fastgan_cpu::", op, ": grad must be ",
              at::IntArrayRef(grad_sizes), ", got ", grad.sizes());
  check_like(grad, "grad", x, fmt);
}

at::Tensor minibatch_stddev_backward(const at::Tensor& grad, const at::Tensor& x, int64_t group_size,
                                     int64_t num_channels) {
  TORCH_CHECK(x.dim() == 4, "fastgan_cpu::minibatch_stddev_backward: x must be 4-D, got ", x.sizes());
  const auto fmt = layout_of(x, "x");
  const Groups q = groups_of(x, group_size, num_channels, fmt);
  check_grad(grad, x, q, fmt, "minibatch_stddev_backward");
  auto gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastgan_cpu::minibatch_stddev_backward",
                                  [&] {
    minibatch_stddev_backward_kernel(grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                     gx.mutable_data_ptr<scalar_t>(), q);
  });
  return gx;
}

std::tuple<at::Tensor, at::Tensor> minibatch_stddev_double_backward(const at::Tensor& gg, const at::Tensor& grad,
                                                                    const at::Tensor& x, int64_t group_size,
                                                                    int64_t num_channels, bool need_grad,
                                                                    bool need_x) {
  const char* op = "minibatch_stddev_double_backward";
  TORCH_CHECK(x.dim() == 4, "fastgan_cpu::", op, ": x must be 4-D, got ", x.sizes());
  const auto fmt = layout_of(x, "x");
  const Groups q = groups_of(x, group_size, num_channels, fmt);
  check_grad(grad, x, q, fmt, op);
  TORCH_CHECK(gg.sizes() == x.sizes(), "fastgan_cpu::", op, ": gg must be ", x.sizes(), " (x's shape), got ",
              gg.sizes());
  check_like(gg, "gg", x, fmt);
  auto d_grad = need_grad ? at::empty(grad.sizes(), x.options().memory_format(fmt)) : at::empty({0}, x.options());
  auto d_x = need_x ? at::empty(x.sizes(), x.options().memory_format(fmt)) : at::empty({0}, x.options());
  if (x.numel() == 0 || !(need_grad || need_x)) return {d_grad, d_x};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "fastgan_cpu::minibatch_stddev_double_backward", [&] {
    minibatch_stddev_double_backward_kernel(gg.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                                            x.const_data_ptr<scalar_t>(),
                                            need_grad ? d_grad.mutable_data_ptr<scalar_t>() : nullptr,
                                            need_x ? d_x.mutable_data_ptr<scalar_t>() : nullptr, q, need_grad, need_x);
  });
  return {d_grad, d_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("minibatch_stddev", &minibatch_stddev);
  m.impl("minibatch_stddev_backward", &minibatch_stddev_backward);
  m.impl("minibatch_stddev_double_backward", &minibatch_stddev_double_backward);
}

}  // namespace fastgan::cpu
