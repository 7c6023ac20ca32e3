// Layout conversion between NCHW and channels-last for the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <vector>

#include "common.h"

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace fastgan::cpu {

#if defined(CPU_CAPABILITY_AVX512)
// A full 16 x 16 float tile in AVX-512 registers, the shuffles of ATen's transpose_mxn<float>
// unrolled at compile time: ATen's takes its sizes at run time and ran 2x slower here (on one
// thread, the 4x4 block's 512x256x4x4 weight to channels-last: 0.62 against 1.21 ms).
inline void transpose_16x16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 8; ++i) {  // interleave 32-bit elements of row pairs
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // then 64-bit pairs
    const auto lo = [&](int a, int b) {
      return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[a]), _mm512_castps_pd(t[b])));
    };
    const auto hi = [&](int a, int b) {
      return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[a]), _mm512_castps_pd(t[b])));
    };
    r[4 * i] = lo(4 * i, 4 * i + 2);
    r[4 * i + 1] = hi(4 * i, 4 * i + 2);
    r[4 * i + 2] = lo(4 * i + 1, 4 * i + 3);
    r[4 * i + 3] = hi(4 * i + 1, 4 * i + 3);
  }
  for (int i = 0; i < 2; ++i) {  // then 128-bit lanes
    for (int k = 0; k < 4; ++k) {
      t[8 * i + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + k + 4], 0x88);
      t[8 * i + k + 4] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + k + 4], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    _mm512_storeu_ps(dst + i * ld_dst, _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88));
    _mm512_storeu_ps(dst + (i + 8) * ld_dst, _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd));
  }
}
#endif

// The largest tile transpose_tile takes, rows and columns.
constexpr int64_t kTransposeTile = 16;

// dst[q * ld_dst + p] = src[p * ld_src + q] for p < m <= 16, q < n <= 16, in registers: full
// float tiles by transpose_16x16, full 2-byte ones by ATen's compile-time 16 x 16 kernel, the rest
// by its run-time transpose_mxn (AVX-512 shuffles for float and bfloat16, a scalar loop otherwise).
template <typename T>
inline void transpose_tile(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t m, int64_t n) {
  if (m == 16 && n == 16) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) return transpose_16x16(src, ld_src, dst, ld_dst);
#endif
    if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>)
      return at::vec::transpose_mxn<T, 16, 16>(src, ld_src, dst, ld_dst);
  }
  at::vec::transpose_mxn<T>(src, ld_src, dst, ld_dst, static_cast<int>(m), static_cast<int>(n));
}

// `t` dense in layout `fmt`: t itself when it already is; a blocked transpose for a dense 4-D
// tensor in the other layout; else t.contiguous(fmt).
at::Tensor dense_as(const at::Tensor& t, at::MemoryFormat fmt);

// out (same sizes and dtype) = t, by the same blocked transpose when their dense layouts differ.
void dense_into(const at::Tensor& t, const at::Tensor& out);

// dst[q][p] = src[p][q] for p < rows, q < cols, elements of elem_size bytes (2, 4 or 8), in
// parallel blocks of register tiles.
void transpose(const void* src, void* dst, int64_t rows, int64_t cols, int64_t elem_size);

// The same on one thread: for a plane that fits in cache, inside a parallel loop.
void transpose_plane(const void* src, void* dst, int64_t rows, int64_t cols, int64_t elem_size);

// NCHW maps of fewer pixels than two vector chunks (a 4x4 map is half a bfloat16 chunk, one float
// chunk): a per-pixel kernel over rows of C contiguous values runs on each sample's [C, S] block
// transposed into S rows in a buffer, and its output is transposed back (in cache), rather than
// vectorizing along pixels that fill a vector once or not at all. x (and g, when not null) are read, out written;
// row(g_row or nullptr, x_row, out_row) computes one pixel. The transposes: register tiles from 8
// pixels, element by element below (2x2 maps ran faster so: tiles of 4 columns are mostly empty).
template <typename T, typename Row>
void sample_rows(const T* g, const T* x, T* out, int64_t n, int64_t c, int64_t s, const Row& row) {
  const int64_t len = c * s;
  const auto transposed = [&](const T* src, T* dst, int64_t rows, int64_t cols) {
    if (s >= 8) return transpose_plane(src, dst, rows, cols, static_cast<int64_t>(sizeof(T)));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t q = 0; q < cols; ++q) dst[q * rows + r] = src[r * cols + q];
    }
  };
  at::parallel_for(0, n, grain(len), [&](int64_t begin, int64_t end) {
    std::vector<T> xt(len), gt(g ? len : 0), ot(len);
    for (int64_t i = begin; i < end; ++i) {
      transposed(x + i * len, xt.data(), c, s);
      if (g) transposed(g + i * len, gt.data(), c, s);
      for (int64_t p = 0; p < s; ++p) row(g ? gt.data() + p * c : nullptr, xt.data() + p * c, ot.data() + p * c);
      transposed(ot.data(), out + i * len, s, c);
    }
  });
}

}  // namespace fastgan::cpu
