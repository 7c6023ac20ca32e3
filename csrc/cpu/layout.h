// Layout conversion between NCHW and channels-last for the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

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

// dst[q][p] = src[p][q] for p < rows, q < cols, elements of elem_size bytes (2, 4 or 8), in
// parallel blocks of register tiles.
void transpose(const void* src, void* dst, int64_t rows, int64_t cols, int64_t elem_size);

// The same on one thread: for a plane that fits in cache, inside a parallel loop.
void transpose_plane(const void* src, void* dst, int64_t rows, int64_t cols, int64_t elem_size);

}  // namespace fastgan::cpu
