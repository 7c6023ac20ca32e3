// SPEC 2, minibatch discrimination, on the projection M [N, B, C]:
//   o[i, b]     = sum_{j != i} exp(-D[i, j, b]),  D[i, j, b] = sum_c |M[i, b, c] - M[j, b, c]|
//   dM[i, b, c] = -sum_{j != i} (g[i, b] + g[j, b]) exp(-D[i, j, b]) sign(M[i, b, c] - M[j, b, c])
//
// A task takes whole kernels b: it gathers M[:, b, :] into a [C, N] buffer in
// float (double for double), so that j is the contiguous, vector dimension, and
// walks the pairs i < j once each (D is symmetric): a tile of R rows i against
// the vectors of columns j > i (the first vector masked per row, so that the
// pairs inside the tile are vector lanes too), accumulating each term into both
// the row sum of i (in registers) and the column sum of j (in the task's buffer).
// The self term j == i is never formed. Extra memory: a few N * C buffers per thread.
#include <cmath>
#include <vector>

#include "common.h"

namespace fastgan::cpu {
namespace {

template <typename acc_t>
using Vec = Vectorized<acc_t>;

// -|v|: the distances are summed negated, as the argument of exp (one OR with the sign bit).
template <typename acc_t>
Vec<acc_t> neg_abs(const Vec<acc_t>& v) {
  return v | Vec<acc_t>(-0.0);
}

#if defined(CPU_CAPABILITY_AVX512)
// exp(x) of x = -D <= 0 (or NaN) in float: x = n ln2 + r with n = round(x / ln2), |r| <= ln2 / 2
// (Cody-Waite, ln2 in two parts), exp(r) by the degree-5 minimax polynomial (the one exp_u20
// uses), and 2^n by vscalefps, which underflows to denormals and 0 as exp does: 11 instructions
// and under 3 ulp, where exp_u20 takes about 20 for 20 ulp. x is clamped from below first:
// exp(-104) is 0 in float already, and the clamp keeps -inf out of the reduction (NaN passes).
inline Vec<float> exp_nonpositive(const Vec<float>& v) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-104.0f), v);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(0.00828929059f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#endif

// exp(x) of the vector lanes, x = -D <= 0: the AVX-512 code above in float, else exp_u20
// (ATen's polynomial, 20 ulp, 2x faster than the 1-ulp Sleef exp here); Sleef's exp in double.
template <typename acc_t>
Vec<acc_t> exp_neg(const Vec<acc_t>& x) {
  if constexpr (std::is_same_v<acc_t, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    return exp_nonpositive(x);
#else
    return x.exp_u20();
#endif
  } else {
    return x.exp();
  }
}

// The first `count` lanes of v, zeros after: masks the columns past N.
template <typename acc_t>
Vec<acc_t> first_lanes(const Vec<acc_t>& v, int64_t count) {
  return count >= Vec<acc_t>::size() ? v : Vec<acc_t>::set(Vec<acc_t>(0), v, count);
}

// sign(diff) * w, with sign(0) = 0 (and 0 for NaN).
template <typename acc_t>
Vec<acc_t> signed_weight(const Vec<acc_t>& diff, const Vec<acc_t>& w) {
  const Vec<acc_t> zero(0);
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) {
    // w with the sign bit of diff flipped in (w ^ (diff & -0.0): ternary logic 0x78), zeroed
    // where diff is 0 or NaN: two instructions.
    const __mmask16 nonzero = _mm512_cmp_ps_mask(diff, zero, _CMP_NEQ_OQ);
    return _mm512_castsi512_ps(_mm512_maskz_ternarylogic_epi32(
        nonzero, _mm512_castps_si512(w), _mm512_castps_si512(diff), _mm512_set1_epi32(INT32_MIN), 0x78));
  }
#endif
  return (w & (diff > zero)) - (w & (diff < zero));
}

template <typename acc_t>
acc_t reduce_sum(const Vec<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](const Vec<acc_t>& a, const Vec<acc_t>& b) { return a + b; }, v);
}

// One kernel b, gathered: cols[c * stride + j] = M[j, b, c] for j < N, zero-padded
// by a vector (loads of the last columns stay in the buffer); g[j] = grad[j, b].
template <typename acc_t>
struct Kernel {
  int64_t n, c, stride;
  std::vector<acc_t> cols, g;

  Kernel(int64_t n, int64_t c, bool with_grad)
      : n(n), c(c), stride(n + Vec<acc_t>::size()), cols(c * stride, 0), g(with_grad ? stride : 0, 0) {}

  template <typename T>
  void gather(const T* m, const T* grad, int64_t b, int64_t nb) {
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t k = 0; k < c; ++k) cols[k * stride + j] = static_cast<acc_t>(m[(j * nb + b) * c + k]);
      if (grad != nullptr) g[j] = static_cast<acc_t>(grad[j * nb + b]);
    }
  }
};

// The lanes [lo, hi) of v, zeros elsewhere; lane l is column j + l of a vector at j. A row tile
// [i0, i0 + R) walks the columns from i0 + 1: in the first vector, row i0 + r masks its lanes
// l < r (the columns j <= i: the pairs inside the tile are formed once, the self term never),
// and every vector masks the columns past N.
template <typename acc_t>
Vec<acc_t> lanes(const Vec<acc_t>& v, int64_t lo, int64_t hi) {
  using V = Vec<acc_t>;
  if (lo == 0 && hi >= V::size()) return v;
  return first_lanes(lo > 0 ? V::set(v, V(0), lo) : v, hi);
}

// Walks the column vectors j = i0 + 1, i0 + 1 + W, ... < N of a row tile at i0:
// step(j, masked) with masked = std::true_type for the first vector and a partial
// last one, std::false_type for the full vectors between (no masking code in their loop).
template <int64_t W, typename F>
void column_vectors(int64_t i0, int64_t n, const F& step) {
  int64_t j = i0 + 1;
  if (j >= n) return;
  step(j, std::true_type{});
  for (j += W; j + W <= n; j += W) step(j, std::false_type{});
  if (j < n) step(j, std::true_type{});
}

// Forward, one kernel, rows i0 .. i0 + R - 1 against the columns j > i: the terms go into the
// row sums (registers) and the column sums (sums[j]). kC > 0 fixes C at compile time.
template <typename acc_t, int kC, int R>
void pair_sums_rows(const Kernel<acc_t>& k, int64_t i0, acc_t* sums) {
  using V = Vec<acc_t>;
  constexpr int64_t W = V::size();
  static_assert(R <= W, "a row tile masks its pairs in the first vector of columns only");
  const int64_t n = k.n, c = kC > 0 ? kC : k.c, stride = k.stride;
  const acc_t* cols = k.cols.data();
  acc_t mi[R][kC > 0 ? kC : 1];
  if constexpr (kC > 0) {
    for (int r = 0; r < R; ++r)
      for (int64_t q = 0; q < c; ++q) mi[r][q] = cols[q * stride + i0 + r];
  }
  V acc[R];
  for (auto& a : acc) a = V(0);
  column_vectors<W>(i0, n, [&](int64_t j, auto masked) {
    V total(0);
    for (int r = 0; r < R; ++r) {
      V nd(0);  // -D
      for (int64_t q = 0; q < c; ++q) {
        const acc_t m = kC > 0 ? mi[r][q] : cols[q * stride + i0 + r];
        const V term = neg_abs(V::loadu(cols + q * stride + j) - V(m));
        nd = q == 0 ? term : nd + term;
      }
      V e = exp_neg(nd);
      if constexpr (masked) e = lanes(e, j == i0 + 1 ? r : 0, n - j);
      acc[r] += e;
      total += e;
    }
    (V::loadu(sums + j) + total).store(sums + j);
  });
  for (int r = 0; r < R; ++r) {
    sums[i0 + r] += reduce_sum(acc[r]);
  }
}

// Backward, one kernel, rows i0 .. i0 + R - 1 against the columns j > i (masked as in the
// forward): grads[q * stride + i] = dM[i, b, q].
template <typename acc_t, int kC, int R>
void pair_grads_rows(const Kernel<acc_t>& k, int64_t i0, acc_t* grads) {
  using V = Vec<acc_t>;
  constexpr int64_t W = V::size();
  static_assert(R <= W, "a row tile masks its pairs in the first vector of columns only");
  const int64_t n = k.n, c = kC > 0 ? kC : k.c, stride = k.stride;
  const acc_t* cols = k.cols.data();
  const acc_t* g = k.g.data();
  // With diff = M_j - M_i and w = (g_i + g_j) exp(-D): dM_i += w sign(diff), dM_j -= w sign(diff).
  if constexpr (kC > 0) {
    // C known: the row values, differences and accumulators live in registers, and each
    // column's update sums the R rows before one load and store.
    V mi[R][kC], acc[R][kC];
    for (int r = 0; r < R; ++r) {
      for (int p = 0; p < kC; ++p) {
        mi[r][p] = V(cols[p * stride + i0 + r]);
        acc[r][p] = V(0);
      }
    }
    column_vectors<W>(i0, n, [&](int64_t j, auto masked) {
      V mj[kC], update[kC];
      for (int p = 0; p < kC; ++p) {
        mj[p] = V::loadu(cols + p * stride + j);
        update[p] = V(0);
      }
      const V gj = V::loadu(g + j);
      for (int r = 0; r < R; ++r) {
        V diff[kC], nd;  // -D
        for (int p = 0; p < kC; ++p) {
          diff[p] = mj[p] - mi[r][p];
          nd = p == 0 ? neg_abs(diff[p]) : nd + neg_abs(diff[p]);
        }
        V w = (V(g[i0 + r]) + gj) * exp_neg(nd);
        if constexpr (masked) w = lanes(w, j == i0 + 1 ? r : 0, n - j);
        for (int p = 0; p < kC; ++p) {
          const V ws = signed_weight(diff[p], w);
          acc[r][p] += ws;
          update[p] += ws;
        }
      }
      for (int p = 0; p < kC; ++p) (V::loadu(grads + p * stride + j) - update[p]).store(grads + p * stride + j);
    });
    for (int r = 0; r < R; ++r) {
      for (int p = 0; p < kC; ++p) grads[p * stride + i0 + r] += reduce_sum(acc[r][p]);
    }
  } else {
    // Any C: one row at a time (R = 1), accumulators in memory.
    static_assert(kC > 0 || R == 1);
    std::vector<V> acc(c, V(0));
    for (int64_t j = i0 + 1; j < n; j += W) {
      V nd(0);  // -D
      for (int64_t p = 0; p < c; ++p) nd += neg_abs(V::loadu(cols + p * stride + j) - V(cols[p * stride + i0]));
      const V w = first_lanes((V(g[i0]) + V::loadu(g + j)) * exp_neg(nd), n - j);
      for (int64_t p = 0; p < c; ++p) {
        const V ws = signed_weight(V::loadu(cols + p * stride + j) - V(cols[p * stride + i0]), w);
        acc[p] += ws;
        (V::loadu(grads + p * stride + j) - ws).store(grads + p * stride + j);
      }
    }
    for (int64_t p = 0; p < c; ++p) grads[p * stride + i0] += reduce_sum(acc[p]);
  }
}

// Row tiles of R over all rows, the last rows one by one.
template <int R, typename F1, typename FR>
void row_tiles(int64_t n, const FR& tile, const F1& single) {
  int64_t i = 0;
  for (; i + R <= n; i += R) tile(i);
  for (; i < n; ++i) single(i);
}

// Calls f(std::integral_constant<int, kC>) with kC = C for C up to 8 (the paper's C is 5), else 0
// (C known at run time only).
template <int kC = 8, typename F>
void dispatch_c(int64_t c, const F& f) {
  if constexpr (kC == 0) {
    f(std::integral_constant<int, 0>{});
  } else {
    if (c == kC) return f(std::integral_constant<int, kC>{});
    dispatch_c<kC - 1>(c, f);
  }
}

// Row tiles, at most a vector wide (the first vector masks them): 4 rows share each
// column load in the forward; the backward takes as many rows (up to 4) as keep its
// R x C accumulators within 20 vector registers, 4 at the paper's C = 5 (measured
// against 1 to 8 rows at C = 5).
constexpr int kForwardRows = 4;
constexpr int kBackwardRows = 4;
constexpr int kBackwardAccumulators = 20;

// Tasks take whole kernels; a kernel costs about N^2 C / 2 element operations.
int64_t kernel_grain(int64_t n, int64_t c) { return grain(std::max<int64_t>(1, n * n * c / 2)); }

template <typename T>
void features(const T* m, T* o, int64_t n, int64_t nb, int64_t c, bool include_self) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, nb, kernel_grain(n, c), [&](int64_t begin, int64_t end) {
    Kernel<acc_t> k(n, c, false);
    std::vector<acc_t> sums(k.stride);
    for (int64_t b = begin; b < end; ++b) {
      k.gather(m, static_cast<const T*>(nullptr), b, nb);
      std::fill(sums.begin(), sums.end(), acc_t(0));
      dispatch_c(c, [&](auto kc) {
        constexpr int kRows = std::min<int64_t>(kForwardRows, Vec<acc_t>::size());
        row_tiles<kRows>(
            n, [&](int64_t i) { pair_sums_rows<acc_t, kc, kRows>(k, i, sums.data()); },
            [&](int64_t i) { pair_sums_rows<acc_t, kc, 1>(k, i, sums.data()); });
      });
      const acc_t self = include_self ? acc_t(1) : acc_t(0);
      for (int64_t i = 0; i < n; ++i) o[i * nb + b] = static_cast<T>(sums[i] + self);
    }
  });
}

template <typename T>
void features_backward(const T* grad, const T* m, T* dm, int64_t n, int64_t nb, int64_t c) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, nb, kernel_grain(n, c), [&](int64_t begin, int64_t end) {
    Kernel<acc_t> k(n, c, true);
    std::vector<acc_t> grads(c * k.stride);
    for (int64_t b = begin; b < end; ++b) {
      k.gather(m, grad, b, nb);
      std::fill(grads.begin(), grads.end(), acc_t(0));
      dispatch_c(c, [&](auto kc) {
        // The code for any C takes one row.
        constexpr int kRows =
            kc > 0 ? std::max(1, std::min<int>({kBackwardRows, kBackwardAccumulators / std::max<int>(kc, 1),
                                                 static_cast<int>(Vec<acc_t>::size())}))
                   : 1;
        row_tiles<kRows>(
            n, [&](int64_t i) { pair_grads_rows<acc_t, kc, kRows>(k, i, grads.data()); },
            [&](int64_t i) { pair_grads_rows<acc_t, kc, 1>(k, i, grads.data()); });
      });
      for (int64_t i = 0; i < n; ++i)
        for (int64_t p = 0; p < c; ++p) dm[(i * nb + b) * c + p] = static_cast<T>(grads[p * k.stride + i]);
    }
  });
}

void check_m(const at::Tensor& m, const char* op) {
  TORCH_CHECK(m.dim() == 3 && m.is_contiguous(), "fastgan_cpu::", op,
              ": M must be a contiguous [N, B, C] tensor, got sizes ", m.sizes(), " and strides ", m.strides());
}

at::Tensor minibatch_discrimination(const at::Tensor& m, bool include_self) {
  check_m(m, "minibatch_discrimination");
  const int64_t n = m.size(0), nb = m.size(1), c = m.size(2);
  auto o = at::empty({n, nb}, m.options());
  if (o.numel() == 0) return o;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "fastgan_cpu::minibatch_discrimination",
                                  [&] {
    features(m.const_data_ptr<scalar_t>(), o.mutable_data_ptr<scalar_t>(), n, nb, c, include_self);
  });
  return o;
}

at::Tensor minibatch_discrimination_backward(const at::Tensor& grad, const at::Tensor& m) {
  check_m(m, "minibatch_discrimination_backward");
  const int64_t n = m.size(0), nb = m.size(1), c = m.size(2);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == nb && grad.is_contiguous(),
              "fastgan_cpu::minibatch_discrimination_backward: grad must be a contiguous [N, B] = [", n, ", ", nb,
              "] tensor, got sizes ", grad.sizes(), " and strides ", grad.strides());
  TORCH_CHECK(grad.scalar_type() == m.scalar_type(), "fastgan_cpu::minibatch_discrimination_backward: grad has dtype ",
              grad.scalar_type(), ", expected ", m.scalar_type());
  auto dm = at::empty(m.sizes(), m.options());
  if (dm.numel() == 0) return dm;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(),
                                  "fastgan_cpu::minibatch_discrimination_backward", [&] {
    features_backward(grad.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), dm.mutable_data_ptr<scalar_t>(),
                      n, nb, c);
  });
  return dm;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("minibatch_discrimination", &minibatch_discrimination);
  m.impl("minibatch_discrimination_backward", &minibatch_discrimination_backward);
}

}  // namespace fastgan::cpu
