// SPEC 10: virtual batch normalization (Salimans et al. 2016), with an optional fused activation
// act(u) = u > 0 ? u : slope * u (slope 1: none, 0: ReLU), and its backward.
//
// z [N, C, H, W] (NCHW or channels-last), its first m = ref_size samples the reference batch R.
// Forward: one pass over z for each sample's per-channel mean and M2 (two sweeps of a sample's
// values while they sit in cache), a per-channel combination on [N, C] (R's merged statistics, and
// each current sample's union with R, Chan's formula), one normalize + activation pass.
// Backward: one pass for each sample's sums of g and g * xhat (g = grad_y * act'), the
// combination into per-(sample, channel) coefficients, one pass writing
//   grad_z = ca * g - k1 - k2 * (z - mean)
// (the derivation is in fastgan/ops/virtual_batch_norm.py).
#include <cmath>
#include <type_traits>
#include <vector>

#include <ATen/cpu/vec/vec.h>

#include "common.h"

namespace fastgan::cpu {
namespace {

template <typename T>
using acc_t = at::opmath_type<T>;

// The layout facts the passes need: NCHW walks rows of S values of one (sample, channel); channels-last
// walks S pixels of C values per sample.
struct Shape {
  int64_t n, c, s;
  bool cl;  // channels inner (channels-last with S > 1)
};

Shape shape_of(const at::Tensor& z, at::MemoryFormat fmt) {
  const int64_t s = z.size(2) * z.size(3);
  return {z.size(0), z.size(1), s, fmt == at::MemoryFormat::ChannelsLast && s > 1 && z.size(1) > 1};
}

// Sum of f(k) for k < len with 8 independent accumulators (vectorizable without reassociation).
template <typename A, typename F>
A row_sum(int64_t len, const F& f) {
  A acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= len; k += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += f(k + j);
  }
  for (; k < len; ++k) acc[0] += f(k);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Per (sample, channel): mean and M2 over the S pixels, mean first then M2 = sum (z - mean)^2.
template <typename T>
void sample_stats(const T* z, acc_t<T>* mean, acc_t<T>* m2, const Shape& d) {
  using A = acc_t<T>;
  const A inv_s = A(1) / static_cast<A>(d.s);
  if (!d.cl) {
    at::parallel_for(0, d.n * d.c, grain(d.s), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* zr = z + r * d.s;
        const A mu = row_sum<A>(d.s, [&](int64_t k) { return static_cast<A>(zr[k]); }) * inv_s;
        mean[r] = mu;
        m2[r] = row_sum<A>(d.s, [&](int64_t k) {
          const A e = static_cast<A>(zr[k]) - mu;
          return e * e;
        });
      }
    });
    return;
  }
  at::parallel_for(0, d.n, grain(d.s * d.c), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* __restrict__ zi = z + i * d.s * d.c;
      A* __restrict__ mu = mean + i * d.c;
      A* __restrict__ q = m2 + i * d.c;
      std::fill_n(mu, d.c, A(0));
      std::fill_n(q, d.c, A(0));
      for (int64_t p = 0; p < d.s; ++p) {
        for (int64_t ch = 0; ch < d.c; ++ch) mu[ch] += static_cast<A>(zi[p * d.c + ch]);
      }
      for (int64_t ch = 0; ch < d.c; ++ch) mu[ch] *= inv_s;
      for (int64_t p = 0; p < d.s; ++p) {
        for (int64_t ch = 0; ch < d.c; ++ch) {
          const A e = static_cast<A>(zi[p * d.c + ch]) - mu[ch];
          q[ch] += e * e;
        }
      }
    }
  });
}

// SPEC 10's statistics per (sample, channel) from the per-sample ones, in place: mean <- the mean
// each sample is normalized with, m2 <- invstd. R's samples all get R's; sample i >= m gets
// the union of R and itself, each sample weighted a = 1 / (m + 1).
template <typename A>
void combine(A* mean, A* m2, int64_t n, int64_t c, int64_t s, int64_t m, double eps) {
  const A a = A(1) / static_cast<A>(m + 1), inv_s = A(1) / static_cast<A>(s), e = static_cast<A>(eps);
  for (int64_t ch = 0; ch < c; ++ch) {
    A sum = 0;
    for (int64_t j = 0; j < m; ++j) sum += mean[j * c + ch];
    const A mean_r = sum / static_cast<A>(m);
    // Chan: var_R = (sum_j M2_j + S sum_j (mean_j - mean_R)^2) / (m S).
    A within = 0, between = 0;
    for (int64_t j = 0; j < m; ++j) {
      const A dm = mean[j * c + ch] - mean_r;
      within += m2[j * c + ch] * inv_s;
      between += dm * dm;
    }
    const A var_r = (within + between) / static_cast<A>(m);
    const A invstd_r = A(1) / std::sqrt(var_r + e);
    for (int64_t i = m; i < n; ++i) {
      const A mu = mean[i * c + ch], dm = mu - mean_r;
      const A var = a * m2[i * c + ch] * inv_s + (A(1) - a) * var_r + a * (A(1) - a) * dm * dm;
      mean[i * c + ch] = a * mu + (A(1) - a) * mean_r;
      m2[i * c + ch] = A(1) / std::sqrt(var + e);
    }
    for (int64_t j = 0; j < m; ++j) {
      mean[j * c + ch] = mean_r;
      m2[j * c + ch] = invstd_r;
    }
  }
}

// NaN propagates: NaN > 0 is false and NaN * slope is NaN.
template <typename A>
inline A act(A u, A slope) {
  return u > A(0) ? u : u * slope;
}

// act'(u) * g: slope 0 (ReLU) gives a true zero where u <= 0, as ReLU's backward (even for an
// infinite g). A plain select in the loops, so that they vectorize.
template <bool kRelu, typename A>
inline A act_grad(A g, A u, A slope) {
  if constexpr (kRelu) {
    return u > A(0) ? g : A(0);
  } else {
    return u > A(0) ? g : g * slope;
  }
}

// act_grad on vectors: lanes where u > 0 take g, the others 0 (ReLU) or g * slope.
template <bool kRelu, typename V>
inline V act_grad_vec(const V& g, const V& u, const V& slope) {
  return V::blendv(kRelu ? V(0) : g * slope, g, u > V(0));
}

// f.template operator()<kRelu>() with kRelu = (slope == 0).
template <typename A, typename F>
void with_relu(A slope, const F& f) {
  if (slope == A(0)) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// y = act((z - mean) * scale + beta) with per-(sample, channel) mean and scale = gamma * invstd.
template <typename T>
void normalize(const T* z, T* y, const acc_t<T>* mean, const acc_t<T>* scale, const acc_t<T>* beta, acc_t<T> slope,
               const Shape& d) {
  using A = acc_t<T>;
  if (!d.cl) {
    at::parallel_for(0, d.n * d.c, grain(d.s), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* __restrict__ zr = z + r * d.s;
        T* __restrict__ yr = y + r * d.s;
        const A mu = mean[r], sc = scale[r], b = beta[r % d.c];
        for (int64_t k = 0; k < d.s; ++k) yr[k] = static_cast<T>(act((static_cast<A>(zr[k]) - mu) * sc + b, slope));
      }
    });
    return;
  }
  at::parallel_for(0, d.n * d.s, grain(d.c), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t i = q / d.s;
      const T* __restrict__ zp = z + q * d.c;
      T* __restrict__ yp = y + q * d.c;
      const A* __restrict__ mu = mean + i * d.c;
      const A* __restrict__ sc = scale + i * d.c;
      for (int64_t ch = 0; ch < d.c; ++ch) {
        yp[ch] = static_cast<T>(act((static_cast<A>(zp[ch]) - mu[ch]) * sc[ch] + beta[ch], slope));
      }
    }
  });
}

// gamma and beta as dense [C] vectors of A (1 and 0 when undefined).
template <typename A>
std::pair<std::vector<A>, std::vector<A>> affine(const std::optional<at::Tensor>& gamma,
                                                 const std::optional<at::Tensor>& beta, int64_t c) {
  std::vector<A> g(c, A(1)), b(c, A(0));
  if (gamma && gamma->defined()) {
    const auto t = gamma->contiguous();
    std::copy_n(t.const_data_ptr<A>(), c, g.begin());
  }
  if (beta && beta->defined()) {
    const auto t = beta->contiguous();
    std::copy_n(t.const_data_ptr<A>(), c, b.begin());
  }
  return {g, b};
}

void check_args(const at::Tensor& z, const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& beta,
                int64_t ref_size, const char* op) {
  TORCH_CHECK(z.dim() == 4, "fastgan_cpu::", op, ": z must be 4-D, got ", z.sizes());
  TORCH_CHECK(ref_size >= 1 && ref_size <= z.size(0), "fastgan_cpu::", op, ": ref_size must be in 1..N = ",
              z.size(0), ", got ", ref_size);
  const auto stats = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (const auto* t : {&gamma, &beta}) {
    if (*t && (*t)->defined()) {
      TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == z.size(1) && (*t)->scalar_type() == stats, "fastgan_cpu::",
                  op, ": gamma / beta must be [C] in the statistics' dtype ", stats, ", got ", (*t)->sizes(), " ",
                  (*t)->scalar_type());
    }
  }
}

// -> (y, mean, invstd): mean and invstd [N, C] in the statistics' dtype, what each sample was normalized with.
std::tuple<at::Tensor, at::Tensor, at::Tensor> vbn_forward(const at::Tensor& z, int64_t ref_size,
                                                           const std::optional<at::Tensor>& gamma,
                                                           const std::optional<at::Tensor>& beta, double eps,
                                                           double negative_slope) {
  check_args(z, gamma, beta, ref_size, "vbn_forward");
  const auto fmt = layout_of(z, "z");
  const auto stats = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto y = at::empty(z.sizes(), z.options().memory_format(fmt));
  auto mean = at::empty({z.size(0), z.size(1)}, z.options().dtype(stats));
  auto invstd = at::empty({z.size(0), z.size(1)}, z.options().dtype(stats));
  if (z.numel() == 0) return {y, mean, invstd};
  const Shape d = shape_of(z, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cpu::vbn_forward", [&] {
    using A = acc_t<scalar_t>;
    A* mp = mean.mutable_data_ptr<A>();
    A* ip = invstd.mutable_data_ptr<A>();
    sample_stats(z.const_data_ptr<scalar_t>(), mp, ip, d);
    combine(mp, ip, d.n, d.c, d.s, ref_size, eps);
    auto [g, b] = affine<A>(gamma, beta, d.c);
    std::vector<A> scale(d.n * d.c);
    for (int64_t k = 0; k < d.n * d.c; ++k) scale[k] = g[k % d.c] * ip[k];
    normalize(z.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), mp, scale.data(), b.data(),
              static_cast<A>(negative_slope), d);
  });
  return {y, mean, invstd};
}

// Per (sample, channel): sg = sum g, sgx = sum g * xhat, g = grad_y * act'(xhat * gamma + beta).
template <typename T>
void grad_sums(const T* gy, const T* z, const acc_t<T>* mean, const acc_t<T>* invstd, const acc_t<T>* gamma,
               const acc_t<T>* beta, acc_t<T> slope, acc_t<T>* sg, acc_t<T>* sgx, const Shape& d) {
  using A = acc_t<T>;
  with_relu(slope, [&](auto relu) {
  const auto gm = [slope](A g, A u) { return act_grad<decltype(relu)::value>(g, u, slope); };
  if (!d.cl) {
    at::parallel_for(0, d.n * d.c, grain(2 * d.s), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* gr = gy + r * d.s;
        const T* zr = z + r * d.s;
        const A mu = mean[r], is = invstd[r], ga = gamma[r % d.c], b = beta[r % d.c];
        A s1[8] = {}, s2[8] = {};
        const auto add = [&](int64_t k, int j) {
          const A xh = (static_cast<A>(zr[k]) - mu) * is;
          const A g = gm(static_cast<A>(gr[k]), xh * ga + b);
          s1[j] += g;
          s2[j] += g * xh;
        };
        int64_t k = 0;
        A t1 = 0, t2 = 0;
        if constexpr (std::is_same_v<T, A>) {
          // In vectors: GCC left the ReLU instance scalar (4x the time of the LeakyReLU one).
          using V = at::vec::Vectorized<A>;
          const V vmu(mu), vis(is), vga(ga), vb(b), vslope(slope);
          V a1(A(0)), a2(A(0));
          for (; k + V::size() <= d.s; k += V::size()) {
            const V xh = (V::loadu(zr + k) - vmu) * vis;
            const V g = act_grad_vec<decltype(relu)::value>(V::loadu(gr + k), xh * vga + vb, vslope);
            a1 = a1 + g;
            a2 = a2 + g * xh;
          }
          alignas(64) A l1[V::size()], l2[V::size()];
          a1.store(l1);
          a2.store(l2);
          for (int j = 0; j < V::size(); ++j) t1 += l1[j], t2 += l2[j];
        }
        for (; k + 8 <= d.s; k += 8) {
          for (int j = 0; j < 8; ++j) add(k + j, j);
        }
        for (; k < d.s; ++k) add(k, 0);
        for (int j = 0; j < 8; ++j) t1 += s1[j], t2 += s2[j];
        sg[r] = t1;
        sgx[r] = t2;
      }
    });
    return;
  }
  at::parallel_for(0, d.n, grain(2 * d.s * d.c), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      A* __restrict__ s1 = sg + i * d.c;
      A* __restrict__ s2 = sgx + i * d.c;
      const A* __restrict__ mu = mean + i * d.c;
      const A* __restrict__ is = invstd + i * d.c;
      const A* __restrict__ ga = gamma;
      const A* __restrict__ be = beta;
      std::fill_n(s1, d.c, A(0));
      std::fill_n(s2, d.c, A(0));
      for (int64_t p = 0; p < d.s; ++p) {
        const T* __restrict__ gp = gy + (i * d.s + p) * d.c;
        const T* __restrict__ zp = z + (i * d.s + p) * d.c;
        int64_t ch = 0;
        if constexpr (std::is_same_v<T, A>) {
          // In vectors: GCC left this loop scalar (its two sums in memory), 10x the time of
          // grad_input's pass. Lanes are channels, so each channel's sum keeps the scalar order.
          using V = at::vec::Vectorized<A>;
          const V zero(A(0)), vslope(slope);
          for (; ch + V::size() <= d.c; ch += V::size()) {
            const V xh = (V::loadu(zp + ch) - V::loadu(mu + ch)) * V::loadu(is + ch);
            const V gv = V::loadu(gp + ch);
            const V g = act_grad_vec<decltype(relu)::value>(gv, xh * V::loadu(ga + ch) + V::loadu(be + ch), vslope);
            (V::loadu(s1 + ch) + g).store(s1 + ch);
            (V::loadu(s2 + ch) + g * xh).store(s2 + ch);
          }
        }
        for (; ch < d.c; ++ch) {
          const A xh = (static_cast<A>(zp[ch]) - mu[ch]) * is[ch];
          const A g = gm(static_cast<A>(gp[ch]), xh * ga[ch] + be[ch]);
          s1[ch] += g;
          s2[ch] += g * xh;
        }
      }
    }
  });
  });
}

// The coefficients of grad_z = ca * g - k1 - k2 * (z - mean) per (sample, channel), written over
// (sg -> k1, sgx -> k2, ca); also grad_gamma = sum sgx, grad_beta = sum sg per channel.
template <typename A>
void backward_coefficients(const A* mean, const A* invstd, const A* gamma, A* sg, A* sgx, A* ca, A* grad_gamma,
                           A* grad_beta, int64_t n, int64_t c, int64_t s, int64_t m) {
  const A a = A(1) / static_cast<A>(m + 1), w_r = A(1) / static_cast<A>(m * s), w_i = a / static_cast<A>(s);
  for (int64_t ch = 0; ch < c; ++ch) {
    const A ga = gamma[ch], mean_r = mean[ch], inv_r = invstd[ch];
    A sg_r = 0, sgx_r = 0, p = 0, q = 0, tg = 0, tb = 0;
    for (int64_t j = 0; j < m; ++j) sg_r += sg[j * c + ch], sgx_r += sgx[j * c + ch];
    for (int64_t i = m; i < n; ++i) {
      const int64_t k = i * c + ch;
      const A is = invstd[k];
      // Through sample i's union statistics into R's samples: P (mean) and Q (variance) terms.
      p += is * (sg[k] + is * sgx[k] * (mean_r - mean[k]));
      q += is * is * sgx[k];
      tg += sgx[k], tb += sg[k];
      ca[k] = ga * is;
      sg[k] = w_i * ga * is * sg[k];
      sgx[k] = w_i * ga * is * is * sgx[k];
    }
    const A k1 = w_r * ga * (inv_r * sg_r + (A(1) - a) * p);
    const A k2 = w_r * ga * (inv_r * inv_r * sgx_r + (A(1) - a) * q);
    for (int64_t j = 0; j < m; ++j) {
      ca[j * c + ch] = ga * inv_r;
      sg[j * c + ch] = k1;
      sgx[j * c + ch] = k2;
    }
    grad_gamma[ch] = tg + sgx_r;
    grad_beta[ch] = tb + sg_r;
  }
}

template <typename T>
void grad_input(const T* gy, const T* z, T* gz, const acc_t<T>* mean, const acc_t<T>* invstd, const acc_t<T>* gamma,
                const acc_t<T>* beta, acc_t<T> slope, const acc_t<T>* ca, const acc_t<T>* k1, const acc_t<T>* k2,
                const Shape& d) {
  using A = acc_t<T>;
  with_relu(slope, [&](auto relu) {
  const auto gm = [slope](A g, A u) { return act_grad<decltype(relu)::value>(g, u, slope); };
  if (!d.cl) {
    at::parallel_for(0, d.n * d.c, grain(3 * d.s), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* __restrict__ gr = gy + r * d.s;
        const T* __restrict__ zr = z + r * d.s;
        T* __restrict__ out = gz + r * d.s;
        const A mu = mean[r], is = invstd[r], ga = gamma[r % d.c], b = beta[r % d.c], c0 = ca[r], c1 = k1[r],
                c2 = k2[r];
        for (int64_t k = 0; k < d.s; ++k) {
          const A e = static_cast<A>(zr[k]) - mu;
          const A g = gm(static_cast<A>(gr[k]), e * is * ga + b);
          out[k] = static_cast<T>(c0 * g - c1 - c2 * e);
        }
      }
    });
    return;
  }
  at::parallel_for(0, d.n * d.s, grain(3 * d.c), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t o = (q / d.s) * d.c;
      const T* __restrict__ gp = gy + q * d.c;
      const T* __restrict__ zp = z + q * d.c;
      T* __restrict__ out = gz + q * d.c;
      // Local pointers, as in grad_sums: the channel loop vectorizes.
      const A* __restrict__ mu = mean + o;
      const A* __restrict__ is = invstd + o;
      const A* __restrict__ c0 = ca + o;
      const A* __restrict__ c1 = k1 + o;
      const A* __restrict__ c2 = k2 + o;
      const A* __restrict__ ga = gamma;
      const A* __restrict__ be = beta;
      for (int64_t ch = 0; ch < d.c; ++ch) {
        const A e = static_cast<A>(zp[ch]) - mu[ch];
        const A g = gm(static_cast<A>(gp[ch]), e * is[ch] * ga[ch] + be[ch]);
        out[ch] = static_cast<T>(c0[ch] * g - c1[ch] - c2[ch] * e);
      }
    }
  });
  });
}

// -> (grad_z in z's layout, grad_gamma [C], grad_beta [C]) in the statistics' dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> vbn_backward(const at::Tensor& grad_y, const at::Tensor& z,
                                                            const at::Tensor& mean, const at::Tensor& invstd,
                                                            int64_t ref_size, const std::optional<at::Tensor>& gamma,
                                                            const std::optional<at::Tensor>& beta,
                                                            double negative_slope) {
  check_args(z, gamma, beta, ref_size, "vbn_backward");
  TORCH_CHECK(grad_y.sizes() == z.sizes(), "fastgan_cpu::vbn_backward: grad_y must have z's shape ", z.sizes(),
              ", got ", grad_y.sizes());
  const auto fmt = layout_of(z, "z");
  const auto gy = grad_y.is_contiguous(fmt) ? grad_y : grad_y.contiguous(fmt);
  check_like(gy, "grad_y", z, fmt);
  const auto stats = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(mean.scalar_type() == stats && invstd.scalar_type() == stats && mean.is_contiguous() &&
                  invstd.is_contiguous() && mean.numel() == z.size(0) * z.size(1) && invstd.numel() == mean.numel(),
              "fastgan_cpu::vbn_backward: mean and invstd must be contiguous [N, C] in ", stats);
  auto grad_z = at::empty(z.sizes(), z.options().memory_format(fmt));
  auto grad_gamma = at::zeros({z.size(1)}, z.options().dtype(stats));
  auto grad_beta = at::zeros({z.size(1)}, z.options().dtype(stats));
  if (z.numel() == 0) return {grad_z, grad_gamma, grad_beta};
  const Shape d = shape_of(z, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cpu::vbn_backward", [&] {
    using A = acc_t<scalar_t>;
    const A* mp = mean.const_data_ptr<A>();
    const A* ip = invstd.const_data_ptr<A>();
    auto [g, b] = affine<A>(gamma, beta, d.c);
    std::vector<A> sg(d.n * d.c), sgx(d.n * d.c), ca(d.n * d.c);
    const A slope = static_cast<A>(negative_slope);
    grad_sums(gy.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), mp, ip, g.data(), b.data(), slope,
              sg.data(), sgx.data(), d);
    backward_coefficients(mp, ip, g.data(), sg.data(), sgx.data(), ca.data(), grad_gamma.mutable_data_ptr<A>(),
                          grad_beta.mutable_data_ptr<A>(), d.n, d.c, d.s, ref_size);
    grad_input(gy.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), grad_z.mutable_data_ptr<scalar_t>(), mp,
               ip, g.data(), b.data(), slope, ca.data(), sg.data(), sgx.data(), d);
  });
  return {grad_z, grad_gamma, grad_beta};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("vbn_forward", &vbn_forward);
  m.impl("vbn_backward", &vbn_backward);
}

}  // namespace fastgan::cpu
