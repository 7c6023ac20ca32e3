// SPEC 6, generator fade-in:
//   out = (1 - alpha) * upsample_nearest_2x(rgb_low) + alpha * rgb_high
// and its adjoint (grad_low, grad_high) = ((1 - alpha) * sum_pool_2x2(grad), alpha * grad).
// The up-sampled tensor is never materialized.
#include "common.cuh"

namespace fastgan::cuda {
namespace {

// One thread per output element; it reads the low-res element it up-samples.
// Both layouts flatten to [outer, 2H, 2W, inner] (see Block2x2 in common.cuh).
template <typename scalar_t, typename index_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    fade_in_kernel(const scalar_t* __restrict__ low, const scalar_t* __restrict__ high, scalar_t* __restrict__ out,
                   index_t numel, index_t H, index_t W, index_t C, at::opmath_type<scalar_t> w_low,
                   at::opmath_type<scalar_t> w_high) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t H2 = 2 * H, W2 = 2 * W;
  const index_t stride = index_t(gridDim.x) * index_t(blockDim.x);
  for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < numel; i += stride) {
    index_t t = i, c = 0;
    if constexpr (kNHWC) {
      t = i / C;
      c = i - t * C;
    }
    const index_t ow = t % W2;
    t /= W2;
    const index_t oh = t % H2;
    const index_t o = t / H2;
    index_t li = (o * H + oh / 2) * W + ow / 2;
    if constexpr (kNHWC) li = li * C + c;
    out[i] = static_cast<scalar_t>(w_low * static_cast<acc_t>(low[li]) + w_high * static_cast<acc_t>(high[i]));
  }
}

// One thread per low-res element: reads its 2x2 block of grad once and writes
// both gradients.
template <typename scalar_t, typename index_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    fade_in_backward_kernel(const scalar_t* __restrict__ grad, scalar_t* __restrict__ grad_low,
                            scalar_t* __restrict__ grad_high, index_t numel_low, index_t H, index_t W, index_t C,
                            at::opmath_type<scalar_t> w_low, at::opmath_type<scalar_t> w_high) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t stride = index_t(gridDim.x) * index_t(blockDim.x);
  for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < numel_low; i += stride) {
    const Block2x2<index_t> b = block_2x2<index_t, kNHWC>(i, H, W, C);
    const index_t i00 = b.top_left, i01 = i00 + b.right, i10 = i00 + b.down, i11 = i10 + b.right;
    const acc_t g00 = static_cast<acc_t>(grad[i00]), g01 = static_cast<acc_t>(grad[i01]);
    const acc_t g10 = static_cast<acc_t>(grad[i10]), g11 = static_cast<acc_t>(grad[i11]);
    grad_low[i] = static_cast<scalar_t>(w_low * ((g00 + g01) + (g10 + g11)));
    grad_high[i00] = static_cast<scalar_t>(w_high * g00);
    grad_high[i01] = static_cast<scalar_t>(w_high * g01);
    grad_high[i10] = static_cast<scalar_t>(w_high * g10);
    grad_high[i11] = static_cast<scalar_t>(w_high * g11);
  }
}

at::Tensor fade_in_cuda(const at::Tensor& rgb_low, const at::Tensor& rgb_high, double alpha) {
  const char* op = "fade_in";
  check_cuda(rgb_low, op, "rgb_low");
  check_cuda(rgb_high, op, "rgb_high");
  check_same(rgb_low, "rgb_low", rgb_high, "rgb_high", op);
  TORCH_CHECK(rgb_low.dim() == 4 && rgb_high.dim() == 4, "fastgan_cuda::fade_in: rgb_low and rgb_high must be 4-D, got ",
              rgb_low.sizes(), " and ", rgb_high.sizes());
  const int64_t N = rgb_low.size(0), C = rgb_low.size(1), H = rgb_low.size(2), W = rgb_low.size(3);
  TORCH_CHECK(rgb_high.size(0) == N && rgb_high.size(1) == C && rgb_high.size(2) == 2 * H && rgb_high.size(3) == 2 * W,
              "fastgan_cuda::fade_in: rgb_high must have shape [", N, ", ", C, ", ", 2 * H, ", ", 2 * W,
              "] (rgb_low's batch and channels, twice its height and width), got ", rgb_high.sizes());
  const at::MemoryFormat fmt = shared_layout(op, {rgb_low, rgb_high});

  c10::cuda::CUDAGuard guard(rgb_high.device());
  at::Tensor out = at::empty(rgb_high.sizes(), rgb_high.options().memory_format(fmt));
  const int64_t numel = out.numel();
  if (numel == 0) return out;

  const unsigned grid = grid_size(numel, kThreads);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, out.scalar_type(), "fastgan_cuda::fade_in", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_index_layout(fits_int32(numel, grid, kThreads), nhwc, [&](auto index_tag, auto nhwc_tag) {
      using index_t = decltype(index_tag);
      fade_in_kernel<scalar_t, index_t, decltype(nhwc_tag)::value>
          <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              rgb_low.const_data_ptr<scalar_t>(), rgb_high.const_data_ptr<scalar_t>(),
              out.mutable_data_ptr<scalar_t>(), index_t(numel), index_t(H), index_t(W), index_t(C),
              static_cast<acc_t>(1.0 - alpha), static_cast<acc_t>(alpha));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> fade_in_backward_cuda(const at::Tensor& grad, double alpha) {
  const char* op = "fade_in_backward";
  check_cuda(grad, op, "grad");
  TORCH_CHECK(grad.dim() == 4, "fastgan_cuda::fade_in_backward: grad must be 4-D, got shape ", grad.sizes());
  TORCH_CHECK(grad.size(2) % 2 == 0 && grad.size(3) % 2 == 0,
              "fastgan_cuda::fade_in_backward: grad must have even height and width, got shape ", grad.sizes());
  const at::MemoryFormat fmt = shared_layout(op, {grad});
  const int64_t N = grad.size(0), C = grad.size(1), H = grad.size(2) / 2, W = grad.size(3) / 2;

  c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_low = at::empty({N, C, H, W}, grad.options().memory_format(fmt));
  at::Tensor grad_high = at::empty(grad.sizes(), grad.options().memory_format(fmt));
  const int64_t numel_low = grad_low.numel();
  if (numel_low == 0) return {grad_low, grad_high};

  const unsigned grid = grid_size(numel_low, kThreads);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, grad.scalar_type(), "fastgan_cuda::fade_in_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_index_layout(fits_int32(grad.numel(), grid, kThreads), nhwc, [&](auto index_tag, auto nhwc_tag) {
      using index_t = decltype(index_tag);
      fade_in_backward_kernel<scalar_t, index_t, decltype(nhwc_tag)::value>
          <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad.const_data_ptr<scalar_t>(), grad_low.mutable_data_ptr<scalar_t>(),
              grad_high.mutable_data_ptr<scalar_t>(), index_t(numel_low), index_t(H), index_t(W), index_t(C),
              static_cast<acc_t>(1.0 - alpha), static_cast<acc_t>(alpha));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_low, grad_high};
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("fade_in", &fastgan::cuda::fade_in_cuda);
  m.impl("fade_in_backward", &fastgan::cuda::fade_in_backward_cuda);
}
