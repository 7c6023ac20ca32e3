// Helpers shared by the fastgan CUDA kernels: argument checks, layout detection,
// launch geometry.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <sstream>
#include <type_traits>

namespace fastgan::cuda {

// Threads per block (an upper bound for the pixel_norm tile kernel).
constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for `work` units of `per_block` each, capped to a few waves: the
// kernels loop grid-stride over the rest.
inline unsigned grid_size(int64_t work, int64_t per_block) {
  const int64_t cap = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 32;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(work, per_block), cap)));
}

// 32-bit index math is much cheaper than 64-bit division; use it only when
// every index the kernel forms (including idx + grid stride) fits.
inline bool fits_int32(int64_t max_numel, unsigned grid, int threads) {
  return max_numel + int64_t{grid} * threads <= INT_MAX;
}

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fastgan_cuda::", op, ": ", name, " must be a CUDA tensor, got device ", t.device());
}

inline void check_same(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                       const char* op) {
  TORCH_CHECK(t.device() == ref.device(), "fastgan_cuda::", op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastgan_cuda::", op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type());
}

// The layout shared by all inputs of a call: contiguous (NCHW) when they all
// are, else channels-last (NHWC, 4-D only). When a tensor is both (C == 1, or
// H == W == 1) the two index maps coincide, so either choice is correct.
inline at::MemoryFormat shared_layout(const char* op, at::TensorList ts) {
  bool nchw = true, nhwc = true;
  for (const auto& t : ts) {
    nchw = nchw && t.is_contiguous();
    nhwc = nhwc && t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast);
  }
  if (nchw) return at::MemoryFormat::Contiguous;
  if (!nhwc) {
    std::ostringstream msg;
    for (const auto& t : ts) msg << " [sizes " << t.sizes() << ", strides " << t.strides() << "]";
    TORCH_CHECK(false, "fastgan_cuda::", op, ": inputs must all be contiguous, or all 4-D and channels-last "
                "contiguous; got", msg.str());
  }
  return at::MemoryFormat::ChannelsLast;
}

// Calls f(index_t{}, std::bool_constant<kNHWC>{}) so that a kernel can be
// instantiated for 32- or 64-bit index math and either layout.
template <typename F>
void dispatch_index_layout(bool use_int32, bool nhwc, F&& f) {
  if (use_int32) {
    nhwc ? f(int32_t{}, std::true_type{}) : f(int32_t{}, std::false_type{});
  } else {
    nhwc ? f(int64_t{}, std::true_type{}) : f(int64_t{}, std::false_type{});
  }
}

// The 2x2 block of a high-resolution [N, C, 2H, 2W] tensor under element i of
// its low-resolution [N, C, H, W] counterpart (both dense in the same layout):
// offset of the top-left element, and the steps to its right and lower
// neighbours. Both layouts flatten to [outer, H, W, inner]: NCHW has
// outer = N * C, inner = 1; NHWC has outer = N, inner = C.
template <typename index_t>
struct Block2x2 {
  index_t top_left, right, down;
};

template <typename index_t, bool kNHWC>
__device__ __forceinline__ Block2x2<index_t> block_2x2(index_t i, index_t H, index_t W, index_t C) {
  index_t t = i, c = 0;
  if constexpr (kNHWC) {
    t = i / C;
    c = i - t * C;
  }
  const index_t w = t % W;
  t /= W;
  const index_t h = t % H;
  const index_t o = t / H;
  const index_t inner = kNHWC ? C : 1;
  const index_t top_left = ((o * (2 * H) + 2 * h) * (2 * W) + 2 * w) * inner + c;
  return {top_left, inner, 2 * W * inner};
}

// rsqrt in the accumulation type (correct to a couple of ulp, no fast-math).
__device__ __forceinline__ float acc_rsqrt(float v) { return rsqrtf(v); }
__device__ __forceinline__ double acc_rsqrt(double v) { return rsqrt(v); }

}  // namespace fastgan::cuda
