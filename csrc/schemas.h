// Schemas of the kernel-level ops. Both extensions define the same ops in their
// own namespace: `fastgan_cpu::*` (CPU dispatch key) and `fastgan_cuda::*` (CUDA).
// The public, autograd-aware ops live in Python as `fastgan::*` and call these.
//
// Layout contract: 4-D inputs arrive either contiguous (NCHW) or channels-last
// contiguous (NHWC) -- `x.is_contiguous()` tells which -- and all tensor inputs
// of one call share that layout; outputs are allocated in the same layout.
#pragma once

#include <torch/library.h>

namespace fastgan {

inline void define_kernel_schemas(torch::Library& m) {
  // SPEC 4: y = x * rsqrt(mean over dim 1 of x^2 + eps), x of rank >= 2.
  m.def("pixel_norm(Tensor x, float eps) -> Tensor");
  // grad_x = r * g - x * r^3 * sum_c(g * x) / C, r = rsqrt(mean_c(x^2) + eps).
  m.def("pixel_norm_backward(Tensor grad, Tensor x, float eps) -> Tensor");
  // SPEC 6: out = (1 - alpha) * upsample_nearest_2x(rgb_low) + alpha * rgb_high.
  m.def("fade_in(Tensor rgb_low, Tensor rgb_high, float alpha) -> Tensor");
  // (grad_low, grad_high) = ((1 - alpha) * sum_pool_2x2(grad), alpha * grad).
  m.def("fade_in_backward(Tensor grad, float alpha) -> (Tensor, Tensor)");
  // SPEC 6: out = (1 - alpha) * upsample_nearest_2x(avg_pool_2x2(x)) + alpha * x;
  // self-adjoint, so it is its own backward.
  m.def("blend_reals(Tensor x, float alpha) -> Tensor");
}

}  // namespace fastgan
