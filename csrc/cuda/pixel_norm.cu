// SPEC 4, pixelwise feature normalization over dim 1:
//   y      = x * r,                               r = rsqrt(mean_c(x^2) + eps)
//   grad_x = r * g - x * r^3 * sum_c(g * x) / C
// x is viewed as [N, C, S] (S = product of the trailing dims). Two kernels:
// - cols: NCHW with S > 1. Channels of a pixel are S apart, so adjacent threads
//   take adjacent pixels (coalesced) and the block's rows split the channels.
// - rows: NHWC, or S == 1. Channels of a pixel are contiguous, so a group of
//   G lanes of one warp reduces a row with shuffles.
#include "common.cuh"

namespace fastgan::cuda {
namespace {

// Shared memory a cols block may use to keep its tile for the second pass:
// small enough for ~6 blocks of 256 threads per SM, and below the 48 KiB that
// needs no opt-in.
constexpr int64_t kTileBudget = 32 * 1024;

// One block = a tile of tp pixels (threadIdx.x) x `rows` channel groups
// (threadIdx.y). Pass 1 reads the tile and reduces; pass 2 writes. With kCache
// pass 2 reads the tile back from shared memory (one pass over global memory);
// without (very large C) it re-reads global memory, mostly from L2.
template <typename scalar_t, bool kBackward, bool kCache>
__global__ void __launch_bounds__(kThreads)
    pixel_norm_cols_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                           scalar_t* __restrict__ out, int64_t P, int64_t C, int64_t S,
                           at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red_ss[kThreads];   // per-thread partial sum of x^2, [rows][tp]
  __shared__ acc_t red_dot[kThreads];  // per-thread partial sum of g*x (backward)
  __shared__ acc_t coef_r[32], coef_k[32];
  extern __shared__ __align__(16) unsigned char smem_raw[];

  const int tp = blockDim.x, rows = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  scalar_t* tile_x = reinterpret_cast<scalar_t*>(smem_raw);  // [C][tp]
  scalar_t* tile_g = tile_x + C * tp;                        // [C][tp], backward

  const int64_t p = int64_t{blockIdx.x} * tp + tx;  // flat pixel index n * S + s
  const bool valid = p < P;
  const int64_t n = valid ? p / S : 0;
  const int64_t base = n * C * S + (p - n * S);  // offset of x[n, 0, s]

  acc_t ss = 0, dot = 0;
  if (valid) {
    for (int64_t c = ty; c < C; c += rows) {
      const scalar_t xv = x[base + c * S];
      const acc_t a = static_cast<acc_t>(xv);
      ss += a * a;
      if constexpr (kCache) tile_x[c * tp + tx] = xv;
      if constexpr (kBackward) {
        const scalar_t gv = g[base + c * S];
        dot += a * static_cast<acc_t>(gv);
        if constexpr (kCache) tile_g[c * tp + tx] = gv;
      }
    }
  }
  red_ss[ty * tp + tx] = ss;
  if constexpr (kBackward) red_dot[ty * tp + tx] = dot;
  __syncthreads();
  if (ty == 0) {
    acc_t s1 = 0, s2 = 0;
    for (int i = 0; i < rows; ++i) {
      s1 += red_ss[i * tp + tx];
      if constexpr (kBackward) s2 += red_dot[i * tp + tx];
    }
    const acc_t r = acc_rsqrt(s1 / static_cast<acc_t>(C) + eps);
    coef_r[tx] = r;
    if constexpr (kBackward) coef_k[tx] = r * r * r * s2 / static_cast<acc_t>(C);
  }
  __syncthreads();
  if (!valid) return;

  const acc_t r = coef_r[tx];
  const acc_t k = kBackward ? coef_k[tx] : acc_t(0);
  for (int64_t c = ty; c < C; c += rows) {
    const int64_t i = base + c * S;
    // Each thread reads back only the tile entries it wrote itself.
    const acc_t a = static_cast<acc_t>(kCache ? tile_x[c * tp + tx] : x[i]);
    if constexpr (kBackward) {
      const acc_t gv = static_cast<acc_t>(kCache ? tile_g[c * tp + tx] : g[i]);
      out[i] = static_cast<scalar_t>(r * gv - a * k);
    } else {
      out[i] = static_cast<scalar_t>(a * r);
    }
  }
}

// Rows of C contiguous values; G lanes (a power of two <= 32) per row, 32 / G
// rows per warp. The loop bound is warp-uniform so every lane reaches the
// full-mask shuffles; lanes past the last row just contribute zeros.
template <typename scalar_t, int G, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    pixel_norm_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                           scalar_t* __restrict__ out, int64_t R, int64_t C, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kRowsPerWarp = 32 / G;
  const int lane = threadIdx.x % 32, gl = lane % G;
  const int64_t warp = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int64_t warp_step = int64_t{gridDim.x} * blockDim.x / 32 * kRowsPerWarp;

  for (int64_t row0 = warp * kRowsPerWarp; row0 < R; row0 += warp_step) {
    const int64_t row = row0 + lane / G;
    const bool valid = row < R;
    const scalar_t* xr = x + row * C;
    const scalar_t* gr = kBackward ? g + row * C : nullptr;
    scalar_t* outr = out + row * C;

    acc_t ss = 0, dot = 0;
    if (valid) {
      for (int64_t c = gl; c < C; c += G) {
        const acc_t a = static_cast<acc_t>(xr[c]);
        ss += a * a;
        if constexpr (kBackward) dot += a * static_cast<acc_t>(gr[c]);
      }
    }
    // xor offsets below G stay inside each aligned group of G lanes.
#pragma unroll
    for (int m = G / 2; m > 0; m /= 2) {
      ss += __shfl_xor_sync(0xffffffffu, ss, m);
      if constexpr (kBackward) dot += __shfl_xor_sync(0xffffffffu, dot, m);
    }
    if (!valid) continue;

    const acc_t r = acc_rsqrt(ss / static_cast<acc_t>(C) + eps);
    const acc_t k = kBackward ? r * r * r * dot / static_cast<acc_t>(C) : acc_t(0);
    for (int64_t c = gl; c < C; c += G) {  // this row was just read: L1/L2 hits
      const acc_t a = static_cast<acc_t>(xr[c]);
      if constexpr (kBackward) {
        outr[c] = static_cast<scalar_t>(r * static_cast<acc_t>(gr[c]) - a * k);
      } else {
        outr[c] = static_cast<scalar_t>(a * r);
      }
    }
  }
}

template <typename scalar_t, bool kBackward>
void launch_cols(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t N, int64_t C, int64_t S,
                 double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  // The widest tile (best coalescing) whose cache fits the budget; else no cache.
  const int64_t bytes_per_pixel = C * int64_t{sizeof(scalar_t)} * (kBackward ? 2 : 1);
  int tp = 32;
  bool cache = false;
  for (int t : {32, 16, 8}) {
    if (t * bytes_per_pixel <= kTileBudget) {
      tp = t;
      cache = true;
      break;
    }
  }
  int rows = 1;  // no more channel groups than channels
  while (rows < C && rows < kThreads / tp) rows *= 2;

  const int64_t P = N * S;
  const int64_t blocks = ceil_div(P, tp);
  TORCH_CHECK(blocks <= INT_MAX, "fastgan_cuda::pixel_norm: too many pixels (", P, ")");
  const dim3 block(tp, rows);
  const size_t smem = cache ? static_cast<size_t>(tp * bytes_per_pixel) : 0;
  auto stream = at::cuda::getCurrentCUDAStream();
  if (cache) {
    pixel_norm_cols_kernel<scalar_t, kBackward, true>
        <<<static_cast<unsigned>(blocks), block, smem, stream>>>(x, g, out, P, C, S, static_cast<acc_t>(eps));
  } else {
    pixel_norm_cols_kernel<scalar_t, kBackward, false>
        <<<static_cast<unsigned>(blocks), block, 0, stream>>>(x, g, out, P, C, S, static_cast<acc_t>(eps));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int G, bool kBackward>
void launch_rows_g(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t R, int64_t C, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const unsigned grid = grid_size(R, kThreads / G);
  pixel_norm_rows_kernel<scalar_t, G, kBackward><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x, g, out, R, C, static_cast<acc_t>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kBackward>
void launch_rows(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t R, int64_t C, double eps) {
  // Narrow groups for small C so that lanes are not left idle.
  if (C > 16) {
    launch_rows_g<scalar_t, 32, kBackward>(x, g, out, R, C, eps);
  } else if (C > 8) {
    launch_rows_g<scalar_t, 16, kBackward>(x, g, out, R, C, eps);
  } else if (C > 4) {
    launch_rows_g<scalar_t, 8, kBackward>(x, g, out, R, C, eps);
  } else {
    launch_rows_g<scalar_t, 4, kBackward>(x, g, out, R, C, eps);
  }
}

// grad is undefined for the forward.
template <bool kBackward>
at::Tensor pixel_norm_impl(const char* op, const at::Tensor& grad, const at::Tensor& x, double eps) {
  check_cuda(x, op, "x");
  TORCH_CHECK(x.dim() >= 2, "fastgan_cuda::", op, ": x must have at least 2 dimensions, got shape ", x.sizes());
  TORCH_CHECK(eps > 0, "fastgan_cuda::", op, ": eps must be positive, got ", eps);
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
                                  kBackward ? "fastgan_cuda::pixel_norm_backward" : "fastgan_cuda::pixel_norm", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = kBackward ? grad.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast || S == 1) {
      launch_rows<scalar_t, kBackward>(xp, gp, outp, N * S, C, eps);  // [N*H*W, C] rows
    } else {
      launch_cols<scalar_t, kBackward>(xp, gp, outp, N, C, S, eps);
    }
  });
  return out;
}

at::Tensor pixel_norm_cuda(const at::Tensor& x, double eps) {
  return pixel_norm_impl<false>("pixel_norm", at::Tensor(), x, eps);
}

at::Tensor pixel_norm_backward_cuda(const at::Tensor& grad, const at::Tensor& x, double eps) {
  return pixel_norm_impl<true>("pixel_norm_backward", grad, x, eps);
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("pixel_norm", &fastgan::cuda::pixel_norm_cuda);
  m.impl("pixel_norm_backward", &fastgan::cuda::pixel_norm_backward_cuda);
}
