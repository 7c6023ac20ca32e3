// Layout conversion between NCHW and channels-last for the CPU kernels.
#pragma once

#include <ATen/ATen.h>

namespace fastgan::cpu {

// `t` dense in layout `fmt`: t itself when it already is; a blocked transpose for a dense 4-D
// tensor in the other layout; else t.contiguous(fmt).
at::Tensor dense_as(const at::Tensor& t, at::MemoryFormat fmt);

}  // namespace fastgan::cpu
