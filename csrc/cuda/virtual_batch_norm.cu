// SPEC 10: virtual batch normalization with its fused activation act(u) = u > 0 ? u : slope * u
// (slope 1: none, 0: ReLU), and its backward; the same passes as csrc/cpu/virtual_batch_norm.cpp.
//
// z [N, C, H, W] (NCHW or channels-last), its first m = ref_size samples the reference batch R.
// Forward: per (sample, channel) mean and M2 (two sweeps of the sample's values, the second from
// cache), a per-channel combination into the [N, C] mean / invstd each sample is normalized with
// (Chan's formula), one normalize + activation pass. Backward: per (sample, channel) sg = sum g and
// sgx = sum g * xhat (g = grad_y * act'), the per-channel coefficients of
//   grad_z = ca * g - k1 - k2 * (z - mean)
// (derivation in fastgan/ops/virtual_batch_norm.py), one grad_z pass. No host syncs.
//
// Reductions: NCHW gives each (sample, channel) row of S values to a warp; channels-last gives each
// (sample, 32 channels) to a block of 32 channel lanes x 8 pixel lanes (coalesced along C).
#include "common.cuh"

namespace fastgan::cuda {
namespace {

constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kLanesC = 32, kLanesP = kThreads / kLanesC;

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The sum over the block's pixel lanes of each channel lane's v, seen by every thread.
template <typename A>
__device__ __forceinline__ A column_sum(A (&red)[kLanesP][kLanesC], A v) {
  const int tx = threadIdx.x % kLanesC, ty = threadIdx.x / kLanesC;
  red[ty][tx] = v;
  __syncthreads();
  A s = 0;
#pragma unroll
  for (int i = 0; i < kLanesP; ++i) s += red[i][tx];
  __syncthreads();  // red is written again by the next call
  return s;
}

// slope 0 is ReLU exactly (0 where u <= 0, also for -inf); NaN propagates.
template <typename A>
__device__ __forceinline__ A act(A u, A slope) {
  return (u > A(0) || u != u) ? u : (slope != A(0) ? u * slope : A(0));
}

// g * act'(u): a true 0 where u <= 0 for ReLU, as ReLU's backward.
template <typename A>
__device__ __forceinline__ A act_grad(A g, A u, A slope) {
  return u > A(0) ? g : (slope != A(0) ? g * slope : A(0));
}

// ---- forward ----

// NCHW: per row r = n * C + c, mean[r] and m2[r] = sum (z - mean)^2 over its S values.
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(kThreads)
    row_stats_kernel(const scalar_t* __restrict__ z, A* __restrict__ mean, A* __restrict__ m2, int64_t rows,
                     int64_t S) {
  const int lane = threadIdx.x % 32;
  // r depends on the warp alone: every lane reaches the shuffles.
  for (int64_t r = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / 32; r < rows;
       r += int64_t{gridDim.x} * kRowsPerBlock) {
    const scalar_t* zr = z + r * S;
    A s = 0;
    for (int64_t k = lane; k < S; k += 32) s += static_cast<A>(zr[k]);
    const A mu = warp_sum(s) / static_cast<A>(S);
    A q = 0;
    for (int64_t k = lane; k < S; k += 32) {
      const A e = static_cast<A>(zr[k]) - mu;
      q += e * e;
    }
    q = warp_sum(q);
    if (lane == 0) {
      mean[r] = mu;
      m2[r] = q;
    }
  }
}

// Channels-last: block (n, j) reduces sample n's S pixels of channels j * 32 + ...
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(kThreads)
    pixel_stats_kernel(const scalar_t* __restrict__ z, A* __restrict__ mean, A* __restrict__ m2, int64_t C,
                       int64_t S) {
  __shared__ A red[kLanesP][kLanesC];
  const int ty = threadIdx.x / kLanesC;
  const int64_t n = blockIdx.x, c = int64_t{blockIdx.y} * kLanesC + threadIdx.x % kLanesC;
  const bool ok = c < C;
  const scalar_t* zn = z + n * S * C + c;
  A s = 0;
  if (ok) {
    for (int64_t p = ty; p < S; p += kLanesP) s += static_cast<A>(zn[p * C]);
  }
  const A mu = column_sum(red, s) / static_cast<A>(S);
  A q = 0;
  if (ok) {
    for (int64_t p = ty; p < S; p += kLanesP) {
      const A e = static_cast<A>(zn[p * C]) - mu;
      q += e * e;
    }
  }
  q = column_sum(red, q);
  if (ok && ty == 0) {
    mean[n * C + c] = mu;
    m2[n * C + c] = q;
  }
}

// In place per channel: mean <- the mean each sample is normalized with, m2 <- invstd. R's samples
// get R's statistics; sample i >= m the union of R and itself, each sample weighted a = 1 / (m + 1).
template <typename A>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(A* __restrict__ mean, A* __restrict__ m2, int64_t N, int64_t C, int64_t S, int64_t m, A eps) {
  const A a = A(1) / static_cast<A>(m + 1), inv_s = A(1) / static_cast<A>(S);
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < C; c += int64_t{gridDim.x} * blockDim.x) {
    A sum = 0;
    for (int64_t j = 0; j < m; ++j) sum += mean[j * C + c];
    const A mean_r = sum / static_cast<A>(m);
    // Chan: var_R = (sum_j M2_j / S + sum_j (mean_j - mean_R)^2) / m.
    A spread = 0;
    for (int64_t j = 0; j < m; ++j) {
      const A dm = mean[j * C + c] - mean_r;
      spread += m2[j * C + c] * inv_s + dm * dm;
    }
    const A var_r = spread / static_cast<A>(m);
    const A invstd_r = acc_rsqrt(var_r + eps);
    for (int64_t i = m; i < N; ++i) {
      const A mu = mean[i * C + c], dm = mu - mean_r;
      const A var = a * m2[i * C + c] * inv_s + (A(1) - a) * var_r + a * (A(1) - a) * dm * dm;
      mean[i * C + c] = a * mu + (A(1) - a) * mean_r;
      m2[i * C + c] = acc_rsqrt(var + eps);
    }
    for (int64_t j = 0; j < m; ++j) {
      mean[j * C + c] = mean_r;
      m2[j * C + c] = invstd_r;
    }
  }
}

// The (sample, channel) of element i: (its channel, its index in [N, C]).
template <typename index_t, bool kNHWC>
__device__ __forceinline__ void channel_of(index_t i, index_t C, index_t S, index_t& c, index_t& stat) {
  if constexpr (kNHWC) {
    c = i % C;
    stat = i / (S * C) * C + c;
  } else {
    stat = i / S;
    c = stat % C;
  }
}

template <typename scalar_t, typename A, typename index_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    normalize_kernel(const scalar_t* __restrict__ z, scalar_t* __restrict__ y, const A* __restrict__ mean,
                     const A* __restrict__ invstd, const A* __restrict__ gamma, const A* __restrict__ beta, A slope,
                     index_t numel, index_t C, index_t S) {
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    index_t c, stat;
    channel_of<index_t, kNHWC>(i, C, S, c, stat);
    const A scale = (gamma ? gamma[c] : A(1)) * invstd[stat];
    const A u = (static_cast<A>(z[i]) - mean[stat]) * scale + (beta ? beta[c] : A(0));
    y[i] = static_cast<scalar_t>(act(u, slope));
  }
}

// ---- backward ----

// NCHW: per row r, sums[r] = sum g and sums[N * C + r] = sum g * xhat.
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(kThreads)
    row_sums_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ z, const A* __restrict__ mean,
                    const A* __restrict__ invstd, const A* __restrict__ gamma, const A* __restrict__ beta, A slope,
                    A* __restrict__ sums, int64_t rows, int64_t C, int64_t S) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = int64_t{blockIdx.x} * kRowsPerBlock + threadIdx.x / 32; r < rows;
       r += int64_t{gridDim.x} * kRowsPerBlock) {
    const int64_t c = r % C;
    const A mu = mean[r], is = invstd[r], ga = gamma ? gamma[c] : A(1), b = beta ? beta[c] : A(0);
    A s1 = 0, s2 = 0;
    for (int64_t k = lane; k < S; k += 32) {
      const A xh = (static_cast<A>(z[r * S + k]) - mu) * is;
      const A g = act_grad(static_cast<A>(gy[r * S + k]), xh * ga + b, slope);
      s1 += g;
      s2 += g * xh;
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    if (lane == 0) {
      sums[r] = s1;
      sums[rows + r] = s2;
    }
  }
}

// Channels-last: block (n, j) sums sample n's S pixels of channels j * 32 + ...
template <typename scalar_t, typename A>
__global__ void __launch_bounds__(kThreads)
    pixel_sums_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ z, const A* __restrict__ mean,
                      const A* __restrict__ invstd, const A* __restrict__ gamma, const A* __restrict__ beta, A slope,
                      A* __restrict__ sums, int64_t N, int64_t C, int64_t S) {
  __shared__ A red[kLanesP][kLanesC];
  const int ty = threadIdx.x / kLanesC;
  const int64_t n = blockIdx.x, c = int64_t{blockIdx.y} * kLanesC + threadIdx.x % kLanesC;
  const bool ok = c < C;
  A s1 = 0, s2 = 0;
  if (ok) {
    const A mu = mean[n * C + c], is = invstd[n * C + c], ga = gamma ? gamma[c] : A(1), b = beta ? beta[c] : A(0);
    const int64_t base = n * S * C + c;
    for (int64_t p = ty; p < S; p += kLanesP) {
      const A xh = (static_cast<A>(z[base + p * C]) - mu) * is;
      const A g = act_grad(static_cast<A>(gy[base + p * C]), xh * ga + b, slope);
      s1 += g;
      s2 += g * xh;
    }
  }
  s1 = column_sum(red, s1);
  s2 = column_sum(red, s2);
  if (ok && ty == 0) {
    sums[n * C + c] = s1;
    sums[N * C + n * C + c] = s2;
  }
}

// Per channel: coef [3, N, C] = (ca, k1, k2) of grad_z = ca * g - k1 - k2 * (z - mean), and
// grad_gamma = sum sgx, grad_beta = sum sg (a fixed order: deterministic). a = 1 / (m + 1),
// w_r = 1 / (m S), w_i = a / S come from the host (a float64 division here spilled registers).
template <typename A>
__global__ void __launch_bounds__(kThreads)
    coefficients_kernel(const A* __restrict__ sums, const A* __restrict__ mean, const A* __restrict__ invstd,
                        const A* __restrict__ gamma, A* __restrict__ coef, A* __restrict__ grad_gamma,
                        A* __restrict__ grad_beta, int64_t N, int64_t C, int64_t m, A a, A w_r, A w_i) {
  const int64_t nc = N * C;
  const A* sg = sums;
  const A* sgx = sums + nc;
  A* ca = coef;
  A* k1 = coef + nc;
  A* k2 = coef + 2 * nc;
  for (int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; c < C; c += int64_t{gridDim.x} * blockDim.x) {
    const A ga = gamma ? gamma[c] : A(1), mean_r = mean[c], inv_r = invstd[c];
    A sg_r = 0, sgx_r = 0, p = 0, q = 0, tg = 0, tb = 0;
    for (int64_t j = 0; j < m; ++j) sg_r += sg[j * C + c], sgx_r += sgx[j * C + c];
    for (int64_t i = m; i < N; ++i) {
      const int64_t k = i * C + c;
      const A is = invstd[k];
      // Through sample i's union statistics into R's samples: the mean (p) and variance (q) terms.
      p += is * (sg[k] + is * sgx[k] * (mean_r - mean[k]));
      q += is * is * sgx[k];
      tg += sgx[k], tb += sg[k];
      ca[k] = ga * is;
      k1[k] = w_i * ga * is * sg[k];
      k2[k] = w_i * ga * is * is * sgx[k];
    }
    const A r1 = w_r * ga * (inv_r * sg_r + (A(1) - a) * p);
    const A r2 = w_r * ga * (inv_r * inv_r * sgx_r + (A(1) - a) * q);
    for (int64_t j = 0; j < m; ++j) {
      ca[j * C + c] = ga * inv_r;
      k1[j * C + c] = r1;
      k2[j * C + c] = r2;
    }
    grad_gamma[c] = tg + sgx_r;
    grad_beta[c] = tb + sg_r;
  }
}

template <typename scalar_t, typename A, typename index_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    grad_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ z, scalar_t* __restrict__ gz,
                const A* __restrict__ mean, const A* __restrict__ invstd, const A* __restrict__ gamma,
                const A* __restrict__ beta, const A* __restrict__ coef, A slope, index_t numel, index_t C, index_t S,
                index_t nc) {
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<index_t>(gridDim.x) * blockDim.x) {
    index_t c, stat;
    channel_of<index_t, kNHWC>(i, C, S, c, stat);
    const A e = static_cast<A>(z[i]) - mean[stat];
    const A u = e * invstd[stat] * (gamma ? gamma[c] : A(1)) + (beta ? beta[c] : A(0));
    const A g = act_grad(static_cast<A>(gy[i]), u, slope);
    gz[i] = static_cast<scalar_t>(coef[stat] * g - coef[nc + stat] - coef[2 * nc + stat] * e);
  }
}

// ---- host ----

at::ScalarType stats_type(const at::Tensor& z) { return z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// gamma / beta: [C] vectors in the statistics' dtype on z's device (made contiguous, as the cpu
// kernels do), or undefined.
at::Tensor check_vector(const std::optional<at::Tensor>& t, const at::Tensor& z, const char* name, const char* op) {
  if (!t || !t->defined()) return at::Tensor();
  check_cuda(*t, op, name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == z.size(1) && t->scalar_type() == stats_type(z) &&
                  t->device() == z.device(),
              "fastgan_cuda::", op, ": ", name, " must be a [C] = [", z.size(1), "] ", stats_type(z), " vector on ",
              z.device(), ", got ", t->scalar_type(), " ", t->sizes(), " on ", t->device());
  return t->contiguous();
}

at::MemoryFormat check_z(const at::Tensor& z, int64_t ref_size, const char* op) {
  check_cuda(z, op, "z");
  TORCH_CHECK(z.dim() == 4, "fastgan_cuda::", op, ": z must be 4-D, got ", z.sizes());
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), "fastgan_cuda::", op, ": z must be floating-point, got ",
              z.scalar_type());
  TORCH_CHECK(ref_size >= 1 && ref_size <= z.size(0), "fastgan_cuda::", op, ": ref_size must be in 1..N = ",
              z.size(0), ", got ", ref_size);
  TORCH_CHECK(z.size(1) <= int64_t{65535} * kLanesC, "fastgan_cuda::", op, ": z has ", z.size(1),
              " channels; at most ", int64_t{65535} * kLanesC);
  return shared_layout(op, {z});
}

template <typename A>
const A* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<A>() : nullptr;
}

// Per-(sample, channel) reductions: a warp per NCHW row, a block per channels-last (sample, 32 channels).
template <typename F>
void launch_reduction(bool nhwc, int64_t N, int64_t C, F&& launch) {
  const dim3 grid = nhwc ? dim3(static_cast<unsigned>(N), static_cast<unsigned>(ceil_div(C, kLanesC)))
                         : dim3(grid_size(N * C, kRowsPerBlock));
  launch(grid);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> vbn_forward_cuda(const at::Tensor& z, int64_t ref_size,
                                                                const std::optional<at::Tensor>& gamma_opt,
                                                                const std::optional<at::Tensor>& beta_opt, double eps,
                                                                double negative_slope) {
  const char* op = "vbn_forward";
  const auto fmt = check_z(z, ref_size, op);
  const at::Tensor gamma = check_vector(gamma_opt, z, "gamma", op);
  const at::Tensor beta = check_vector(beta_opt, z, "beta", op);
  c10::cuda::CUDAGuard guard(z.device());
  const int64_t N = z.size(0), C = z.size(1), S = z.size(2) * z.size(3), numel = z.numel();
  auto y = at::empty(z.sizes(), z.options().memory_format(fmt));
  auto mean = at::empty({N, C}, z.options().dtype(stats_type(z)));
  auto invstd = at::empty({N, C}, z.options().dtype(stats_type(z)));
  if (numel == 0) return {y, mean, invstd};
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cuda::vbn_forward", [&] {
    using A = at::opmath_type<scalar_t>;
    A* mp = mean.mutable_data_ptr<A>();
    A* ip = invstd.mutable_data_ptr<A>();  // M2 until combine_kernel
    launch_reduction(nhwc, N, C, [&](dim3 grid) {
      if (nhwc) {
        pixel_stats_kernel<scalar_t, A><<<grid, kThreads, 0, stream>>>(z.const_data_ptr<scalar_t>(), mp, ip, C, S);
      } else {
        row_stats_kernel<scalar_t, A><<<grid, kThreads, 0, stream>>>(z.const_data_ptr<scalar_t>(), mp, ip, N * C, S);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    combine_kernel<A><<<grid_size(C, kThreads), kThreads, 0, stream>>>(mp, ip, N, C, S, ref_size,
                                                                       static_cast<A>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const unsigned grid = grid_size(numel, kThreads);
    dispatch_index_layout(fits_int32(numel, grid, kThreads), nhwc, [&](auto index, auto layout) {
      using index_t = decltype(index);
      normalize_kernel<scalar_t, A, index_t, decltype(layout)::value><<<grid, kThreads, 0, stream>>>(
          z.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), mp, ip, ptr_or_null<A>(gamma),
          ptr_or_null<A>(beta), static_cast<A>(negative_slope), static_cast<index_t>(numel),
          static_cast<index_t>(C), static_cast<index_t>(S));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> vbn_backward_cuda(const at::Tensor& grad_y, const at::Tensor& z,
                                                                 const at::Tensor& mean, const at::Tensor& invstd,
                                                                 int64_t ref_size,
                                                                 const std::optional<at::Tensor>& gamma_opt,
                                                                 const std::optional<at::Tensor>& beta_opt,
                                                                 double negative_slope) {
  const char* op = "vbn_backward";
  const auto fmt = check_z(z, ref_size, op);
  const at::Tensor gamma = check_vector(gamma_opt, z, "gamma", op);
  const at::Tensor beta = check_vector(beta_opt, z, "beta", op);
  check_cuda(grad_y, op, "grad_y");
  check_same(grad_y, "grad_y", z, "z", op);
  TORCH_CHECK(grad_y.sizes() == z.sizes(), "fastgan_cuda::vbn_backward: grad_y must have z's shape ", z.sizes(),
              ", got ", grad_y.sizes());
  const int64_t N = z.size(0), C = z.size(1), S = z.size(2) * z.size(3), numel = z.numel();
  for (const auto* t : {&mean, &invstd}) {
    check_cuda(*t, op, t == &mean ? "mean" : "invstd");
    TORCH_CHECK(t->scalar_type() == stats_type(z) && t->is_contiguous() && t->dim() == 2 && t->size(0) == N &&
                    t->size(1) == C && t->device() == z.device(),
                "fastgan_cuda::vbn_backward: ", t == &mean ? "mean" : "invstd", " must be a contiguous [N, C] = [", N,
                ", ", C, "] ", stats_type(z), " tensor on ", z.device(), ", got ", t->scalar_type(), " ", t->sizes());
  }
  c10::cuda::CUDAGuard guard(z.device());
  const auto gy = grad_y.is_contiguous(fmt) ? grad_y : grad_y.contiguous(fmt);  // either dense layout comes in
  auto grad_z = at::empty(z.sizes(), z.options().memory_format(fmt));
  if (numel == 0) {
    return {grad_z, at::zeros({C}, mean.options()), at::zeros({C}, mean.options())};
  }
  // Written whole by coefficients_kernel: no fill launches.
  auto grad_gamma = at::empty({C}, mean.options());
  auto grad_beta = at::empty({C}, mean.options());
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  auto sums = at::empty({2, N, C}, mean.options());
  auto coef = at::empty({3, N, C}, mean.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cuda::vbn_backward", [&] {
    using A = at::opmath_type<scalar_t>;
    const A slope = static_cast<A>(negative_slope);
    const A *mp = mean.const_data_ptr<A>(), *ip = invstd.const_data_ptr<A>();
    const A *gp = ptr_or_null<A>(gamma), *bp = ptr_or_null<A>(beta);
    launch_reduction(nhwc, N, C, [&](dim3 grid) {
      if (nhwc) {
        pixel_sums_kernel<scalar_t, A><<<grid, kThreads, 0, stream>>>(
            gy.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), mp, ip, gp, bp, slope,
            sums.mutable_data_ptr<A>(), N, C, S);
      } else {
        row_sums_kernel<scalar_t, A><<<grid, kThreads, 0, stream>>>(
            gy.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), mp, ip, gp, bp, slope,
            sums.mutable_data_ptr<A>(), N * C, C, S);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    coefficients_kernel<A><<<grid_size(C, kThreads), kThreads, 0, stream>>>(
        sums.const_data_ptr<A>(), mp, ip, gp, coef.mutable_data_ptr<A>(), grad_gamma.mutable_data_ptr<A>(),
        grad_beta.mutable_data_ptr<A>(), N, C, ref_size, A(1) / static_cast<A>(ref_size + 1),
        A(1) / static_cast<A>(ref_size * S), A(1) / static_cast<A>((ref_size + 1) * S));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const unsigned grid = grid_size(numel, kThreads);
    // The kernel also forms coef's offsets 2 * N * C + stat, stat < N * C: within int32 too.
    dispatch_index_layout(fits_int32(std::max(numel, 3 * N * C), grid, kThreads), nhwc, [&](auto index, auto layout) {
      using index_t = decltype(index);
      grad_kernel<scalar_t, A, index_t, decltype(layout)::value><<<grid, kThreads, 0, stream>>>(
          gy.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), grad_z.mutable_data_ptr<scalar_t>(), mp, ip,
          gp, bp, coef.const_data_ptr<A>(), slope, static_cast<index_t>(numel), static_cast<index_t>(C),
          static_cast<index_t>(S), static_cast<index_t>(N * C));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_z, grad_gamma, grad_beta};
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("vbn_forward", &fastgan::cuda::vbn_forward_cuda);
  m.impl("vbn_backward", &fastgan::cuda::vbn_backward_cuda);
}
