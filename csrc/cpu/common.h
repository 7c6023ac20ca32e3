// Helpers shared by the CPU kernels: the layout contract of schemas.h, the
// vector/scalar split by dtype, and the parallel grain size.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>

namespace fastgan::cpu {

using at::vec::Vectorized;

// float and double run the at::vec loops (double accumulates in double);
// float16 and bfloat16 run scalar loops, computing in float, except where
// kReduced below says otherwise.
template <typename T>
constexpr bool kVectorized = std::is_same_v<T, float> || std::is_same_v<T, double>;

// float16 and bfloat16 loops that are hot enough get at::vec code too: a
// Vectorized<T> holds twice the values of a Vectorized<float>, and they compute
// in float through these helpers.
template <typename T>
constexpr bool kReduced = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>;
using FVec = Vectorized<float>;

// FVec::size() values of T (float, float16 or bfloat16) at p, as floats.
template <typename T>
FVec load_floats(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return FVec::loadu(p);
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, FVec::size())));
  }
}

template <typename T>
void store_floats(T* p, const FVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, FVec::size());
  }
}

// Vectorized<T>::size() values of T as kParts<T> vectors of at::opmath_type<T>:
// one for float and double, two (in float) for float16 and bfloat16. Code on
// chunks serves all four types.
template <typename T>
constexpr int kParts = kReduced<T> ? 2 : 1;
template <typename T>
using AccVec = Vectorized<at::opmath_type<T>>;
template <typename T>
using Chunk = std::array<AccVec<T>, kParts<T>>;

// Types with chunk code, and the values of T in a chunk.
template <typename T>
constexpr bool kChunked = kVectorized<T> || kReduced<T>;
template <typename T>
constexpr int64_t kChunk = Vectorized<T>::size();

template <typename T>
Chunk<T> load_chunk(const T* p) {
  if constexpr (kReduced<T>) {
    const auto [a, b] = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p));
    return {a, b};
  } else {
    return {Vectorized<T>::loadu(p)};
  }
}

template <typename T>
void store_chunk(T* p, const Chunk<T>& v) {
  if constexpr (kReduced<T>) {
    at::vec::convert_from_float<T>(v[0], v[1]).store(p);
  } else {
    v[0].store(p);
  }
}

// A chunk's worth of opmath values (per-pixel statistics) at p.
template <typename T>
Chunk<T> load_acc_chunk(const at::opmath_type<T>* p) {
  Chunk<T> v;
  for (int i = 0; i < kParts<T>; ++i) v[i] = AccVec<T>::loadu(p + i * AccVec<T>::size());
  return v;
}

template <typename T>
void store_acc_chunk(at::opmath_type<T>* p, const Chunk<T>& v) {
  for (int i = 0; i < kParts<T>; ++i) v[i].store(p + i * AccVec<T>::size());
}

// out[k] = a * in[k] for k < n, the vector part of a scaled copy; returns where
// it stopped, for the scalar tail.
template <typename T>
int64_t scale_vectorized(const T* in, T* out, int64_t n, at::opmath_type<T> a) {
  int64_t k = 0;
  if constexpr (kChunked<T>) {
    for (; k + kChunk<T> <= n; k += kChunk<T>) {
      auto v = load_chunk(in + k);
      for (auto& part : v) part = part * AccVec<T>(a);
      store_chunk(out + k, v);
    }
  }
  return k;
}

// The layout of `x` under the contract (NCHW-contiguous or channels-last contiguous).
inline at::MemoryFormat layout_of(const at::Tensor& x, const char* name) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast), "fastgan_cpu: ", name,
              " must be contiguous or channels-last contiguous, got sizes ", x.sizes(), " and strides ",
              x.strides());
  return at::MemoryFormat::ChannelsLast;
}

// A second input of a call must share the first one's layout and dtype.
inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, at::MemoryFormat fmt) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastgan_cpu: ", name, " has dtype ", t.scalar_type(),
              ", expected ", ref.scalar_type());
  TORCH_CHECK(t.is_contiguous(fmt), "fastgan_cpu: ", name, " must be laid out like the other inputs (",
              fmt == at::MemoryFormat::Contiguous ? "contiguous" : "channels-last", "), got strides ",
              t.strides());
}

// Tasks of at::parallel_for hold at least this many elements: smaller work
// runs inline, as the OpenMP fork costs more than it saves.
constexpr int64_t kGrainElems = 32768;

inline int64_t grain(int64_t elems_per_item) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_item));
}

// The 2x2 ops (fade_in, blend_reals) see an [N, C, H, W] tensor at the low
// resolution H x W as `rows` rows of `len` = W * pix values, where a pixel holds
// pix = 1 value in NCHW (rows = N*C*H) and its pix = C channels in channels-last
// (rows = N*H). Low row r covers the high-resolution rows 2r and 2r+1, each of
// 2 * len values; both layouts then share one kernel. The kernels write one
// high row per loop: storing into two rows at once ran twice as slow on this
// machine as one row after the other.
struct RowPairs {
  int64_t rows, len, pix;
};

inline RowPairs row_pairs(int64_t n, int64_t c, int64_t h, int64_t w, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::Contiguous) return {n * c * h, w, 1};
  return {n * h, w * c, c};
}

// Channels-last rows run plain loops over (pixel, channel) that the compiler
// vectorizes (hence __restrict__); a compile-time channel count vectorizes far
// better, so the RGB case C = 3 gets its own instance (2x to 8x faster than a
// runtime C of 3 here). NCHW rows run at::vec loops, then these for the tail.
using Three = std::integral_constant<int64_t, 3>;
using One = std::integral_constant<int64_t, 1>;

// Low pixels [w0, w1) of the up-sampling blend: o = b * l[pixel / 2] + a * h, per channel.
template <typename L, typename T, typename Cn>
void upsample_blend_pixels(const L* __restrict__ l, const T* __restrict__ h, T* __restrict__ o, int64_t w0,
                           int64_t w1, Cn c, at::opmath_type<T> b, at::opmath_type<T> a) {
  using acc_t = at::opmath_type<T>;
  for (int64_t w = w0; w < w1; ++w) {
    for (int64_t j = 0; j < 2; ++j) {
      for (int64_t ch = 0; ch < c; ++ch) {
        const int64_t k = (2 * w + j) * c + ch;
        o[k] = static_cast<T>(b * static_cast<acc_t>(l[w * c + ch]) + a * static_cast<acc_t>(h[k]));
      }
    }
  }
}

// One high row of the up-sampling blend: o[k] = b * l[low value above k] + a * h[k].
// l may be float while h and o are a reduced type (blend_reals keeps its means in float).
template <typename L, typename T>
void upsample_blend_row(const L* l, const T* h, T* o, const RowPairs& g, at::opmath_type<T> b,
                        at::opmath_type<T> a) {
  if (g.pix == 3) return upsample_blend_pixels(l, h, o, 0, g.len / 3, Three{}, b, a);
  if (g.pix > 1) return upsample_blend_pixels(l, h, o, 0, g.len / g.pix, g.pix, b, a);
  int64_t w = 0;
  if constexpr (kVectorized<T> && std::is_same_v<L, T>) {
    // NCHW: each low value feeds two adjacent outputs, duplicated by interleave2.
    using Vec = Vectorized<T>;
    constexpr int64_t V = Vec::size();
    const Vec va(a), vb(b);
    for (; w + V <= g.len; w += V) {
      const Vec lv = vb * Vec::loadu(l + w);
      const auto [u0, u1] = at::vec::interleave2(lv, lv);
      at::vec::fmadd(va, Vec::loadu(h + 2 * w), u0).store(o + 2 * w);
      at::vec::fmadd(va, Vec::loadu(h + 2 * w + V), u1).store(o + 2 * w + V);
    }
  } else if constexpr (kReduced<T>) {
    // The same in float: FVec::size() low values feed one Vectorized<T> of outputs.
    constexpr int64_t V = FVec::size();
    const FVec va(a), vb(b);
    for (; w + V <= g.len; w += V) {
      const FVec lv = vb * load_floats(l + w);
      const auto [u0, u1] = at::vec::interleave2(lv, lv);
      const auto hv = load_chunk(h + 2 * w);
      store_chunk(o + 2 * w, Chunk<T>{at::vec::fmadd(va, hv[0], u0), at::vec::fmadd(va, hv[1], u1)});
    }
  }
  upsample_blend_pixels(l, h, o, w, g.len, One{}, b, a);
}

// Low pixels [w0, w1) of the 2x2 sum pooling of high rows h0, h1, scaled by s.
template <typename T, typename O, typename Cn>
void pool_pixels(const T* __restrict__ h0, const T* __restrict__ h1, O* __restrict__ o, int64_t w0, int64_t w1,
                 Cn c, at::opmath_type<T> s) {
  using acc_t = at::opmath_type<T>;
  for (int64_t w = w0; w < w1; ++w) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t i = 2 * w * c + ch;
      const acc_t left = static_cast<acc_t>(h0[i]) + static_cast<acc_t>(h1[i]);
      const acc_t right = static_cast<acc_t>(h0[i + c]) + static_cast<acc_t>(h1[i + c]);
      o[w * c + ch] = static_cast<O>(s * (left + right));
    }
  }
}

// One low row of the 2x2 sum pooling of high rows h0, h1, scaled: o[m] = s * block sum.
template <typename T, typename O>
void pool_row(const T* h0, const T* h1, O* o, const RowPairs& g, at::opmath_type<T> s) {
  if (g.pix == 3) return pool_pixels(h0, h1, o, 0, g.len / 3, Three{}, s);
  if (g.pix > 1) return pool_pixels(h0, h1, o, 0, g.len / g.pix, g.pix, s);
  int64_t w = 0;
  if constexpr (kVectorized<T>) {
    // NCHW: add the rows, then deinterleave2 splits the sums into the blocks' left and right values.
    using Vec = Vectorized<T>;
    constexpr int64_t V = Vec::size();
    const Vec vs(s);
    for (; w + V <= g.len; w += V) {
      const Vec s0 = Vec::loadu(h0 + 2 * w) + Vec::loadu(h1 + 2 * w);
      const Vec s1 = Vec::loadu(h0 + 2 * w + V) + Vec::loadu(h1 + 2 * w + V);
      const auto [left, right] = at::vec::deinterleave2(s0, s1);
      (vs * (left + right)).store(o + w);
    }
  } else if constexpr (kReduced<T>) {
    // The same in float: one Vectorized<T> of each row gives FVec::size() outputs.
    constexpr int64_t V = FVec::size();
    const FVec vs(s);
    for (; w + V <= g.len; w += V) {
      const auto top = load_chunk(h0 + 2 * w), bottom = load_chunk(h1 + 2 * w);
      const auto [left, right] = at::vec::deinterleave2(top[0] + bottom[0], top[1] + bottom[1]);
      store_floats(o + w, vs * (left + right));
    }
  }
  pool_pixels(h0, h1, o, w, g.len, One{}, s);
}

}  // namespace fastgan::cpu
