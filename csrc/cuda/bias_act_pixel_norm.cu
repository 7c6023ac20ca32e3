// SPEC 3 + 4, the ProGAN generator's epilogue in one pass:
//   y      = a * r,  a = lrelu(x + bias[c], slope) * gain,  r = rsqrt(mean_c(a^2) + eps)
//   grad_x = M * (r * g - a * r^3 * sum_c(g * a) / C),  M = gain * (a > 0 ? 1 : slope)
// a is recomputed in the second pass, never stored. x is viewed as [N, C, S]:
// - cols: NCHW with S > 1: one thread per pixel walks its channels (adjacent
//   threads read adjacent pixels: coalesced); the second pass re-reads from L2.
// - rows: NHWC, or S == 1: one warp per row of C contiguous values, reduced with shuffles.
#include "bias_act.cuh"

namespace fastgan::cuda {
namespace {

template <typename scalar_t, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    cols_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                scalar_t* __restrict__ out, int64_t P, int64_t C, int64_t S, Epilogue<at::opmath_type<scalar_t>> ep,
                at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t p = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; p < P; p += stride) {
    const int64_t n = p / S;
    const int64_t base = n * C * S + (p - n * S);  // x[n, 0, s]
    acc_t ss = 0, sg = 0;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t a = ep(static_cast<acc_t>(x[base + c * S]) + static_cast<acc_t>(b[c]));
      ss += a * a;
      if constexpr (kBackward) sg += static_cast<acc_t>(g[base + c * S]) * a;
    }
    const acc_t r = acc_rsqrt(ss / static_cast<acc_t>(C) + eps);
    const acc_t k = r * r * r * sg / static_cast<acc_t>(C);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = base + c * S;
      const acc_t a = ep(static_cast<acc_t>(x[i]) + static_cast<acc_t>(b[c]));
      if constexpr (kBackward) {
        out[i] = static_cast<scalar_t>((r * static_cast<acc_t>(g[i]) - k * a) * ep.factor(a));
      } else {
        out[i] = static_cast<scalar_t>(a * r);
      }
    }
  }
}

// The loop bound is warp-uniform so that every lane reaches the full-mask shuffles.
template <typename scalar_t, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                scalar_t* __restrict__ out, int64_t R, int64_t C, Epilogue<at::opmath_type<scalar_t>> ep,
                at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t warp = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = int64_t{gridDim.x} * blockDim.x / 32;
  for (int64_t row = warp; row < R; row += warps) {
    const scalar_t* xr = x + row * C;
    const scalar_t* gr = kBackward ? g + row * C : nullptr;
    scalar_t* o = out + row * C;
    acc_t ss = 0, sg = 0;
    for (int64_t c = lane; c < C; c += 32) {
      const acc_t a = ep(static_cast<acc_t>(xr[c]) + static_cast<acc_t>(b[c]));
      ss += a * a;
      if constexpr (kBackward) sg += static_cast<acc_t>(gr[c]) * a;
    }
#pragma unroll
    for (int m = 16; m > 0; m /= 2) {
      ss += __shfl_xor_sync(0xffffffffu, ss, m);
      if constexpr (kBackward) sg += __shfl_xor_sync(0xffffffffu, sg, m);
    }
    const acc_t r = acc_rsqrt(ss / static_cast<acc_t>(C) + eps);
    const acc_t k = r * r * r * sg / static_cast<acc_t>(C);
    for (int64_t c = lane; c < C; c += 32) {  // this row was just read: L1/L2 hits
      const acc_t a = ep(static_cast<acc_t>(xr[c]) + static_cast<acc_t>(b[c]));
      if constexpr (kBackward) {
        o[c] = static_cast<scalar_t>((r * static_cast<acc_t>(gr[c]) - k * a) * ep.factor(a));
      } else {
        o[c] = static_cast<scalar_t>(a * r);
      }
    }
  }
}

// grad undefined: the forward.
template <bool kBackward>
at::Tensor bias_act_pixel_norm_impl(const char* op, const at::Tensor& grad, const at::Tensor& x,
                                    const at::Tensor& bias, double slope, double gain, double eps) {
  check_cuda(x, op, "x");
  check_cuda(bias, op, "bias");
  check_same(bias, "bias", x, "x", op);
  TORCH_CHECK(x.dim() >= 2, "fastgan_cuda::", op, ": x must have at least 2 dimensions, got shape ", x.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(1) && bias.is_contiguous(), "fastgan_cuda::", op,
              ": bias must be a contiguous vector of x.size(1) = ", x.size(1), " values, got sizes ", bias.sizes());
  if constexpr (kBackward) {
    check_cuda(grad, op, "grad");
    check_same(grad, "grad", x, "x", op);
    TORCH_CHECK(grad.sizes() == x.sizes(), "fastgan_cuda::", op, ": grad has shape ", grad.sizes(),
                " but x has shape ", x.sizes());
  }
  const at::MemoryFormat fmt = kBackward ? shared_layout(op, {grad, x}) : shared_layout(op, {x});
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return out;
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                  "fastgan_cuda::bias_act_pixel_norm", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ep = make_epilogue<scalar_t>(1.0, slope, gain, -1.0);
    const scalar_t* gp = kBackward ? grad.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (fmt == at::MemoryFormat::ChannelsLast || S == 1) {
      const int64_t R = N * S;
      rows_kernel<scalar_t, kBackward><<<grid_size(R, kThreads / 32), kThreads, 0, stream>>>(
          gp, xp, bp, outp, R, C, ep, static_cast<acc_t>(eps));
    } else {
      cols_kernel<scalar_t, kBackward><<<grid_size(N * S, kThreads), kThreads, 0, stream>>>(
          gp, xp, bp, outp, N * S, C, S, ep, static_cast<acc_t>(eps));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor bias_act_pixel_norm_cuda(const at::Tensor& x, const at::Tensor& bias, double slope, double gain,
                                    double eps) {
  return bias_act_pixel_norm_impl<false>("bias_act_pixel_norm", at::Tensor(), x, bias, slope, gain, eps);
}

at::Tensor bias_act_pixel_norm_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias,
                                             double slope, double gain, double eps) {
  return bias_act_pixel_norm_impl<true>("bias_act_pixel_norm_backward", grad, x, bias, slope, gain, eps);
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("bias_act_pixel_norm", &fastgan::cuda::bias_act_pixel_norm_cuda);
  m.impl("bias_act_pixel_norm_backward", &fastgan::cuda::bias_act_pixel_norm_backward_cuda);
}
