// Plain matrix products for the CPU kernels: oneDNN's matmul where it applies, else at::mm (MKL).
#pragma once

#include <ATen/ATen.h>

namespace fastgan::cpu {

// a @ b for 2-D a [M, K] and b [K, N], a new contiguous [M, N].
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b);

}  // namespace fastgan::cpu
