// NCHW <-> channels-last as a transpose per sample, [C, H*W] <-> [H*W, C], in 16 x 16 tiles done
// in vector registers. PyTorch's strided copy_ gathers element by element: measured here (AMD EPYC,
// 2 threads) ~6.5 ms for a 64x64x32x32 float32 tensor NCHW -> channels-last, the tiles 3-4 ms out
// of cache; bn_relu_backward instead transposes one sample at a time into a buffer that stays in
// L2 (transpose_plane), 1.5-2 ms over its channels-last time for that tensor.
#include "layout.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace fastgan::cpu {
namespace {

constexpr int64_t kTile = 16;

// dst[q][p] = src[p][q] for p < rows, q < cols: bands of 16 source rows, each a row of 16 x 16
// tiles transposed in registers by at::vec::transpose_mxn (AVX-512 shuffles for float and
// bfloat16; other types and ISAs get its scalar loop).
template <typename E>
void transpose_band(const E* src, E* dst, int64_t rows, int64_t cols, int64_t p0) {
  const int m = static_cast<int>(std::min(kTile, rows - p0));
  for (int64_t q0 = 0; q0 < cols; q0 += kTile) {
    at::vec::transpose_mxn<E>(src + p0 * cols + q0, cols, dst + q0 * rows + p0, rows, m,
                              static_cast<int>(std::min(kTile, cols - q0)));
  }
}

// The same on n planes in parallel, tasks of kBlock x kBlock values: for a whole tensor (out of
// cache) these ran up to 2x faster here than tasks of whole bands.
constexpr int64_t kBlock = 64;

template <typename E>
void transpose_blocks(const E* src, E* dst, int64_t n, int64_t rows, int64_t cols) {
  const int64_t rb = (rows + kBlock - 1) / kBlock, cb = (cols + kBlock - 1) / kBlock;
  at::parallel_for(0, n * rb * cb, grain(kBlock * kBlock), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / (rb * cb), r0 = t / cb % rb * kBlock, c0 = t % cb * kBlock;
      const E* s = src + i * rows * cols + c0;
      E* d = dst + i * rows * cols + c0 * rows;
      const int64_t block_cols = std::min(kBlock, cols - c0);
      for (int64_t p0 = r0; p0 < std::min(rows, r0 + kBlock); p0 += kTile) {
        // A band of the block: the sub-matrix of block_cols columns (leading dimensions kept).
        const int m = static_cast<int>(std::min(kTile, rows - p0));
        for (int64_t q0 = 0; q0 < block_cols; q0 += kTile) {
          at::vec::transpose_mxn<E>(s + p0 * cols + q0, cols, d + q0 * rows + p0, rows, m,
                                    static_cast<int>(std::min(kTile, block_cols - q0)));
        }
      }
    }
  });
}

// Element types by size: these move bits only (loads, shuffles, stores), so any 2-byte dtype goes
// as bfloat16 and any 4-byte one as float.
template <typename F>
void by_size(int64_t elem_size, const F& f) {
  switch (elem_size) {
    case 2: return f(c10::BFloat16{});
    case 4: return f(float{});
    case 8: return f(double{});
    default: TORCH_CHECK(false, "fastgan_cpu: no transpose for ", elem_size, "-byte elements");
  }
}

}  // namespace

void transpose_plane(const void* src, void* dst, int64_t rows, int64_t cols, int64_t elem_size) {
  by_size(elem_size, [&](auto e) {
    using E = decltype(e);
    for (int64_t p0 = 0; p0 < rows; p0 += kTile)
      transpose_band(static_cast<const E*>(src), static_cast<E*>(dst), rows, cols, p0);
  });
}

at::Tensor dense_as(const at::Tensor& t, at::MemoryFormat fmt) {
  if (t.is_contiguous(fmt)) return t;
  const auto cl = at::MemoryFormat::ChannelsLast;
  const bool to_cl = fmt == cl && t.is_contiguous(), to_nchw = fmt == at::MemoryFormat::Contiguous && t.dim() == 4 &&
                                                                     t.is_contiguous(cl);
  if (t.dim() != 4 || !(to_cl || to_nchw) || t.is_complex()) return t.contiguous(fmt);
  const int64_t size = t.element_size();
  if (size != 2 && size != 4 && size != 8) return t.contiguous(fmt);
  auto out = at::empty(t.sizes(), t.options().memory_format(fmt));
  const int64_t c = t.size(1), s = t.size(2) * t.size(3);
  // [C, S] -> [S, C] per sample to channels-last, [S, C] -> [C, S] back.
  by_size(size, [&](auto e) {
    using E = decltype(e);
    transpose_blocks(static_cast<const E*>(t.const_data_ptr()), static_cast<E*>(out.mutable_data_ptr()), t.size(0),
                     to_cl ? c : s, to_cl ? s : c);
  });
  return out;
}

}  // namespace fastgan::cpu
