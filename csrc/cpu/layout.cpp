// NCHW <-> channels-last as a transpose per sample, [C, H*W] <-> [H*W, C], in 16 x 16 tiles done
// in vector registers. PyTorch's strided copy_ gathers element by element: measured here (AMD EPYC,
// 2 threads) 6-7 ms for a 64x64x32x32 float32 tensor NCHW -> channels-last, the tiles 1.6-2.4 ms
// out of cache (3.4-3.8 with ATen's run-time transpose_mxn, see transpose_tile); bn_relu_backward
// instead transposes one sample at a time into a buffer that stays in L2 (transpose_plane).
#include "layout.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace fastgan::cpu {
namespace {

constexpr int64_t kTile = kTransposeTile;

// dst[q * ld_dst + p] = src[p * ld_src + q] for p < m <= 16 rows, q < cols: a band of 16 x 16
// tiles, each transposed in registers (transpose_tile).
template <typename E>
void transpose_band(const E* src, int64_t ld_src, E* dst, int64_t ld_dst, int64_t m, int64_t cols) {
  for (int64_t q0 = 0; q0 < cols; q0 += kTile) {
    transpose_tile<E>(src + q0, ld_src, dst + q0 * ld_dst, ld_dst, m, std::min(kTile, cols - q0));
  }
}

// [rows, cols] -> [cols, rows] on n planes in parallel, tasks of kBlock x kBlock values: for a
// whole tensor (out of cache) these ran up to 2x faster here than tasks of whole bands.
constexpr int64_t kBlock = 64;

template <typename E>
void transpose_blocks(const E* src, E* dst, int64_t n, int64_t rows, int64_t cols) {
  const int64_t rb = (rows + kBlock - 1) / kBlock, cb = (cols + kBlock - 1) / kBlock;
  at::parallel_for(0, n * rb * cb, grain(kBlock * kBlock), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / (rb * cb), r0 = t / cb % rb * kBlock, c0 = t % cb * kBlock;
      const E* s = src + i * rows * cols + c0;
      E* d = dst + i * rows * cols + c0 * rows;
      for (int64_t p0 = r0; p0 < std::min(rows, r0 + kBlock); p0 += kTile) {
        transpose_band(s + p0 * cols, cols, d + p0, rows, std::min(kTile, rows - p0), std::min(kBlock, cols - c0));
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
    const auto* s = static_cast<const E*>(src);
    auto* d = static_cast<E*>(dst);
    for (int64_t p0 = 0; p0 < rows; p0 += kTile) {
      transpose_band(s + p0 * cols, cols, d + p0, rows, std::min(kTile, rows - p0), cols);
    }
  });
}

void transpose(const void* src, void* dst, int64_t rows, int64_t cols, int64_t elem_size) {
  by_size(elem_size, [&](auto e) {
    using E = decltype(e);
    transpose_blocks(static_cast<const E*>(src), static_cast<E*>(dst), 1, rows, cols);
  });
}

namespace {

// Whether t (4-D, dense in one layout) can be transposed into the other layout, fmt, in tiles.
bool swappable(const at::Tensor& t, at::MemoryFormat fmt) {
  const int64_t size = t.element_size();
  return t.dim() == 4 && (size == 2 || size == 4 || size == 8) &&
         (fmt == at::MemoryFormat::ChannelsLast ? t.is_contiguous()
                                                : fmt == at::MemoryFormat::Contiguous &&
                                                      t.is_contiguous(at::MemoryFormat::ChannelsLast));
}

// [C, S] -> [S, C] per sample to channels-last, [S, C] -> [C, S] back, into out.
void swap_into(const at::Tensor& t, const at::Tensor& out, bool to_cl) {
  const int64_t c = t.size(1), s = t.size(2) * t.size(3);
  by_size(t.element_size(), [&](auto e) {
    using E = decltype(e);
    transpose_blocks(static_cast<const E*>(t.const_data_ptr()), static_cast<E*>(out.mutable_data_ptr()), t.size(0),
                     to_cl ? c : s, to_cl ? s : c);
  });
}

}  // namespace

at::Tensor dense_as(const at::Tensor& t, at::MemoryFormat fmt) {
  if (t.is_contiguous(fmt)) return t;
  if (!swappable(t, fmt)) return t.contiguous(fmt);
  auto out = at::empty(t.sizes(), t.options().memory_format(fmt));
  swap_into(t, out, fmt == at::MemoryFormat::ChannelsLast);
  return out;
}

void dense_into(const at::Tensor& t, const at::Tensor& out) {
  const auto fmt = out.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
  if (t.is_contiguous(fmt) || !swappable(t, fmt) || !out.is_contiguous(fmt)) {
    out.copy_(t);
    return;
  }
  swap_into(t, out, fmt == at::MemoryFormat::ChannelsLast);
}

namespace {

at::Tensor to_layout(const at::Tensor& t, bool channels_last) {
  TORCH_CHECK(t.dim() == 4, "fastgan_cpu::to_layout: t must be 4-D, got ", t.sizes());
  return dense_as(t, channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) { m.impl("to_layout", &to_layout); }

}  // namespace fastgan::cpu
