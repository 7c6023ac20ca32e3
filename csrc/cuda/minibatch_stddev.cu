// SPEC 5, minibatch standard deviation with strided groups, and its backward:
//   out    = cat([x, f broadcast], dim 1),  f[m, j] = mean over channel group j and pixels of s,
//            s = sqrt(mean_g((x - mean_g x)^2) + 1e-8) over the G samples g * M + m of group m
//   grad_x = grad[:, :C] + A[m, j] * (x - mean_g x) / (G * s),  A = sum of grad's channel C + j over
//            the group's samples and pixels / K,  K = C/F * H * W
// A block of the value kernels owns kThreads values k of channel group j in the G samples of
// group m (a thread a value, two passes over the G samples: mean, then squared deviations).
// The forward's blocks copy x into out and store their sum of s; `fill` adds the sums of
// (m, j) in a fixed order and writes f. The backward first sums grad's new channels per (m, j).
// Value k of channel group j: NCHW sample offset j * K + k (out: the same); channels-last
// pixel k / Cf, channel j * Cf + k % Cf (Cf = C / F), at pixel * C (+ F in out) + channel.
// The double backward (schemas.h) is the forward's structure over gg: its blocks copy gg into
// d_grad and store their sum of u / (G s), `fill` writes t; d_x comes from the same statistics.
#include "common.cuh"

namespace fastgan::cuda {
namespace {

constexpr double kEps = 1e-8;

struct Groups {
  int64_t C, HW, M, G, F, K;
};

template <bool kNHWC>
__device__ __forceinline__ void value_offsets(int64_t k, int64_t j, const Groups& q, int64_t& e, int64_t& e_out) {
  if constexpr (kNHWC) {
    const int64_t cf = q.C / q.F, pix = k / cf, ch = j * cf + k % cf;
    e = pix * q.C + ch;
    e_out = pix * (q.C + q.F) + ch;
  } else {
    e = j * q.K + k;
    e_out = e;
  }
}

// The sum of v over the block (kThreads threads); every thread gets it.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* smem) {
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  const acc_t total = smem[0];
  __syncthreads();
  return total;
}

// Mean and s of value offset e over group m's samples, two-pass.
template <typename scalar_t, typename acc_t>
__device__ void group_stats(const scalar_t* x, int64_t m, int64_t e, const Groups& q, acc_t& mean, acc_t& s) {
  const int64_t sample = q.C * q.HW;
  acc_t total = 0;
  for (int64_t g = 0; g < q.G; ++g) total += static_cast<acc_t>(x[(g * q.M + m) * sample + e]);
  mean = total / static_cast<acc_t>(q.G);
  acc_t ss = 0;
  for (int64_t g = 0; g < q.G; ++g) {
    const acc_t d = static_cast<acc_t>(x[(g * q.M + m) * sample + e]) - mean;
    ss += d * d;
  }
  s = sqrt(ss / static_cast<acc_t>(q.G) + static_cast<acc_t>(kEps));
}

template <typename scalar_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, at::opmath_type<scalar_t>* partial,
                 Groups q, int64_t blocks) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kThreads];
  const int64_t task = blockIdx.x, blk = task % blocks, mj = task / blocks, m = mj / q.F, j = mj % q.F;
  const int64_t k = blk * kThreads + threadIdx.x;
  acc_t s = 0;
  if (k < q.K) {
    int64_t e, e_out;
    value_offsets<kNHWC>(k, j, q, e, e_out);
    for (int64_t g = 0; g < q.G; ++g) {
      const int64_t n = g * q.M + m;
      out[n * (q.C + q.F) * q.HW + e_out] = x[n * q.C * q.HW + e];
    }
    acc_t mean;
    group_stats(x, m, e, q, mean, s);
  }
  const acc_t total = block_sum(s, smem);
  if (threadIdx.x == 0) partial[task] = total;
}

// Block (n, j): f = sum of the partials of (n mod M, j) / K over the HW pixels of channel C + j.
template <typename scalar_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    fill_kernel(const at::opmath_type<scalar_t>* partial, scalar_t* __restrict__ out, Groups q, int64_t blocks) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kThreads];
  const int64_t n = blockIdx.x / q.F, j = blockIdx.x % q.F, m = n % q.M;
  acc_t v = 0;
  for (int64_t b = threadIdx.x; b < blocks; b += kThreads) v += partial[(m * q.F + j) * blocks + b];
  const scalar_t f = static_cast<scalar_t>(block_sum(v, smem) / static_cast<acc_t>(q.K));
  scalar_t* o = out + n * (q.C + q.F) * q.HW;
  for (int64_t p = threadIdx.x; p < q.HW; p += kThreads) o[kNHWC ? p * (q.C + q.F) + q.C + j : (q.C + j) * q.HW + p] = f;
}

// Block (m, j): a = sum of grad's channel C + j over group m's samples and pixels / (K * G).
template <typename scalar_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    grad_f_kernel(const scalar_t* __restrict__ grad, at::opmath_type<scalar_t>* a, Groups q) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kThreads];
  const int64_t m = blockIdx.x / q.F, j = blockIdx.x % q.F;
  acc_t v = 0;
  for (int64_t g = 0; g < q.G; ++g) {
    const scalar_t* gn = grad + (g * q.M + m) * (q.C + q.F) * q.HW;
    for (int64_t p = threadIdx.x; p < q.HW; p += kThreads)
      v += static_cast<acc_t>(gn[kNHWC ? p * (q.C + q.F) + q.C + j : (q.C + j) * q.HW + p]);
  }
  const acc_t total = block_sum(v, smem);
  if (threadIdx.x == 0) a[blockIdx.x] = total / static_cast<acc_t>(q.K * q.G);
}

template <typename scalar_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                    const at::opmath_type<scalar_t>* a, scalar_t* __restrict__ gx, Groups q, int64_t blocks) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t task = blockIdx.x, blk = task % blocks, mj = task / blocks, m = mj / q.F, j = mj % q.F;
  const int64_t k = blk * kThreads + threadIdx.x;
  if (k >= q.K) return;
  int64_t e, e_out;
  value_offsets<kNHWC>(k, j, q, e, e_out);
  acc_t mean, s;
  group_stats(x, m, e, q, mean, s);
  const acc_t coef = a[mj] / s;
  for (int64_t g = 0; g < q.G; ++g) {
    const int64_t n = g * q.M + m, i = n * q.C * q.HW + e;
    const acc_t gv = static_cast<acc_t>(grad[n * (q.C + q.F) * q.HW + e_out]);
    gx[i] = static_cast<scalar_t>(gv + coef * (static_cast<acc_t>(x[i]) - mean));
  }
}

// d_grad = [gg, t] and d_x = A / (G s) * (gg - mean_g gg - u d / (G s^2)), u = sum_g gg d: a block
// as stats_kernel's, its partial the sum of u / (G s) (fill_kernel divides by K); need_grad and
// need_x are the same for every block, so every thread reaches block_sum.
template <typename scalar_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    double_backward_kernel(const scalar_t* __restrict__ gg, const scalar_t* __restrict__ x,
                           const at::opmath_type<scalar_t>* a, scalar_t* __restrict__ d_grad,
                           scalar_t* __restrict__ d_x, at::opmath_type<scalar_t>* partial, Groups q, int64_t blocks,
                           bool need_grad, bool need_x) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kThreads];
  const int64_t task = blockIdx.x, blk = task % blocks, mj = task / blocks, m = mj / q.F, j = mj % q.F;
  const int64_t k = blk * kThreads + threadIdx.x, sample = q.C * q.HW, out_sample = (q.C + q.F) * q.HW;
  const acc_t inv_g = acc_t(1) / static_cast<acc_t>(q.G);
  acc_t t = 0;
  if (k < q.K) {
    int64_t e, e_out;
    value_offsets<kNHWC>(k, j, q, e, e_out);
    acc_t mean, s;
    group_stats(x, m, e, q, mean, s);
    acc_t gsum = 0, u = 0;
#pragma unroll 1  // unrolled, the float NHWC instance spilled 20 bytes (ptxas -v)
    for (int64_t g = 0; g < q.G; ++g) {
      const int64_t n = g * q.M + m;
      const scalar_t gv = gg[n * sample + e];
      if (need_grad) d_grad[n * out_sample + e_out] = gv;
      gsum += static_cast<acc_t>(gv);
      u += static_cast<acc_t>(gv) * (static_cast<acc_t>(x[n * sample + e]) - mean);
    }
    const acc_t inv_s = acc_t(1) / s;
    t = u * inv_g * inv_s;
    if (need_x) {
      const acc_t coef = a[mj] * inv_s, gmean = gsum * inv_g, w = t * inv_s;
#pragma unroll 1
      for (int64_t g = 0; g < q.G; ++g) {
        const int64_t i = (g * q.M + m) * sample + e;
        const acc_t d = static_cast<acc_t>(x[i]) - mean;
        d_x[i] = static_cast<scalar_t>(coef * (static_cast<acc_t>(gg[i]) - gmean - w * d));
      }
    }
  }
  if (need_grad) {
    const acc_t total = block_sum(t, smem);
    if (threadIdx.x == 0) partial[task] = total;
  }
}

Groups groups_of(const char* op, const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  check_cuda(x, op, "x");
  TORCH_CHECK(x.dim() == 4, "fastgan_cuda::", op, ": x must be 4-D, got ", x.sizes());
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  TORCH_CHECK(group_size >= 1 && n % group_size == 0, "fastgan_cuda::", op, ": group_size (", group_size,
              ") must divide the batch (", n, ")");
  TORCH_CHECK(num_channels >= 1 && c % num_channels == 0, "fastgan_cuda::", op, ": num_channels (", num_channels,
              ") must divide the channels (", c, ")");
  TORCH_CHECK(c >= 1, "fastgan_cuda::", op, ": x must have channels to take the deviation of, got ", x.sizes());
  return {c, hw, n / group_size, group_size, num_channels, c / num_channels * hw};
}

// grad [N, C + F, H, W] (the gradient of the output), x's dtype and device.
void check_grad(const char* op, const at::Tensor& grad, const at::Tensor& x, const Groups& q) {
  check_cuda(grad, op, "grad");
  check_same(grad, "grad", x, "x", op);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(1) == q.C + q.F &&
                  grad.size(2) == x.size(2) && grad.size(3) == x.size(3),
              "fastgan_cuda::", op, ": grad must be [N, C + num_channels, H, W] for x ", x.sizes(), ", got ",
              grad.sizes());
}

// Blocks per (group, feature) for the value kernels; both grids (those blocks, fill_kernel's N * F)
// must fit a launch's x dimension.
int64_t value_blocks(const char* op, const Groups& q) {
  const int64_t blocks = ceil_div(q.K, kThreads);
  TORCH_CHECK(q.M * q.F * std::max(blocks, q.G) <= INT_MAX, "fastgan_cuda::", op, ": tensor too large");
  return blocks;
}

at::Tensor minibatch_stddev_cuda(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  const Groups q = groups_of("minibatch_stddev", x, group_size, num_channels);
  const auto fmt = shared_layout("minibatch_stddev", {x});
  c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty({x.size(0), q.C + q.F, x.size(2), x.size(3)}, x.options().memory_format(fmt));
  if (x.numel() == 0) return out;
  const int64_t blocks = value_blocks("minibatch_stddev", q);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto partial = at::empty({q.M * q.F * blocks}, x.options().dtype(acc));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastgan_cuda::minibatch_stddev", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_index_layout(false, fmt == at::MemoryFormat::ChannelsLast, [&](auto, auto nhwc) {
      constexpr bool kNHWC = decltype(nhwc)::value;
      stats_kernel<scalar_t, kNHWC><<<static_cast<unsigned>(q.M * q.F * blocks), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), q,
          blocks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fill_kernel<scalar_t, kNHWC><<<static_cast<unsigned>(x.size(0) * q.F), kThreads, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), q, blocks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor minibatch_stddev_backward_cuda(const at::Tensor& grad, const at::Tensor& x, int64_t group_size,
                                          int64_t num_channels) {
  const char* op = "minibatch_stddev_backward";
  const Groups q = groups_of(op, x, group_size, num_channels);
  check_grad(op, grad, x, q);
  const auto fmt = shared_layout(op, {grad, x});
  c10::cuda::CUDAGuard guard(x.device());
  auto gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return gx;
  const int64_t blocks = value_blocks(op, q);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto a = at::empty({q.M * q.F}, x.options().dtype(acc));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastgan_cuda::minibatch_stddev_backward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_index_layout(false, fmt == at::MemoryFormat::ChannelsLast, [&](auto, auto nhwc) {
      constexpr bool kNHWC = decltype(nhwc)::value;
      grad_f_kernel<scalar_t, kNHWC><<<static_cast<unsigned>(q.M * q.F), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), a.mutable_data_ptr<acc_t>(), q);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      backward_kernel<scalar_t, kNHWC><<<static_cast<unsigned>(q.M * q.F * blocks), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), a.const_data_ptr<acc_t>(),
          gx.mutable_data_ptr<scalar_t>(), q, blocks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gx;
}

std::tuple<at::Tensor, at::Tensor> minibatch_stddev_double_backward_cuda(const at::Tensor& gg, const at::Tensor& grad,
                                                                         const at::Tensor& x, int64_t group_size,
                                                                         int64_t num_channels, bool need_grad,
                                                                         bool need_x) {
  const char* op = "minibatch_stddev_double_backward";
  const Groups q = groups_of(op, x, group_size, num_channels);
  check_grad(op, grad, x, q);
  check_cuda(gg, op, "gg");
  check_same(gg, "gg", x, "x", op);
  TORCH_CHECK(gg.sizes() == x.sizes(), "fastgan_cuda::", op, ": gg must be ", x.sizes(), " (x's shape), got ",
              gg.sizes());
  const auto fmt = shared_layout(op, {gg, grad, x});
  c10::cuda::CUDAGuard guard(x.device());
  auto d_grad = need_grad ? at::empty(grad.sizes(), x.options().memory_format(fmt)) : at::empty({0}, x.options());
  auto d_x = need_x ? at::empty(x.sizes(), x.options().memory_format(fmt)) : at::empty({0}, x.options());
  if (x.numel() == 0 || !(need_grad || need_x)) return {d_grad, d_x};
  const int64_t blocks = value_blocks(op, q);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto a = at::empty({need_x ? q.M * q.F : 0}, x.options().dtype(acc));
  auto partial = at::empty({need_grad ? q.M * q.F * blocks : 0}, x.options().dtype(acc));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "fastgan_cuda::minibatch_stddev_double_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_index_layout(false, fmt == at::MemoryFormat::ChannelsLast, [&](auto, auto nhwc) {
      constexpr bool kNHWC = decltype(nhwc)::value;
      if (need_x) {
        grad_f_kernel<scalar_t, kNHWC><<<static_cast<unsigned>(q.M * q.F), kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), a.mutable_data_ptr<acc_t>(), q);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      double_backward_kernel<scalar_t, kNHWC><<<static_cast<unsigned>(q.M * q.F * blocks), kThreads, 0, stream>>>(
          gg.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), need_x ? a.const_data_ptr<acc_t>() : nullptr,
          need_grad ? d_grad.mutable_data_ptr<scalar_t>() : nullptr,
          need_x ? d_x.mutable_data_ptr<scalar_t>() : nullptr, need_grad ? partial.mutable_data_ptr<acc_t>() : nullptr,
          q, blocks, need_grad, need_x);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (need_grad) {
        fill_kernel<scalar_t, kNHWC><<<static_cast<unsigned>(x.size(0) * q.F), kThreads, 0, stream>>>(
            partial.const_data_ptr<acc_t>(), d_grad.mutable_data_ptr<scalar_t>(), q, blocks);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {d_grad, d_x};
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("minibatch_stddev", &fastgan::cuda::minibatch_stddev_cuda);
  m.impl("minibatch_stddev_backward", &fastgan::cuda::minibatch_stddev_backward_cuda);
  m.impl("minibatch_stddev_double_backward", &fastgan::cuda::minibatch_stddev_double_backward_cuda);
}
