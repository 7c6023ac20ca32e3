// Layout conversion between NCHW and channels-last for the CPU kernels.
#pragma once

#include <ATen/ATen.h>

namespace fastgan::cpu {

// `t` dense in layout `fmt`: t itself when it already is; a blocked transpose for a dense 4-D
// tensor in the other layout; else t.contiguous(fmt).
at::Tensor dense_as(const at::Tensor& t, at::MemoryFormat fmt);

// dst[q][p] = src[p][q] for p < rows, q < cols, elements of elem_size bytes (2, 4 or 8), in
// parallel blocks of register tiles.
void transpose(const void* src, void* dst, int64_t rows, int64_t cols, int64_t elem_size);

// The same on one thread: for a plane that fits in cache, inside a parallel loop.
void transpose_plane(const void* src, void* dst, int64_t rows, int64_t cols, int64_t elem_size);

}  // namespace fastgan::cpu
