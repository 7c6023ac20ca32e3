// A per-thread scratch buffer for the CPU kernels' large temporaries.
#pragma once

#include <ATen/ATen.h>

namespace fastgan::cpu {

// A 1-D tensor of `numel` elements of options' dtype, taken from a buffer this thread keeps
// between calls (grown when too small, reallocated on a dtype change). The tensor is valid until
// the next scratch_buffer call on the same thread: a kernel uses it for one temporary that dies
// before it returns, never for anything it returns.
at::Tensor scratch_buffer(int64_t numel, const at::TensorOptions& options);

}  // namespace fastgan::cpu
