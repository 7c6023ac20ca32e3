// SPEC 1 on CPU: ConvTranspose2d + BatchNorm2d + ReLU, the DCGAN generator block.
//
// The convolution is convolution.cpp's: oneDNN, or GEMMs on small inputs; the win
// is around it. z comes out channels-last whenever x is channels-last (the Python op hands
// it so, except for 1x1 inputs), so a pixel's channels are contiguous and the per-channel
// work vectorizes across channels. Then:
// - statistics in one pass over z: blocks of ~kBlockElems values, each reduced in two
//   passes while it sits in L1 (exact block mean, then squared deviations from it), the
//   blocks merged with Chan's formula in double: accurate when |mean| >> std (SPEC 1);
// - normalize + ReLU in one pass (in place when nothing keeps z);
// - backward: both per-channel sums of the BN + ReLU backward in one pass over
//   (grad_y, z), then one pass writing grad_z; the convolutions' backward (Python) does the rest;
// - eval: the caller folds the statistics into W and the bias, and oneDNN applies the
//   ReLU as a post-op on channels-last outputs (the GEMM path: in its col2im), no pass of its own.
// NCHW z works too (each plane is one channel). float16/bfloat16 compute in float.
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <vector>

#include "common.h"
#include "convolution.h"
#include "layout.h"

namespace fastgan::cpu {
namespace {

// Values of z per statistics block: the two passes over a block run from L1 (48 KB here).
constexpr int64_t kBlockElems = 8192;

// z seen as channels-last rows [n * s, c] (cl) or NCHW planes [n * c, s], s = H * W.
struct View {
  bool cl;
  int64_t n, c, s;
  int64_t per_channel() const { return n * s; }
};

View view_of(const at::Tensor& z, at::MemoryFormat fmt) {
  return {fmt == at::MemoryFormat::ChannelsLast, z.size(0), z.size(1), z.size(2) * z.size(3)};
}

// The statistics blocks: channels-last blocks of whole rows (every channel), NCHW pieces of
// one plane (one channel). Block `item` adds into record `record(item)`: per-channel slots
// [c] of the records, which later merge in a fixed order (deterministic, any thread count).
struct Blocks {
  View v;
  int64_t len;  // rows per block (cl) or values per piece (NCHW)
  int64_t pieces;  // pieces per NCHW plane

  explicit Blocks(const View& view) : v(view) {
    len = v.cl ? std::max<int64_t>(1, kBlockElems / v.c) : std::min(kBlockElems, v.s);
    pieces = v.cl ? 1 : (v.s + len - 1) / len;
  }
  int64_t items() const { return v.cl ? (v.n * v.s + len - 1) / len : v.n * v.c * pieces; }
  int64_t records() const { return v.cl ? items() : v.n * pieces; }
  int64_t record(int64_t item) const { return v.cl ? item : item / (v.c * pieces) * pieces + item % pieces; }
  int64_t channel(int64_t item) const { return v.cl ? 0 : item / pieces % v.c; }
  // Values per channel in record r.
  int64_t count(int64_t r) const {
    return v.cl ? std::min(len, v.n * v.s - r * len) : std::min(len, v.s - r % pieces * len);
  }
  // The first element of block `item`.
  int64_t offset(int64_t item) const {
    return v.cl ? item * len * v.c : item / pieces * v.s + item % pieces * len;
  }
};

template <typename T>
using acc_t = at::opmath_type<T>;

// A chunk of per-channel values: loaded at channel ch (channels-last) or broadcast from p[ch] (NCHW).
template <typename T, bool Bcast>
Chunk<T> param_chunk(const acc_t<T>* p, int64_t ch) {
  if constexpr (Bcast) {
    Chunk<T> v;
    for (auto& part : v) part = AccVec<T>(p[ch]);
    return v;
  } else {
    return load_acc_chunk<T>(p + ch);
  }
}

// Runs vec(k, ch, bcast) on the chunks and one(k, ch) on the single values of the elements
// [k0, k0 + len) of one channels-last row (channel ch = 0 at k0, bcast false) or of one
// NCHW plane segment of channel ch (bcast true: per-channel values are broadcast).
template <typename T, typename Vec, typename One>
void walk(int64_t k0, int64_t len, int64_t ch, bool cl, const Vec& vec, const One& one) {
  int64_t j = 0;
  if (cl) {
    if constexpr (kChunked<T>) {
      for (; j + kChunk<T> <= len; j += kChunk<T>) vec(k0 + j, j, std::false_type{});
    }
    for (; j < len; ++j) one(k0 + j, j);
  } else {
    if constexpr (kChunked<T>) {
      for (; j + kChunk<T> <= len; j += kChunk<T>) vec(k0 + j, ch, std::true_type{});
    }
    for (; j < len; ++j) one(k0 + j, ch);
  }
}

// Element-wise pass over all of z, in parallel.
template <typename T, typename Vec, typename One>
void elementwise(const View& v, const Vec& vec, const One& one) {
  const int64_t lines = v.cl ? v.n * v.s : v.n * v.c, len = v.cl ? v.c : v.s;
  at::parallel_for(0, lines, grain(len), [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) walk<T>(l * len, len, l % v.c, v.cl, vec, one);
  });
}

// Adds K per-channel sums over the elements of block `item` into `out`, its record's K * c
// slots (sums[q * c + ch]). vec(k, ch, bcast) returns std::array<Chunk<T>, K> of terms for the
// chunk at k, one(k, ch) std::array<acc_t, K> for the value at k.
template <typename T, int K, typename Vec, typename One>
void accumulate_block(const Blocks& b, int64_t item, acc_t<T>* out, const Vec& vec, const One& one) {
  using A = acc_t<T>;
  const int64_t c = b.v.c, ch = b.channel(item), k0 = b.offset(item);
  if (b.v.cl) {
    // Accumulate into the record's channel slots (in L1), a row at a time.
    const auto add_vec = [&](int64_t k, int64_t j, auto bcast) {
      const auto terms = vec(k, j, bcast);
      for (int q = 0; q < K; ++q) {
        auto acc = load_acc_chunk<T>(out + q * c + j);
        for (int p = 0; p < kParts<T>; ++p) acc[p] = acc[p] + terms[q][p];
        store_acc_chunk<T>(out + q * c + j, acc);
      }
    };
    const auto add_one = [&](int64_t k, int64_t j) {
      const auto terms = one(k, j);
      for (int q = 0; q < K; ++q) out[q * c + j] += terms[q];
    };
    const int64_t rows = b.count(item);
    for (int64_t r = 0; r < rows; ++r) walk<T>(k0 + r * c, c, 0, true, add_vec, add_one);
    return;
  }
  // One channel: accumulate in registers, then reduce.
  std::array<Chunk<T>, K> acc;
  for (auto& a : acc) a.fill(AccVec<T>(A(0)));
  std::array<A, K> tail{};
  const auto add_vec = [&](int64_t k, int64_t j, auto bcast) {
    const auto terms = vec(k, j, bcast);
    for (int q = 0; q < K; ++q)
      for (int p = 0; p < kParts<T>; ++p) acc[q][p] = acc[q][p] + terms[q][p];
  };
  const auto add_one = [&](int64_t k, int64_t j) {
    const auto terms = one(k, j);
    for (int q = 0; q < K; ++q) tail[q] += terms[q];
  };
  walk<T>(k0, b.count(b.record(item)), ch, false, add_vec, add_one);
  for (int q = 0; q < K; ++q) {
    A s = tail[q];
    for (const auto& part : acc[q])
      s += at::vec::vec_reduce_all<A>([](const AccVec<T>& x, const AccVec<T>& y) { return x + y; }, part);
    out[q * c + ch] += s;
  }
}

// Per-channel mean and biased variance of z (see the top of the file). Every value is first
// shifted by its channel's first value, so that the block means are small numbers that float
// holds exactly enough: summing values of ~1e4 in float lost ~1e-3 of each block mean, which
// the merge turned into a 1e-5 relative error of the variance.
template <typename T>
void channel_stats(const T* z, const View& v, acc_t<T>* mean, acc_t<T>* var) {
  using A = acc_t<T>;
  const Blocks b(v);
  const int64_t c = v.c;
  std::vector<A> shift(c);
  for (int64_t ch = 0; ch < c; ++ch) shift[ch] = static_cast<A>(z[v.cl ? ch : ch * v.s]);
  std::vector<A> bmean(b.records() * c, A(0)), bm2(b.records() * c, A(0));
  at::parallel_for(0, b.items(), grain(v.cl ? b.len * c : b.len), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = b.record(item);
      A* m = bmean.data() + r * c;
      // Pass 1: the block's sums of z - shift, made means.
      accumulate_block<T, 1>(
          b, item, m,
          [&](int64_t k, int64_t ch, auto bcast) {
            auto x = load_chunk(z + k);
            const auto sh = param_chunk<T, decltype(bcast)::value>(shift.data(), ch);
            for (int p = 0; p < kParts<T>; ++p) x[p] = x[p] - sh[p];
            return std::array<Chunk<T>, 1>{x};
          },
          [&](int64_t k, int64_t ch) { return std::array<A, 1>{static_cast<A>(z[k]) - shift[ch]}; });
      const A inv = A(1) / static_cast<A>(b.count(r));
      for (int64_t ch = b.channel(item); ch < (v.cl ? c : b.channel(item) + 1); ++ch) m[ch] *= inv;
      // Pass 2, on the block still in L1: squared deviations from its mean.
      accumulate_block<T, 1>(
          b, item, bm2.data() + r * c,
          [&](int64_t k, int64_t ch, auto bcast) {
            constexpr bool B = decltype(bcast)::value;
            auto x = load_chunk(z + k);
            const auto mv = param_chunk<T, B>(m, ch), sh = param_chunk<T, B>(shift.data(), ch);
            for (int p = 0; p < kParts<T>; ++p) {
              const auto d = x[p] - sh[p] - mv[p];
              x[p] = d * d;
            }
            return std::array<Chunk<T>, 1>{x};
          },
          [&](int64_t k, int64_t ch) {
            const A d = static_cast<A>(z[k]) - shift[ch] - m[ch];
            return std::array<A, 1>{d * d};
          });
    }
  });
  // Chan's merge of the blocks, in double, in record order.
  at::parallel_for(0, c, 16, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      double cnt = 0, mu = 0, m2 = 0;
      for (int64_t r = 0; r < b.records(); ++r) {
        const double nb = static_cast<double>(b.count(r)), tot = cnt + nb;
        const double d = static_cast<double>(bmean[r * c + ch]) - mu;
        mu += d * nb / tot;
        m2 += static_cast<double>(bm2[r * c + ch]) + d * d * cnt * nb / tot;
        cnt = tot;
      }
      mean[ch] = static_cast<A>(static_cast<double>(shift[ch]) + mu);
      var[ch] = static_cast<A>(m2 / cnt);
    }
  });
}

// K per-channel sums over all blocks, in parallel: sums[(r * K + q) * c + ch] of record r.
template <typename T, int K, typename Vec, typename One>
std::vector<acc_t<T>> block_sums(const Blocks& b, const Vec& vec, const One& one) {
  const int64_t c = b.v.c;
  std::vector<acc_t<T>> sums(b.records() * K * c, acc_t<T>(0));
  at::parallel_for(0, b.items(), grain(b.v.cl ? b.len * c : b.len), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item)
      accumulate_block<T, K>(b, item, sums.data() + b.record(item) * K * c, vec, one);
  });
  return sums;
}

// y = act((z - mean) * scale + shift), act(u) = u > 0 ? u : slope * u; y may be z.
template <typename T>
void bn_relu_pass(const T* z, T* y, const View& v, const acc_t<T>* mean, const acc_t<T>* scale,
                  const acc_t<T>* shift, acc_t<T> slope) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  elementwise<T>(
      v,
      [&](int64_t k, int64_t ch, auto bcast) {
        constexpr bool B = decltype(bcast)::value;
        auto x = load_chunk(z + k);
        const auto m = param_chunk<T, B>(mean, ch), a = param_chunk<T, B>(scale, ch), s = param_chunk<T, B>(shift, ch);
        for (int p = 0; p < kParts<T>; ++p) {
          const V u = at::vec::fmadd(x[p] - m[p], a[p], s[p]);
          // ReLU keeps clamp_min's NaN propagation; LeakyReLU scales where u <= 0 (NaN stays NaN).
          x[p] = slope == A(0) ? at::vec::clamp_min(u, V(A(0))) : V::blendv(u * V(slope), u, u > V(A(0)));
        }
        store_chunk(y + k, x);
      },
      [&](int64_t k, int64_t ch) {
        const A out = (static_cast<A>(z[k]) - mean[ch]) * scale[ch] + shift[ch];
        y[k] = static_cast<T>(out > A(0) || std::isnan(out) ? out : out * slope);
      });
}

// The per-channel values of the BN + activation backward (schemas.h): xhat = (z - mean) * invstd,
// gm = grad_y where xhat * gamma + beta > 0 (else grad_y * slope), then
// grad_z = k * (gm - c1 - xhat * c2).
template <typename T>
struct BackwardParams {
  std::vector<acc_t<T>> mean, invstd, gamma, beta, k, c1, c2;
  acc_t<T> slope;
};

// xhat and the masked gradient gm of the chunk (vec) or value (one) at k, for g and z at the same
// offsets.
template <typename T>
auto backward_terms(const T* g, const T* z, const BackwardParams<T>& P) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  const auto vec = [g, z, &P](int64_t k, int64_t ch, auto bcast) {
    constexpr bool B = decltype(bcast)::value;
    auto xh = load_chunk(z + k), gm = load_chunk(g + k);
    const auto m = param_chunk<T, B>(P.mean.data(), ch), is = param_chunk<T, B>(P.invstd.data(), ch);
    const auto ga = param_chunk<T, B>(P.gamma.data(), ch), be = param_chunk<T, B>(P.beta.data(), ch);
    for (int p = 0; p < kParts<T>; ++p) {
      xh[p] = (xh[p] - m[p]) * is[p];
      // slope 0: a true zero where u <= 0 (as ReLU's backward, even for an infinite grad_y).
      const V low = P.slope == A(0) ? V(A(0)) : gm[p] * V(P.slope);
      gm[p] = V::blendv(low, gm[p], at::vec::fmadd(xh[p], ga[p], be[p]) > V(A(0)));
    }
    return std::make_pair(xh, gm);
  };
  const auto one = [g, z, &P](int64_t k, int64_t ch) {
    const A xh = (static_cast<A>(z[k]) - P.mean[ch]) * P.invstd[ch];
    const A gk = static_cast<A>(g[k]);
    const A gm = xh * P.gamma[ch] + P.beta[ch] > A(0) ? gk : P.slope == A(0) ? A(0) : gk * P.slope;
    return std::make_pair(xh, gm);
  };
  return std::make_pair(vec, one);
}

// Pass 1 over (g, z) laid out as v: adds s1 = sum(gm) and s2 = sum(gm * xhat) per channel into
// s[ch] and s[c + ch], in double, records in a fixed order.
template <typename T>
void add_backward_sums(const T* g, const T* z, const View& v, const BackwardParams<T>& P, double* s) {
  using A = acc_t<T>;
  const auto [vec, one] = backward_terms(g, z, P);
  const Blocks b(v);
  const int64_t c = v.c;
  const auto sums = block_sums<T, 2>(
      b,
      [&](int64_t k, int64_t ch, auto bcast) {
        auto [xh, gm] = vec(k, ch, bcast);
        for (int p = 0; p < kParts<T>; ++p) xh[p] = gm[p] * xh[p];
        return std::array<Chunk<T>, 2>{gm, xh};
      },
      [&](int64_t k, int64_t ch) {
        const auto [xh, gm] = one(k, ch);
        return std::array<A, 2>{gm, gm * xh};
      });
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t r = 0; r < b.records(); ++r) {
      s[ch] += static_cast<double>(sums[(r * 2) * c + ch]);
      s[c + ch] += static_cast<double>(sums[(r * 2 + 1) * c + ch]);
    }
  }
}

// Pass 2 over (g, z) laid out as v: grad_z = k * (gm - c1 - xhat * c2).
template <typename T>
void write_grad_z(const T* g, const T* z, T* gz, const View& v, const BackwardParams<T>& P) {
  const auto [vec, one] = backward_terms(g, z, P);
  elementwise<T>(
      v,
      [&](int64_t k, int64_t ch, auto bcast) {
        constexpr bool B = decltype(bcast)::value;
        auto [xh, gm] = vec(k, ch, bcast);
        const auto kk = param_chunk<T, B>(P.k.data(), ch), c1 = param_chunk<T, B>(P.c1.data(), ch);
        const auto c2 = param_chunk<T, B>(P.c2.data(), ch);
        for (int p = 0; p < kParts<T>; ++p) gm[p] = kk[p] * (gm[p] - c1[p] - xh[p] * c2[p]);
        store_chunk(gz + k, gm);
      },
      [&](int64_t k, int64_t ch) {
        const auto [xh, gm] = one(k, ch);
        gz[k] = static_cast<T>(P.k[ch] * (gm - P.c1[ch] - xh * P.c2[ch]));
      });
}

// The sums s (as add_backward_sums leaves them, over n values per channel) to grad_gamma,
// grad_beta and the coefficients of pass 2.
template <typename T>
void finish_backward_sums(const std::vector<double>& s, double n, BackwardParams<T>& P, acc_t<T>* grad_gamma,
                          acc_t<T>* grad_beta) {
  using A = acc_t<T>;
  const int64_t c = static_cast<int64_t>(P.mean.size());
  for (int64_t ch = 0; ch < c; ++ch) {
    grad_beta[ch] = static_cast<A>(s[ch]);
    grad_gamma[ch] = static_cast<A>(s[c + ch]);
    P.k[ch] = P.gamma[ch] * P.invstd[ch];
    P.c1[ch] = static_cast<A>(s[ch] / n);
    P.c2[ch] = static_cast<A>(s[c + ch] / n);
  }
}

// Both passes, g laid out like z.
// Runs body(i, g_i) for each sample i of a channels-last z with an NCHW g (a loss gradient from
// NCHW code), g_i its gradient transposed into a per-thread buffer that stays in L2, so that g is
// never written out transposed.
template <typename T, typename Body>
void each_sample_nchw_grad(const T* g, const View& v, const Body& body) {
  const int64_t per_sample = v.c * v.s;
  at::parallel_for(0, v.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(per_sample);
    for (int64_t i = begin; i < end; ++i) {
      transpose_plane(g + i * per_sample, buf.data(), v.c, v.s, sizeof(T));  // [C, S] -> [S, C]
      body(i, buf.data());
    }
  });
}

// Pass 1 of the backward: s1 = sum(gm) and s2 = sum(gm * xhat) per channel, s [2C] in double. An
// NCHW g of a channels-last z (nchw_grad): sums per sample, added in sample order.
template <typename T>
std::vector<double> backward_sums(const T* g, const T* z, const View& v, const BackwardParams<T>& P, bool nchw_grad) {
  const int64_t c = v.c;
  std::vector<double> s(2 * c, 0.0);
  if (!nchw_grad) {
    add_backward_sums(g, z, v, P, s.data());
    return s;
  }
  const View one_sample{true, 1, v.c, v.s};
  std::vector<double> per(v.n * 2 * c, 0.0);
  each_sample_nchw_grad(g, v, [&](int64_t i, const T* gi) {
    add_backward_sums(gi, z + i * c * v.s, one_sample, P, &per[i * 2 * c]);
  });
  for (int64_t i = 0; i < v.n; ++i) {
    for (int64_t q = 0; q < 2 * c; ++q) s[q] += per[i * 2 * c + q];
  }
  return s;
}

// Pass 2: grad_z = k * (gm - c1 - xhat * c2), P's coefficients set.
template <typename T>
void backward_grad_z(const T* g, const T* z, T* gz, const View& v, const BackwardParams<T>& P, bool nchw_grad) {
  if (!nchw_grad) {
    write_grad_z(g, z, gz, v, P);
    return;
  }
  const int64_t per_sample = v.c * v.s;
  const View one_sample{true, 1, v.c, v.s};
  each_sample_nchw_grad(g, v, [&](int64_t i, const T* gi) {
    write_grad_z(gi, z + i * per_sample, gz + i * per_sample, one_sample, P);
  });
}

// ---- argument checks and the ops ----

at::ScalarType stats_type(const at::Tensor& z) {
  return z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_channel_vector(const at::Tensor& t, const char* name, const at::Tensor& z, const char* op) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == z.size(1), "fastgan_cpu::", op, ": ", name, " must have shape [",
              z.size(1), "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == stats_type(z), "fastgan_cpu::", op, ": ", name, " must be ", stats_type(z),
              " for ", z.scalar_type(), " inputs, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "fastgan_cpu::", op, ": ", name,
              " must be a contiguous CPU tensor");
}

at::MemoryFormat check_z(const at::Tensor& z, const char* op) {
  TORCH_CHECK(z.dim() == 4, "fastgan_cpu::", op, ": z must be 4-D, got ", z.sizes());
  return layout_of(z, "z");
}

// A channels-last z with fewer channels than a vector register holds (float: 16, bfloat16: 32) runs
// the per-channel loops on their scalar tails, several times slower than the same values in NCHW
// (float32 4x8x16x16, bn_relu_backward: 37 us, 22 with the NCHW copies; 64x8x32x32: 2.9 and 1.7 ms;
// batch statistics of 64x8x32x32: 362 and 135 us). Such a z goes through NCHW copies (dense_as's
// register-tile transposes), and the outputs in z's layout back.
bool few_channels(const at::Tensor& z, at::MemoryFormat fmt) {
  return fmt == at::MemoryFormat::ChannelsLast && z.numel() > 0 && z.size(1) * z.element_size() < 64;
}

at::Tensor nchw(const at::Tensor& t) { return dense_as(t, at::MemoryFormat::Contiguous); }

at::Tensor channels_last(const at::Tensor& t) { return dense_as(t, at::MemoryFormat::ChannelsLast); }

// The conv bias: a vector of C_out values in x's dtype (as eager's convolution takes it).
void check_conv_bias(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const char* op) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(1) && bias.scalar_type() == x.scalar_type(),
              "fastgan_cpu::", op, ": bias must be [", weight.size(1), "] of x's dtype, got ", bias.sizes(), " ",
              bias.scalar_type());
}

at::Tensor conv_transpose(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef output_padding,
                          const std::optional<at::Tensor>& bias) {
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_conv_transpose_args(x, weight, "conv_transpose");
    check_conv_bias(x, weight, *bias, "conv_transpose");
  }
  return conv_transpose_forward(x, weight, has_bias ? bias : c10::nullopt, stride, padding, output_padding, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose_stats(const at::Tensor& x, const at::Tensor& weight,
                                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                                    at::IntArrayRef output_padding) {
  check_conv_transpose_args(x, weight, "conv_transpose_stats");
  auto z = conv_transpose_forward(x, weight, c10::nullopt, stride, padding, output_padding, false);
  TORCH_CHECK(z.numel() > 0, "fastgan_cpu::conv_transpose_stats: empty output ", z.sizes());
  const auto zs = few_channels(z, layout_of(z, "z")) ? nchw(z) : z;
  const auto fmt = layout_of(zs, "z");
  const int64_t c = z.size(1);
  auto mean = at::empty({c}, z.options().dtype(stats_type(z)));
  auto var = at::empty({c}, z.options().dtype(stats_type(z)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cpu::conv_transpose_stats", [&] {
    channel_stats(zs.const_data_ptr<scalar_t>(), view_of(zs, fmt), mean.mutable_data_ptr<acc_t<scalar_t>>(),
                  var.mutable_data_ptr<acc_t<scalar_t>>());
  });
  return {z, mean, var};
}

std::tuple<at::Tensor, at::Tensor> batch_stats(const at::Tensor& z) {
  const auto fmt = check_z(z, "batch_stats");
  TORCH_CHECK(z.numel() > 0, "fastgan_cpu::batch_stats: empty z ", z.sizes());
  if (few_channels(z, fmt)) return batch_stats(nchw(z));
  auto mean = at::empty({z.size(1)}, z.options().dtype(stats_type(z)));
  auto var = at::empty({z.size(1)}, z.options().dtype(stats_type(z)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cpu::batch_stats", [&] {
    channel_stats(z.const_data_ptr<scalar_t>(), view_of(z, fmt), mean.mutable_data_ptr<acc_t<scalar_t>>(),
                  var.mutable_data_ptr<acc_t<scalar_t>>());
  });
  return {mean, var};
}

void bn_relu_into(const at::Tensor& z, const at::Tensor& y, const at::Tensor& mean, const at::Tensor& scale,
                  const at::Tensor& shift, double negative_slope, const char* op) {
  const auto fmt = check_z(z, op);
  for (const auto& [t, name] : {std::pair{&mean, "mean"}, {&scale, "scale"}, {&shift, "shift"}})
    check_channel_vector(*t, name, z, op);
  if (z.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cpu::bn_relu", [&] {
    using A = acc_t<scalar_t>;
    bn_relu_pass(z.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), view_of(z, fmt),
                 mean.const_data_ptr<A>(), scale.const_data_ptr<A>(), shift.const_data_ptr<A>(),
                 static_cast<A>(negative_slope));
  });
}

at::Tensor bn_relu(const at::Tensor& z, const at::Tensor& mean, const at::Tensor& scale, const at::Tensor& shift,
                   double negative_slope) {
  const auto fmt = check_z(z, "bn_relu");
  if (few_channels(z, fmt)) return channels_last(bn_relu(nchw(z), mean, scale, shift, negative_slope));
  auto y = at::empty(z.sizes(), z.options().memory_format(fmt));
  bn_relu_into(z, y, mean, scale, shift, negative_slope, "bn_relu");
  return y;
}

void bn_relu_(const at::Tensor& z, const at::Tensor& mean, const at::Tensor& scale, const at::Tensor& shift,
              double negative_slope) {
  if (few_channels(z, check_z(z, "bn_relu_"))) {
    auto zn = nchw(z);
    bn_relu_into(zn, zn, mean, scale, shift, negative_slope, "bn_relu_");
    dense_into(zn, z);
    return;
  }
  bn_relu_into(z, z, mean, scale, shift, negative_slope, "bn_relu_");
}

// A [C] vector of opmath values: t's, or `fill` when t is undefined (affine=False).
template <typename A>
std::vector<A> channel_values(const c10::optional<at::Tensor>& t, int64_t c, A fill) {
  if (!t.has_value() || !t->defined()) return std::vector<A>(c, fill);
  const A* p = t->const_data_ptr<A>();
  return std::vector<A>(p, p + c);
}

// bn_relu_backward's inputs checked: z's layout.
at::MemoryFormat check_backward(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& mean,
                                const at::Tensor& invstd, const c10::optional<at::Tensor>& gamma,
                                const c10::optional<at::Tensor>& beta, const char* op) {
  const auto fmt = check_z(z, op);
  TORCH_CHECK(grad_y.sizes() == z.sizes(), "fastgan_cpu::", op, ": grad_y must have z's shape ", z.sizes(), ", got ",
              grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == z.scalar_type(), "fastgan_cpu::", op, ": grad_y has dtype ",
              grad_y.scalar_type(), ", expected z's ", z.scalar_type());
  check_channel_vector(mean, "mean", z, op);
  check_channel_vector(invstd, "invstd", z, op);
  if (gamma.has_value() && gamma->defined()) check_channel_vector(*gamma, "gamma", z, op);
  if (beta.has_value() && beta->defined()) check_channel_vector(*beta, "beta", z, op);
  return fmt;
}

// grad_y as the passes read it for a z in layout fmt: an NCHW gradient of a channels-last z as it is
// (nchw_grad, read in tiles one sample at a time), other mismatches brought to z's layout.
struct Grad {
  at::Tensor g;
  bool nchw_grad;
};

Grad grad_for(const at::Tensor& grad_y, at::MemoryFormat fmt) {
  const bool nchw_grad =
      fmt == at::MemoryFormat::ChannelsLast && !grad_y.is_contiguous(fmt) && grad_y.is_contiguous();
  return {nchw_grad ? grad_y : dense_as(grad_y, fmt), nchw_grad};
}

template <typename T>
BackwardParams<T> backward_params(const at::Tensor& mean, const at::Tensor& invstd,
                                  const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
                                  double negative_slope) {
  using A = acc_t<T>;
  const int64_t c = mean.size(0);
  return {channel_values<A>(mean, c, 0), channel_values<A>(invstd, c, 0), channel_values<A>(gamma, c, 1),
          channel_values<A>(beta, c, 0),  std::vector<A>(c),                std::vector<A>(c),
          std::vector<A>(c),              static_cast<A>(negative_slope)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward(const at::Tensor& grad_y, const at::Tensor& z,
                                                                const at::Tensor& mean, const at::Tensor& invstd,
                                                                const c10::optional<at::Tensor>& gamma,
                                                                const c10::optional<at::Tensor>& beta,
                                                                double negative_slope) {
  const auto fmt = check_backward(grad_y, z, mean, invstd, gamma, beta, "bn_relu_backward");
  if (few_channels(z, fmt)) {
    auto [grad_z, grad_gamma, grad_beta] =
        bn_relu_backward(nchw(grad_y), nchw(z), mean, invstd, gamma, beta, negative_slope);
    return {channels_last(grad_z), grad_gamma, grad_beta};
  }
  const auto in = grad_for(grad_y, fmt);
  const int64_t c = z.size(1);
  auto grad_z = at::empty(z.sizes(), z.options().memory_format(fmt));
  auto grad_gamma = at::empty({c}, mean.options());
  auto grad_beta = at::empty({c}, mean.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cpu::bn_relu_backward", [&] {
    using A = acc_t<scalar_t>;
    auto P = backward_params<scalar_t>(mean, invstd, gamma, beta, negative_slope);
    const View v = view_of(z, fmt);
    const auto* g = in.g.const_data_ptr<scalar_t>();
    const auto* zp = z.const_data_ptr<scalar_t>();
    const auto s = backward_sums(g, zp, v, P, in.nchw_grad);
    finish_backward_sums(s, static_cast<double>(v.per_channel()), P, grad_gamma.mutable_data_ptr<A>(),
                         grad_beta.mutable_data_ptr<A>());
    backward_grad_z(g, zp, grad_z.mutable_data_ptr<scalar_t>(), v, P, in.nchw_grad);
  });
  return {grad_z, grad_gamma, grad_beta};
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_reduce(const at::Tensor& grad_y, const at::Tensor& z,
                                                           const at::Tensor& mean, const at::Tensor& invstd,
                                                           const c10::optional<at::Tensor>& gamma,
                                                           const c10::optional<at::Tensor>& beta,
                                                           double negative_slope) {
  const auto fmt = check_backward(grad_y, z, mean, invstd, gamma, beta, "bn_relu_backward_reduce");
  if (few_channels(z, fmt))
    return bn_relu_backward_reduce(nchw(grad_y), nchw(z), mean, invstd, gamma, beta, negative_slope);
  const auto in = grad_for(grad_y, fmt);
  const int64_t c = z.size(1);
  auto sum_dy_xhat = at::empty({c}, mean.options());
  auto sum_dy = at::empty({c}, mean.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cpu::bn_relu_backward_reduce",
                                  [&] {
    using A = acc_t<scalar_t>;
    const auto P = backward_params<scalar_t>(mean, invstd, gamma, beta, negative_slope);
    const auto s =
        backward_sums(in.g.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), view_of(z, fmt), P, in.nchw_grad);
    for (int64_t ch = 0; ch < c; ++ch) {
      sum_dy.mutable_data_ptr<A>()[ch] = static_cast<A>(s[ch]);
      sum_dy_xhat.mutable_data_ptr<A>()[ch] = static_cast<A>(s[c + ch]);
    }
  });
  return {sum_dy_xhat, sum_dy};
}

at::Tensor bn_relu_backward_elemt(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& mean,
                                  const at::Tensor& invstd, const c10::optional<at::Tensor>& gamma,
                                  const c10::optional<at::Tensor>& beta, double negative_slope,
                                  const at::Tensor& sum_dy_xhat, const at::Tensor& sum_dy, const at::Tensor& count) {
  const char* op = "bn_relu_backward_elemt";
  const auto fmt = check_backward(grad_y, z, mean, invstd, gamma, beta, op);
  check_channel_vector(sum_dy_xhat, "sum_dy_xhat", z, op);
  check_channel_vector(sum_dy, "sum_dy", z, op);
  TORCH_CHECK(count.numel() == 1 && count.scalar_type() == stats_type(z) && count.device().is_cpu(),
              "fastgan_cpu::", op, ": count must be a one-element ", stats_type(z), " CPU tensor, got ",
              count.scalar_type(), " of shape ", count.sizes());
  if (few_channels(z, fmt)) {
    return channels_last(bn_relu_backward_elemt(nchw(grad_y), nchw(z), mean, invstd, gamma, beta, negative_slope,
                                                sum_dy_xhat, sum_dy, count));
  }
  const auto in = grad_for(grad_y, fmt);
  auto grad_z = at::empty(z.sizes(), z.options().memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cpu::bn_relu_backward_elemt",
                                  [&] {
    using A = acc_t<scalar_t>;
    auto P = backward_params<scalar_t>(mean, invstd, gamma, beta, negative_slope);
    const A n = *count.const_data_ptr<A>();
    for (int64_t ch = 0; ch < z.size(1); ++ch) {
      P.k[ch] = P.gamma[ch] * P.invstd[ch];
      P.c1[ch] = sum_dy.const_data_ptr<A>()[ch] / n;
      P.c2[ch] = sum_dy_xhat.const_data_ptr<A>()[ch] / n;
    }
    backward_grad_z(in.g.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
                    grad_z.mutable_data_ptr<scalar_t>(), view_of(z, fmt), P, in.nchw_grad);
  });
  return grad_z;
}

// A per-channel vector of bn_finalize: [C], contiguous, on the CPU, of `dtype` (any floating
// type when dtype is Undefined: running statistics and the conv bias keep their own).
void check_finalize_vector(const at::Tensor& t, const char* name, int64_t c, at::ScalarType dtype) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == c, "fastgan_cpu::bn_finalize: ", name, " must have shape [", c,
              "], got ", t.sizes());
  TORCH_CHECK(dtype == at::ScalarType::Undefined ? at::isFloatingType(t.scalar_type()) : t.scalar_type() == dtype,
              "fastgan_cpu::bn_finalize: ", name, " has dtype ", t.scalar_type(), ", expected ",
              dtype == at::ScalarType::Undefined ? "a floating type" : c10::toString(dtype));
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "fastgan_cpu::bn_finalize: ", name,
              " must be a contiguous CPU tensor");
}

// running += m * (batch - running) in the running statistics' dtype R, batch in A.
template <typename A>
void lerp_running(const at::Tensor& running, const std::vector<A>& batch, A m) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running.scalar_type(), "fastgan_cpu::bn_finalize", [&] {
    auto* r = running.mutable_data_ptr<scalar_t>();
    for (size_t ch = 0; ch < batch.size(); ++ch) {
      const A old = static_cast<A>(r[ch]);
      r[ch] = static_cast<scalar_t>(old + m * (batch[ch] - old));
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_finalize(
    const at::Tensor& mean, const at::Tensor& var, const c10::optional<at::Tensor>& gamma,
    const c10::optional<at::Tensor>& beta, double eps, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, const c10::optional<at::Tensor>& num_batches_tracked,
    const c10::optional<at::Tensor>& bias, double momentum, int64_t count) {
  const auto defined = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  TORCH_CHECK(mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble,
              "fastgan_cpu::bn_finalize: mean must be float32 or float64, got ", mean.scalar_type());
  const int64_t c = mean.dim() == 1 ? mean.size(0) : -1;
  check_finalize_vector(mean, "mean", c, mean.scalar_type());
  check_finalize_vector(var, "var", c, mean.scalar_type());
  if (defined(gamma)) check_finalize_vector(*gamma, "gamma", c, mean.scalar_type());
  if (defined(beta)) check_finalize_vector(*beta, "beta", c, mean.scalar_type());
  const bool update = defined(running_mean);
  TORCH_CHECK(update == defined(running_var),
              "fastgan_cpu::bn_finalize: running_mean and running_var must be given together");
  if (update) {
    check_finalize_vector(*running_mean, "running_mean", c, at::ScalarType::Undefined);
    check_finalize_vector(*running_var, "running_var", c, at::ScalarType::Undefined);
    TORCH_CHECK(count > 1, "fastgan_cpu::bn_finalize: count must be > 1 to update the running variance, got ",
                count);
    TORCH_CHECK(momentum >= 0 || defined(num_batches_tracked),
                "fastgan_cpu::bn_finalize: momentum < 0 (the cumulative average) needs num_batches_tracked");
  }
  if (defined(num_batches_tracked))
    TORCH_CHECK(num_batches_tracked->numel() == 1 && num_batches_tracked->scalar_type() == at::kLong &&
                    num_batches_tracked->device().is_cpu(),
                "fastgan_cpu::bn_finalize: num_batches_tracked must be a one-element int64 CPU tensor");
  if (defined(bias)) check_finalize_vector(*bias, "bias", c, at::ScalarType::Undefined);
  auto invstd = at::empty_like(mean), scale = at::empty_like(mean), shift = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "fastgan_cpu::bn_finalize", [&] {
    using A = scalar_t;
    const std::vector<A> g = channel_values<A>(gamma, c, 1), b = channel_values<A>(beta, c, 0);
    const A* mu = mean.const_data_ptr<A>();
    const A* v = var.const_data_ptr<A>();
    A *is = invstd.mutable_data_ptr<A>(), *sc = scale.mutable_data_ptr<A>(), *sh = shift.mutable_data_ptr<A>();
    for (int64_t ch = 0; ch < c; ++ch) {
      is[ch] = A(1) / std::sqrt(v[ch] + static_cast<A>(eps));
      sc[ch] = g[ch] * is[ch];
      sh[ch] = b[ch];
    }
    if (!update) return;
    double m = momentum;
    if (defined(num_batches_tracked)) {
      int64_t& n = *num_batches_tracked->mutable_data_ptr<int64_t>();
      n += 1;
      if (momentum < 0) m = 1.0 / static_cast<double>(n);
    }
    std::vector<A> batch_mean(mu, mu + c), batch_var(c);
    if (defined(bias)) {
      const at::Tensor bias_acc = bias->to(mean.scalar_type());
      for (int64_t ch = 0; ch < c; ++ch) batch_mean[ch] += bias_acc.const_data_ptr<A>()[ch];
    }
    const A unbias = static_cast<A>(static_cast<double>(count) / static_cast<double>(count - 1));
    for (int64_t ch = 0; ch < c; ++ch) batch_var[ch] = v[ch] * unbias;
    lerp_running<A>(*running_mean, batch_mean, static_cast<A>(m));
    lerp_running<A>(*running_var, batch_var, static_cast<A>(m));
  });
  return {invstd, scale, shift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_stats_finalize(
    const at::Tensor& z, const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta, double eps,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    const c10::optional<at::Tensor>& num_batches_tracked, const c10::optional<at::Tensor>& bias, double momentum) {
  auto [mean, var] = batch_stats(z);
  auto [invstd, scale, shift] = bn_finalize(mean, var, gamma, beta, eps, running_mean, running_var,
                                            num_batches_tracked, bias, momentum, z.numel() / z.size(1));
  return {mean, var, invstd, scale, shift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_gather_finalize(
    const at::Tensor& stats, const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
    double eps, const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    const c10::optional<at::Tensor>& num_batches_tracked, const c10::optional<at::Tensor>& bias, double momentum) {
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) > 0 && stats.size(1) > 1 && stats.size(1) % 2 == 1 &&
                  stats.is_contiguous() && stats.device().is_cpu() &&
                  (stats.scalar_type() == at::kFloat || stats.scalar_type() == at::kDouble),
              "fastgan_cpu::bn_gather_finalize: stats must be a contiguous float32 or float64 CPU tensor [P, 2C + 1] ",
              "(a row of count, mean, var per process), got ", stats.scalar_type(), " of shape ", stats.sizes());
  const int64_t rows = stats.size(0), c = (stats.size(1) - 1) / 2;
  auto mean = at::empty({c}, stats.options()), var = at::empty({c}, stats.options());
  auto count = at::empty({1}, stats.options());
  double n = 0;
  AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "fastgan_cpu::bn_gather_finalize", [&] {
    using A = scalar_t;
    const A* s = stats.const_data_ptr<A>();
    const auto row = [&](int64_t p) { return s + p * (2 * c + 1); };
    for (int64_t p = 0; p < rows; ++p) n += static_cast<double>(row(p)[0]);
    for (int64_t ch = 0; ch < c; ++ch) {  // Chan's merge in double, in row order
      double mu = 0, m2 = 0;
      for (int64_t p = 0; p < rows; ++p) mu += static_cast<double>(row(p)[0]) * static_cast<double>(row(p)[1 + ch]);
      mu /= n;
      for (int64_t p = 0; p < rows; ++p) {
        const double np = row(p)[0], d = static_cast<double>(row(p)[1 + ch]) - mu;
        m2 += np * static_cast<double>(row(p)[1 + c + ch]) + np * d * d;
      }
      mean.mutable_data_ptr<A>()[ch] = static_cast<A>(mu);
      var.mutable_data_ptr<A>()[ch] = static_cast<A>(m2 / n);
    }
    *count.mutable_data_ptr<A>() = static_cast<A>(n);
  });
  auto [invstd, scale, shift] = bn_finalize(mean, var, gamma, beta, eps, running_mean, running_var,
                                            num_batches_tracked, bias, momentum, std::llround(n));
  return {mean, var, invstd, scale, shift, count};
}

// oneDNN's transposed convolution with the ReLU as a post-op (what torch.compile's CPU
// backend calls), when this build of PyTorch has it; float32 and bfloat16 only.
std::optional<at::Tensor> conv_transpose_pointwise_relu(const at::Tensor& x, const at::Tensor& w,
                                                        const at::Tensor& bias, at::IntArrayRef stride,
                                                        at::IntArrayRef padding, at::IntArrayRef output_padding) {
  static const auto handle = c10::Dispatcher::singleton().findOp({"mkldnn::_convolution_transpose_pointwise", ""});
  if (!handle.has_value() || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16)) return {};
  static const auto op = handle->typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                                  at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                                  int64_t, std::string_view, c10::List<std::optional<at::Scalar>>,
                                                  std::optional<std::string_view>)>();
  c10::List<std::optional<at::Scalar>> scalars;
  scalars.push_back(std::nullopt);
  return op.call(x, weight_for(x, w), bias, padding, output_padding, stride, {1, 1}, 1, "relu", scalars, std::nullopt);
}

at::Tensor conv_transpose_bias_relu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding) {
  check_conv_transpose_args(x, weight, "conv_transpose_bias_relu");
  check_conv_bias(x, weight, bias, "conv_transpose_bias_relu");
  // oneDNN's ReLU post-op only where z is channels-last: in NCHW (1x1 inputs) it ran slower
  // than the plain convolution and a separate in-place ReLU.
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
      !conv_transpose_uses_gemm(x, weight, stride, padding, output_padding, true)) {
    if (auto y = conv_transpose_pointwise_relu(x, weight, bias, stride, padding, output_padding))
      return y->is_contiguous(at::MemoryFormat::ChannelsLast) ? *y : y->contiguous(at::MemoryFormat::ChannelsLast);
  }
  return conv_transpose_forward(x, weight, bias, stride, padding, output_padding, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("conv_transpose_stats", &conv_transpose_stats);
  m.impl("conv_transpose", &conv_transpose);
  m.impl("batch_stats", &batch_stats);
  m.impl("bn_relu", &bn_relu);
  m.impl("bn_relu_", &bn_relu_);
  m.impl("bn_relu_backward", &bn_relu_backward);
  m.impl("bn_relu_backward_reduce", &bn_relu_backward_reduce);
  m.impl("bn_relu_backward_elemt", &bn_relu_backward_elemt);
  m.impl("bn_finalize", &bn_finalize);
  m.impl("batch_stats_finalize", &batch_stats_finalize);
  m.impl("bn_gather_finalize", &bn_gather_finalize);
  m.impl("conv_transpose_bias_relu", &conv_transpose_bias_relu);
}

}  // namespace fastgan::cpu
