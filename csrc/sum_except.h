// The bias gradient's reduction, shared by the C++ autograd (autograd.h) and the CUDA kernel op
// bias_act_backward_bias: the sum of t over all dims but `dim`, times scale, accumulated and scaled in
// float32 (float64 for float64) and rounded to t's dtype once.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace fastgan {

inline at::Tensor sum_except(const at::Tensor& t, int64_t dim, double scale) {
  const auto acc = t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d != dim) dims.push_back(d);
  }
  at::Tensor s = dims.empty() ? t.to(acc, /*non_blocking=*/false, /*copy=*/true) : at::sum(t, dims, false, acc);
  if (scale != 1) s = s * scale;
  return s.to(t.scalar_type());
}

}  // namespace fastgan
