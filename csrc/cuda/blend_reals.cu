// SPEC 6, real-image blend while a layer fades in:
//   out = (1 - alpha) * upsample_nearest_2x(avg_pool_2x2(x)) + alpha * x
// Each output mixes itself with the mean of its 2x2 block. The map is
// self-adjoint, so this op is its own backward.
#include "common.cuh"

namespace fastgan::cuda {
namespace {

// One thread per 2x2 block: reads it once, writes it once.
template <typename scalar_t, typename index_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    blend_reals_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, index_t num_blocks, index_t H,
                       index_t W, index_t C, at::opmath_type<scalar_t> w_low, at::opmath_type<scalar_t> w_high) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t stride = index_t(gridDim.x) * index_t(blockDim.x);
  for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < num_blocks; i += stride) {
    const Block2x2<index_t> b = block_2x2<index_t, kNHWC>(i, H, W, C);
    const index_t i00 = b.top_left, i01 = i00 + b.right, i10 = i00 + b.down, i11 = i10 + b.right;
    const acc_t x00 = static_cast<acc_t>(x[i00]), x01 = static_cast<acc_t>(x[i01]);
    const acc_t x10 = static_cast<acc_t>(x[i10]), x11 = static_cast<acc_t>(x[i11]);
    const acc_t low = w_low * (((x00 + x01) + (x10 + x11)) * acc_t(0.25));
    out[i00] = static_cast<scalar_t>(low + w_high * x00);
    out[i01] = static_cast<scalar_t>(low + w_high * x01);
    out[i10] = static_cast<scalar_t>(low + w_high * x10);
    out[i11] = static_cast<scalar_t>(low + w_high * x11);
  }
}

at::Tensor blend_reals_cuda(const at::Tensor& x, double alpha) {
  const char* op = "blend_reals";
  check_cuda(x, op, "x");
  TORCH_CHECK(x.dim() == 4, "fastgan_cuda::blend_reals: x must be 4-D, got shape ", x.sizes());
  TORCH_CHECK(x.size(2) % 2 == 0 && x.size(3) % 2 == 0,
              "fastgan_cuda::blend_reals: x must have even height and width, got shape ", x.sizes());
  const at::MemoryFormat fmt = shared_layout(op, {x});

  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return out;

  // Kernel sizes are those of the pooled [N, C, H/2, W/2] tensor.
  const int64_t C = x.size(1), H = x.size(2) / 2, W = x.size(3) / 2;
  const int64_t num_blocks = x.numel() / 4;
  const unsigned grid = grid_size(num_blocks, kThreads);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "fastgan_cuda::blend_reals", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_index_layout(fits_int32(x.numel(), grid, kThreads), nhwc, [&](auto index_tag, auto nhwc_tag) {
      using index_t = decltype(index_tag);
      blend_reals_kernel<scalar_t, index_t, decltype(nhwc_tag)::value>
          <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), index_t(num_blocks), index_t(H),
              index_t(W), index_t(C), static_cast<acc_t>(1.0 - alpha), static_cast<acc_t>(alpha));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) { m.impl("blend_reals", &fastgan::cuda::blend_reals_cuda); }
