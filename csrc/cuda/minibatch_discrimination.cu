// SPEC 2, minibatch discrimination, on the projection M [N, B, C]:
//   o[i, b]     = sum_{j != i} exp(-D[i, j, b]),  D[i, j, b] = sum_c |M[i, b, c] - M[j, b, c]|
//   dM[i, b, c] = -sum_{j != i} (g[i, b] + g[j, b]) exp(-D[i, j, b]) sign(M[i, b, c] - M[j, b, c])
// A block takes kRows rows i of one kernel b (blockIdx.y), a thread per row, and
// walks the rows j in tiles of kTile staged in shared memory (in the accumulation
// type), so that every thread reads the same j at once (a broadcast). The
// block's own rows, and in the backward its dM accumulators, sit in shared
// memory too ([row][c], thread-private), which serves any C. Nothing of size
// N x N is formed; the self term j == i is skipped. float32 accumulation for
// float16/bfloat16 (float64 for float64).
#include "common.cuh"

namespace fastgan::cuda {
namespace {

constexpr int kRows = 128;  // threads per block, one row i each
constexpr int kTile = 128;  // rows j per shared-memory tile

__device__ __forceinline__ float acc_exp(float v) { return expf(v); }
__device__ __forceinline__ double acc_exp(double v) { return exp(v); }

template <typename acc_t>
__device__ __forceinline__ acc_t sign_of(acc_t v) {
  return static_cast<acc_t>((v > acc_t(0)) - (v < acc_t(0)));  // sign(0) = 0
}

// Rows [r0, r0 + count) of kernel b into dst[(r - r0) * C + c] as acc_t, zero past N.
template <typename scalar_t, typename acc_t>
__device__ void stage_rows(const scalar_t* __restrict__ m, acc_t* dst, int64_t r0, int count, int64_t N, int64_t B,
                           int64_t b, int64_t C) {
  for (int64_t k = threadIdx.x; k < count * C; k += blockDim.x) {
    const int64_t r = r0 + k / C, c = k % C;
    dst[k] = r < N ? static_cast<acc_t>(m[(r * B + b) * C + c]) : acc_t(0);
  }
}

template <typename scalar_t, bool kBackward>
__global__ void __launch_bounds__(kRows)
    minibatch_discrimination_kernel(const scalar_t* __restrict__ m, const scalar_t* __restrict__ g,
                                    scalar_t* __restrict__ out, int64_t N, int64_t B, int64_t C, bool include_self) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* rows = reinterpret_cast<acc_t*>(smem_raw);  // [kRows][C]: this block's rows i
  acc_t* cols = rows + kRows * C;                     // [kTile][C]: the current rows j
  acc_t* g_cols = cols + kTile * C;                   // [kTile]: g[j, b] (backward)
  acc_t* dm = g_cols + kTile;                         // [kRows][C]: dM accumulators (backward)

  const int64_t b = blockIdx.y;
  const int t = threadIdx.x;
  const int64_t i0 = int64_t{blockIdx.x} * kRows, i = i0 + t;
  const bool valid = i < N;
  stage_rows(m, rows, i0, kRows, N, B, b, C);
  acc_t* mine = rows + t * C;
  acc_t* my_dm = dm + t * C;
  if constexpr (kBackward) {
    for (int64_t c = 0; c < C; ++c) my_dm[c] = acc_t(0);
  }
  const acc_t gi = kBackward && valid ? static_cast<acc_t>(g[i * B + b]) : acc_t(0);
  acc_t sum = 0;

  for (int64_t j0 = 0; j0 < N; j0 += kTile) {
    const int count = static_cast<int>(std::min<int64_t>(kTile, N - j0));
    __syncthreads();  // the previous tile is consumed (and the rows staged, the first time)
    stage_rows(m, cols, j0, count, N, B, b, C);
    if constexpr (kBackward) {
      if (t < count) g_cols[t] = static_cast<acc_t>(g[(j0 + t) * B + b]);
    }
    __syncthreads();
    if (!valid) continue;
    for (int jj = 0; jj < count; ++jj) {
      if (j0 + jj == i) continue;  // the self term, masked out
      const acc_t* other = cols + jj * C;
      acc_t d = 0;
      for (int64_t c = 0; c < C; ++c) d += fabs(mine[c] - other[c]);
      const acc_t e = acc_exp(-d);
      if constexpr (kBackward) {
        const acc_t w = (gi + g_cols[jj]) * e;
        for (int64_t c = 0; c < C; ++c) my_dm[c] -= w * sign_of(mine[c] - other[c]);
      } else {
        sum += e;
      }
    }
  }

  if constexpr (kBackward) {
    __syncthreads();
    // Each row's C values are contiguous in out: consecutive threads write consecutive ones.
    for (int64_t k = t; k < kRows * C; k += blockDim.x) {
      const int64_t r = i0 + k / C;
      if (r < N) out[(r * B + b) * C + k % C] = static_cast<scalar_t>(dm[k]);
    }
  } else if (valid) {
    out[i * B + b] = static_cast<scalar_t>(include_self ? sum + acc_t(1) : sum);
  }
}

template <typename scalar_t, bool kBackward>
void launch(const scalar_t* m, const scalar_t* g, scalar_t* out, int64_t N, int64_t B, int64_t C, bool include_self) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t floats = kRows * C + kTile * C + (kBackward ? kTile + kRows * C : 0);
  const int64_t smem = floats * int64_t{sizeof(acc_t)};
  const int64_t smem_max = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(smem <= smem_max, "fastgan_cuda::minibatch_discrimination: kernel_dim C = ", C,
              " needs ", smem, " bytes of shared memory per block, more than the device's ", smem_max);
  TORCH_CHECK(B <= 65535, "fastgan_cuda::minibatch_discrimination: at most 65535 kernels B, got ", B);
  auto kernel = minibatch_discrimination_kernel<scalar_t, kBackward>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kRows)), static_cast<unsigned>(B));
  kernel<<<grid, kRows, static_cast<size_t>(smem), at::cuda::getCurrentCUDAStream()>>>(m, g, out, N, B, C,
                                                                                        include_self);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_m(const at::Tensor& m, const char* op) {
  check_cuda(m, op, "M");
  TORCH_CHECK(m.dim() == 3 && m.is_contiguous(), "fastgan_cuda::", op,
              ": M must be a contiguous [N, B, C] tensor, got sizes ", m.sizes(), " and strides ", m.strides());
  TORCH_CHECK(ceil_div(m.size(0), kRows) <= INT_MAX, "fastgan_cuda::", op, ": too many samples (", m.size(0), ")");
}

at::Tensor minibatch_discrimination_cuda(const at::Tensor& m, bool include_self) {
  check_m(m, "minibatch_discrimination");
  c10::cuda::CUDAGuard guard(m.device());
  const int64_t N = m.size(0), B = m.size(1), C = m.size(2);
  at::Tensor o = at::empty({N, B}, m.options());
  if (o.numel() == 0) return o;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, m.scalar_type(),
                                  "fastgan_cuda::minibatch_discrimination", [&] {
    launch<scalar_t, false>(m.const_data_ptr<scalar_t>(), nullptr, o.mutable_data_ptr<scalar_t>(), N, B, C,
                            include_self);
  });
  return o;
}

at::Tensor minibatch_discrimination_backward_cuda(const at::Tensor& grad, const at::Tensor& m) {
  const char* op = "minibatch_discrimination_backward";
  check_m(m, op);
  check_cuda(grad, op, "grad");
  check_same(grad, "grad", m, "M", op);
  const int64_t N = m.size(0), B = m.size(1), C = m.size(2);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == N && grad.size(1) == B && grad.is_contiguous(), "fastgan_cuda::", op,
              ": grad must be a contiguous [N, B] = [", N, ", ", B, "] tensor, got sizes ", grad.sizes(),
              " and strides ", grad.strides());
  c10::cuda::CUDAGuard guard(m.device());
  at::Tensor dm = at::empty(m.sizes(), m.options());
  if (dm.numel() == 0) return dm;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, m.scalar_type(),
                                  "fastgan_cuda::minibatch_discrimination_backward", [&] {
    launch<scalar_t, true>(m.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                           dm.mutable_data_ptr<scalar_t>(), N, B, C, false);
  });
  return dm;
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("minibatch_discrimination", &fastgan::cuda::minibatch_discrimination_cuda);
  m.impl("minibatch_discrimination_backward", &fastgan::cuda::minibatch_discrimination_backward_cuda);
}
