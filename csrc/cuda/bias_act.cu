// SPEC 3, StyleGAN2's bias_act with the equalized layers' runtime scales:
//   y      = clamp(lrelu(x * x_mul + bias[c] * b_mul, slope) * gain, -clamp, clamp)
//   grad_x = grad * x_mul * gain * (y > 0 ? 1 : slope) * (clamp < 0 || |y| < clamp)
// Both elementwise, grid-stride. The bias index of element i is (i / inner) % C,
// inner = the product of the sizes after dim (1 in channels-last).
#include "bias_act.cuh"
#include "sum_except.h"

namespace fastgan::cuda {
namespace {

template <typename scalar_t, typename index_t, bool kBias>
__global__ void __launch_bounds__(kThreads)
    bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b, scalar_t* __restrict__ y,
                    index_t n, index_t C, index_t inner, at::opmath_type<scalar_t> b_mul,
                    Epilogue<at::opmath_type<scalar_t>> ep) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t stride = index_t(gridDim.x) * index_t(blockDim.x);
  for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < n; i += stride) {
    acc_t v = static_cast<acc_t>(x[i]) * ep.x_mul;
    if constexpr (kBias) v += static_cast<acc_t>(b[(i / inner) % C]) * b_mul;
    y[i] = static_cast<scalar_t>(ep(v));
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    bias_act_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ y,
                             scalar_t* __restrict__ out, index_t n, Epilogue<at::opmath_type<scalar_t>> ep) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t stride = index_t(gridDim.x) * index_t(blockDim.x);
  for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < n; i += stride) {
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(g[i]) * ep.factor(static_cast<acc_t>(y[i])));
  }
}

// Calls f(index_t{}) with 32-bit indices when they suffice.
template <typename F>
void dispatch_index(bool use_int32, F&& f) {
  use_int32 ? f(int32_t{}) : f(int64_t{});
}

at::Tensor bias_act_cuda(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t dim, double slope,
                         double gain, double x_mul, double b_mul, double clamp) {
  const char* op = "bias_act";
  check_cuda(x, op, "x");
  TORCH_CHECK(x.dim() >= 1 && dim >= 0 && dim < x.dim(), "fastgan_cuda::bias_act: dim ", dim,
              " out of range for x of sizes ", x.sizes());
  const at::MemoryFormat fmt = shared_layout(op, {x});
  TORCH_CHECK(fmt == at::MemoryFormat::Contiguous || dim == 1,
              "fastgan_cuda::bias_act: a channels-last x takes its bias along dim 1, got dim ", dim);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_same(*bias, "bias", x, "x", op);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(dim) && bias->is_contiguous(),
                "fastgan_cuda::bias_act: bias must be a contiguous vector of x.size(dim) = ", x.size(dim),
                " values, got sizes ", bias->sizes());
  }
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(fmt));
  const int64_t n = x.numel();
  if (n == 0) return y;
  int64_t inner = 1;
  if (fmt == at::MemoryFormat::Contiguous) {
    for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
  }
  const unsigned grid = grid_size(n, kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "fastgan_cuda::bias_act", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ep = make_epilogue<scalar_t>(x_mul, slope, gain, clamp);
    const scalar_t* bp = has_bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    dispatch_index(fits_int32(n, grid, kThreads), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto stream = at::cuda::getCurrentCUDAStream();
      if (has_bias) {
        bias_act_kernel<scalar_t, index_t, true><<<grid, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), bp, y.mutable_data_ptr<scalar_t>(), index_t(n), index_t(x.size(dim)),
            index_t(inner), static_cast<acc_t>(b_mul), ep);
      } else {
        bias_act_kernel<scalar_t, index_t, false><<<grid, kThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), bp, y.mutable_data_ptr<scalar_t>(), index_t(n), index_t(1), index_t(1),
            static_cast<acc_t>(b_mul), ep);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

at::Tensor bias_act_backward_cuda(const at::Tensor& grad, const at::Tensor& y, double slope, double gain,
                                  double x_mul, double clamp) {
  const char* op = "bias_act_backward";
  check_cuda(y, op, "y");
  check_cuda(grad, op, "grad");
  check_same(grad, "grad", y, "y", op);
  TORCH_CHECK(grad.sizes() == y.sizes(), "fastgan_cuda::bias_act_backward: grad has shape ", grad.sizes(),
              " but y has shape ", y.sizes());
  const at::MemoryFormat fmt = shared_layout(op, {grad, y});
  c10::cuda::CUDAGuard guard(y.device());
  at::Tensor out = at::empty(y.sizes(), y.options().memory_format(fmt));
  const int64_t n = y.numel();
  if (n == 0) return out;
  const unsigned grid = grid_size(n, kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, y.scalar_type(), "fastgan_cuda::bias_act_backward", [&] {
    const auto ep = make_epilogue<scalar_t>(x_mul, slope, gain, clamp);
    dispatch_index(fits_int32(n, grid, kThreads), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      bias_act_backward_kernel<scalar_t, index_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          grad.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          index_t(n), ep);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

// The elementwise kernel, then ATen's reduction for the bias (two launches, as before this op): a
// kernel that also reduces per channel is for a session that can run it on a GPU.
std::tuple<at::Tensor, at::Tensor> bias_act_backward_bias_cuda(const at::Tensor& grad, const at::Tensor& y,
                                                               int64_t dim, double slope, double gain, double x_mul,
                                                               double b_scale, double clamp) {
  TORCH_CHECK(y.dim() >= 1 && dim >= 0 && dim < y.dim(), "fastgan_cuda::bias_act_backward_bias: dim ", dim,
              " out of range for y of sizes ", y.sizes());
  TORCH_CHECK(y.is_contiguous() || dim == 1,
              "fastgan_cuda::bias_act_backward_bias: a channels-last y takes its bias along dim 1, got dim ", dim);
  at::Tensor grad_x = bias_act_backward_cuda(grad, y, slope, gain, x_mul, clamp);
  return {grad_x, fastgan::sum_except(grad_x, dim, b_scale)};
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("bias_act", &fastgan::cuda::bias_act_cuda);
  m.impl("bias_act_backward", &fastgan::cuda::bias_act_backward_cuda);
  m.impl("bias_act_backward_bias", &fastgan::cuda::bias_act_backward_bias_cuda);
}
