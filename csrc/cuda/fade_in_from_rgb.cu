// SPEC 6, discriminator side: out = (1 - alpha) * lrelu(z) + alpha * x_high,
// z = w_mul * W p + b_mul * bias, p = avg_pool_2x2(img) over the Ci colour channels; backward
// with gz = (1 - alpha) * lrelu'(z) * grad (z recomputed):
//   grad_img = up_2x(w_mul * W^T gz) / 4, grad_x_high = alpha * grad,
//   grad_weight = w_mul * sum gz p^T, grad_bias = b_mul * sum gz.
// Tensors are addressed through their strides (NCHW or channels-last alike).
// - forward: a thread an output element, in memory order (coalesced in both layouts);
//   the Ci-colour pooling is recomputed per element from L1/L2.
// - backward, pixels: a thread a low-resolution pixel, looping over the Co channels:
//   grad_x_high, and grad_p for its Ci <= kMaxColours colours, then grad_img's 2x2 blocks.
// - double backward (the gradient penalty's terms, schemas.h): d_grad as the forward, a thread
//   an element; its weight term as the backward's weight sums, with gg_img pooled for p.
// - backward, weights: blocks (o, split) sum gz * p_i and gz over a share of the pixels into
//   partials [split, Co, Ci + 1], added in order by ATen afterwards (deterministic).
#include "common.cuh"

namespace fastgan::cuda {
namespace {

// Colours a backward thread keeps in registers (RGB, RGBA, grey).
constexpr int kMaxColours = 4;
// Blocks per output channel of the weight sums, at most.
constexpr int64_t kMaxSplits = 64;

struct Geometry {
  int64_t N, Ci, Co, H, W;
  int64_t is_n, is_c, is_h, is_w;  // img strides
  int64_t xs_n, xs_c, xs_h, xs_w;  // x_high (and grad, out) strides
};

struct Scalars {
  double alpha, w_mul, b_mul, slope;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t pooled(const scalar_t* img, const Geometry& g, int64_t n, int64_t i, int64_t h,
                                        int64_t w) {
  const scalar_t* p = img + n * g.is_n + i * g.is_c + 2 * h * g.is_h + 2 * w * g.is_w;
  return acc_t(0.25) * (static_cast<acc_t>(p[0]) + static_cast<acc_t>(p[g.is_w]) + static_cast<acc_t>(p[g.is_h]) +
                        static_cast<acc_t>(p[g.is_h + g.is_w]));
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t conv_at(const scalar_t* weight, const scalar_t* bias, const acc_t* p, int64_t o,
                                         const Geometry& g, acc_t w_mul, acc_t b_mul) {
  acc_t z = b_mul * static_cast<acc_t>(bias[o]);
  for (int64_t i = 0; i < g.Ci; ++i) z += w_mul * static_cast<acc_t>(weight[o * g.Ci + i]) * p[i];
  return z;
}

// (n, o, h, w) of element `idx` of x_high in memory order.
template <bool kNHWC>
__device__ __forceinline__ void decode(int64_t idx, const Geometry& g, int64_t& n, int64_t& o, int64_t& h,
                                       int64_t& w) {
  if constexpr (kNHWC) {
    o = idx % g.Co;
    idx /= g.Co;
    w = idx % g.W;
    idx /= g.W;
    h = idx % g.H;
    n = idx / g.H;
  } else {
    w = idx % g.W;
    idx /= g.W;
    h = idx % g.H;
    idx /= g.H;
    o = idx % g.Co;
    n = idx / g.Co;
  }
}

template <typename scalar_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ img, const scalar_t* __restrict__ xh,
                   const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                   Geometry g, Scalars sc, int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t a = static_cast<acc_t>(sc.alpha), wm = static_cast<acc_t>(sc.w_mul), bm = static_cast<acc_t>(sc.b_mul);
  for (int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; idx < numel;
       idx += int64_t{gridDim.x} * blockDim.x) {
    int64_t n, o, h, w;
    decode<kNHWC>(idx, g, n, o, h, w);
    acc_t z = bm * static_cast<acc_t>(bias[o]);
    for (int64_t i = 0; i < g.Ci; ++i)
      z += wm * static_cast<acc_t>(weight[o * g.Ci + i]) * pooled<scalar_t, acc_t>(img, g, n, i, h, w);
    const acc_t y = z > acc_t(0) ? z : z * static_cast<acc_t>(sc.slope);
    const int64_t off = n * g.xs_n + o * g.xs_c + h * g.xs_h + w * g.xs_w;
    out[off] = static_cast<scalar_t>((acc_t(1) - a) * y + a * static_cast<acc_t>(xh[off]));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_pixels_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ img,
                           const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
                           scalar_t* __restrict__ g_img, scalar_t* __restrict__ g_xh, Geometry g, Scalars sc,
                           int64_t pixels) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t a = static_cast<acc_t>(sc.alpha), wm = static_cast<acc_t>(sc.w_mul), bm = static_cast<acc_t>(sc.b_mul);
  const acc_t sl = static_cast<acc_t>(sc.slope);
  for (int64_t q = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; q < pixels; q += int64_t{gridDim.x} * blockDim.x) {
    const int64_t w = q % g.W, h = q / g.W % g.H, n = q / (g.W * g.H);
    acc_t p[kMaxColours], gp[kMaxColours];
    for (int64_t i = 0; i < g.Ci; ++i) {
      p[i] = pooled<scalar_t, acc_t>(img, g, n, i, h, w);
      gp[i] = 0;
    }
    const int64_t pix = n * g.xs_n + h * g.xs_h + w * g.xs_w;
    for (int64_t o = 0; o < g.Co; ++o) {
      const int64_t off = pix + o * g.xs_c;
      const acc_t z = conv_at(weight, bias, p, o, g, wm, bm);
      const acc_t gv = static_cast<acc_t>(grad[off]);
      const acc_t gz = (acc_t(1) - a) * gv * (z > acc_t(0) ? acc_t(1) : sl);
      g_xh[off] = static_cast<scalar_t>(a * gv);
      for (int64_t i = 0; i < g.Ci; ++i) gp[i] += wm * static_cast<acc_t>(weight[o * g.Ci + i]) * gz;
    }
    for (int64_t i = 0; i < g.Ci; ++i) {
      scalar_t* t = g_img + n * g.is_n + i * g.is_c + 2 * h * g.is_h + 2 * w * g.is_w;
      const scalar_t v = static_cast<scalar_t>(acc_t(0.25) * gp[i]);
      t[0] = v;
      t[g.is_w] = v;
      t[g.is_h] = v;
      t[g.is_h + g.is_w] = v;
    }
  }
}

// Block (o = blockIdx.x, split = blockIdx.y), over the pixels split, split + splits, ... (a thread
// each), with gz = (1 - alpha) * lrelu'(z) * grad: the backward (kDouble false) sums
// partial[split, o, i] = sum gz * p_i (i < Ci) and partial[split, o, Ci] = sum gz; the double
// backward's weight term sums partial[split, o, i] = sum gz * q_i, q = avg_pool_2x2(gg_img).
template <typename scalar_t, bool kDouble>
__global__ void __launch_bounds__(kThreads)
    backward_weight_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ img,
                           const scalar_t* __restrict__ gg_img, const scalar_t* __restrict__ weight,
                           const scalar_t* __restrict__ bias, at::opmath_type<scalar_t>* partial, Geometry g,
                           Scalars sc, int64_t pixels) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kThreads];
  const acc_t a = static_cast<acc_t>(sc.alpha), wm = static_cast<acc_t>(sc.w_mul), bm = static_cast<acc_t>(sc.b_mul);
  const acc_t sl = static_cast<acc_t>(sc.slope);
  const int64_t o = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t width = kDouble ? g.Ci : g.Ci + 1;
  acc_t sums[kMaxColours + 1] = {};
  for (int64_t q = split * kThreads + threadIdx.x; q < pixels; q += splits * kThreads) {
    const int64_t w = q % g.W, h = q / g.W % g.H, n = q / (g.W * g.H);
    acc_t p[kMaxColours];
    for (int64_t i = 0; i < g.Ci; ++i) p[i] = pooled<scalar_t, acc_t>(img, g, n, i, h, w);
    const acc_t z = conv_at(weight, bias, p, o, g, wm, bm);
    const acc_t gv = static_cast<acc_t>(grad[n * g.xs_n + o * g.xs_c + h * g.xs_h + w * g.xs_w]);
    const acc_t gz = (acc_t(1) - a) * gv * (z > acc_t(0) ? acc_t(1) : sl);
    for (int64_t i = 0; i < g.Ci; ++i)
      sums[i] += gz * (kDouble ? pooled<scalar_t, acc_t>(gg_img, g, n, i, h, w) : p[i]);
    if (!kDouble) sums[g.Ci] += gz;
  }
  acc_t* row = partial + (split * g.Co + o) * width;
  for (int64_t i = 0; i < width; ++i) {
    smem[threadIdx.x] = sums[i];
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s /= 2) {
      if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) row[i] = smem[0];
    __syncthreads();
  }
}

// The double backward's d_grad = (1 - alpha) * lrelu'(z) * w_mul * W q, q = avg_pool_2x2(gg_img)
// (img's strides): a thread an element, in memory order, as the forward.
template <typename scalar_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    double_backward_grad_kernel(const scalar_t* __restrict__ img, const scalar_t* __restrict__ gg_img,
                                const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
                                scalar_t* __restrict__ d_grad, Geometry g, Scalars sc, int64_t numel) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t a = static_cast<acc_t>(sc.alpha), wm = static_cast<acc_t>(sc.w_mul), bm = static_cast<acc_t>(sc.b_mul);
  for (int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; idx < numel;
       idx += int64_t{gridDim.x} * blockDim.x) {
    int64_t n, o, h, w;
    decode<kNHWC>(idx, g, n, o, h, w);
    acc_t z = bm * static_cast<acc_t>(bias[o]), t = 0;
    // The mask's sum, then the change's: one loop with both sums spilled (bfloat16, sm_90).
    for (int64_t i = 0; i < g.Ci; ++i)
      z += wm * static_cast<acc_t>(weight[o * g.Ci + i]) * pooled<scalar_t, acc_t>(img, g, n, i, h, w);
    for (int64_t i = 0; i < g.Ci; ++i)
      t += wm * static_cast<acc_t>(weight[o * g.Ci + i]) * pooled<scalar_t, acc_t>(gg_img, g, n, i, h, w);
    const acc_t m = z > acc_t(0) ? acc_t(1) : static_cast<acc_t>(sc.slope);
    d_grad[n * g.xs_n + o * g.xs_c + h * g.xs_h + w * g.xs_w] = static_cast<scalar_t>((acc_t(1) - a) * m * t);
  }
}

Geometry geometry(const char* op, const at::Tensor& img, const at::Tensor& xh, const at::Tensor& weight,
                  const at::Tensor& bias) {
  check_cuda(img, op, "img");
  check_cuda(xh, op, "x_high");
  check_cuda(weight, op, "weight");
  check_cuda(bias, op, "bias");
  check_same(img, "img", xh, "x_high", op);
  check_same(weight, "weight", xh, "x_high", op);
  check_same(bias, "bias", xh, "x_high", op);
  TORCH_CHECK(img.dim() == 4 && xh.dim() == 4, "fastgan_cuda::", op, ": img and x_high must be 4-D, got ",
              img.sizes(), " and ", xh.sizes());
  const int64_t n = xh.size(0), co = xh.size(1), h = xh.size(2), w = xh.size(3), ci = img.size(1);
  TORCH_CHECK(img.size(0) == n && img.size(2) == 2 * h && img.size(3) == 2 * w, "fastgan_cuda::", op,
              ": img must be [N, Ci, 2H, 2W] for x_high ", xh.sizes(), ", got ", img.sizes());
  TORCH_CHECK(ci <= kMaxColours, "fastgan_cuda::", op, ": img may have at most ", kMaxColours, " channels, got ", ci);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == co && weight.size(1) == ci && weight.size(2) == 1 &&
                  weight.size(3) == 1 && weight.is_contiguous(),
              "fastgan_cuda::", op, ": weight must be contiguous [", co, ", ", ci, ", 1, 1], got ", weight.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == co && bias.is_contiguous(), "fastgan_cuda::", op,
              ": bias must be contiguous [", co, "], got ", bias.sizes());
  shared_layout(op, {img, xh});
  return {n, ci, co, h, w, img.stride(0), img.stride(1), img.stride(2), img.stride(3),
          xh.stride(0), xh.stride(1), xh.stride(2), xh.stride(3)};
}

at::Tensor fade_in_from_rgb_cuda(const at::Tensor& img, const at::Tensor& x_high, const at::Tensor& weight,
                                 const at::Tensor& bias, double alpha, double w_mul, double b_mul, double slope) {
  const Geometry g = geometry("fade_in_from_rgb", img, x_high, weight, bias);
  c10::cuda::CUDAGuard guard(x_high.device());
  auto out = at::empty_like(x_high);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const bool nhwc = !x_high.is_contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_high.scalar_type(), "fastgan_cuda::fade_in_from_rgb", [&] {
    dispatch_index_layout(false, nhwc, [&](auto, auto layout) {
      forward_kernel<scalar_t, decltype(layout)::value>
          <<<grid_size(numel, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              img.const_data_ptr<scalar_t>(), x_high.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
              bias.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g,
              Scalars{alpha, w_mul, b_mul, slope}, numel);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fade_in_from_rgb_backward_cuda(
    const at::Tensor& grad, const at::Tensor& img, const at::Tensor& weight, const at::Tensor& bias, double alpha,
    double w_mul, double b_mul, double slope) {
  const Geometry g = geometry("fade_in_from_rgb_backward", img, grad, weight, bias);
  c10::cuda::CUDAGuard guard(grad.device());
  auto g_img = at::empty_like(img);
  auto g_xh = at::empty_like(grad);
  const int64_t pixels = g.N * g.H * g.W;
  if (grad.numel() == 0) return {g_img.zero_(), g_xh, at::zeros_like(weight), at::zeros_like(bias)};
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t splits = std::min<int64_t>(kMaxSplits, ceil_div(pixels, kThreads * 16));
  auto partial = at::empty({splits, g.Co, g.Ci + 1}, grad.options().dtype(acc));
  const Scalars sc{alpha, w_mul, b_mul, slope};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "fastgan_cuda::fade_in_from_rgb_backward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_pixels_kernel<scalar_t><<<grid_size(pixels, kThreads), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), img.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
        bias.const_data_ptr<scalar_t>(), g_img.mutable_data_ptr<scalar_t>(), g_xh.mutable_data_ptr<scalar_t>(), g, sc,
        pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_weight_kernel<scalar_t, false>
        <<<dim3(static_cast<unsigned>(g.Co), static_cast<unsigned>(splits)), kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), img.const_data_ptr<scalar_t>(), nullptr, weight.const_data_ptr<scalar_t>(),
            bias.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), g, sc, pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto sums = partial.sum(0);  // [Co, Ci + 1], in a fixed order
  auto g_weight = sums.narrow(1, 0, g.Ci).mul(w_mul).to(weight.scalar_type()).reshape(weight.sizes()).contiguous();
  auto g_bias = sums.select(1, g.Ci).mul(b_mul).to(bias.scalar_type()).contiguous();
  return {g_img, g_xh, g_weight, g_bias};
}

void launch_double_backward_grad(const at::Tensor& img, const at::Tensor& gg_img, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& d_grad, const Geometry& g, double alpha,
                                 double w_mul, double b_mul, double slope) {
  const int64_t numel = d_grad.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d_grad.scalar_type(),
                                  "fastgan_cuda::fade_in_from_rgb_double_backward", [&] {
    dispatch_index_layout(false, !d_grad.is_contiguous(), [&](auto, auto layout) {
      double_backward_grad_kernel<scalar_t, decltype(layout)::value>
          <<<grid_size(numel, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              img.const_data_ptr<scalar_t>(), gg_img.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
              bias.const_data_ptr<scalar_t>(), d_grad.mutable_data_ptr<scalar_t>(), g,
              Scalars{alpha, w_mul, b_mul, slope}, numel);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

std::tuple<at::Tensor, at::Tensor> fade_in_from_rgb_double_backward_cuda(
    const at::Tensor& grad, const at::Tensor& img, const at::Tensor& gg_img, const at::Tensor& weight,
    const at::Tensor& bias, double alpha, double w_mul, double b_mul, double slope, bool need_grad, bool need_weight) {
  const char* op = "fade_in_from_rgb_double_backward";
  const Geometry g = geometry(op, img, grad, weight, bias);
  check_cuda(gg_img, op, "gg_img");
  check_same(gg_img, "gg_img", grad, "grad", op);
  // The kernel reads gg_img with img's offsets: their strides must agree wherever a size is above 1
  // (a dimension of size 1, as the channel of a grey image, has no meaningful stride).
  bool same_offsets = gg_img.sizes() == img.sizes();
  for (int64_t d = 0; same_offsets && d < img.dim(); ++d)
    same_offsets = img.size(d) == 1 || gg_img.stride(d) == img.stride(d);
  TORCH_CHECK(same_offsets, "fastgan_cuda::", op, ": gg_img must have img's shape ", img.sizes(), " and strides ",
              img.strides(), ", got ", gg_img.sizes(), " and ", gg_img.strides());
  c10::cuda::CUDAGuard guard(grad.device());
  auto d_grad = need_grad ? at::empty_like(grad) : at::empty({0}, grad.options());
  const int64_t pixels = g.N * g.H * g.W, numel = grad.numel();
  if (need_grad && numel > 0)
    launch_double_backward_grad(img, gg_img, weight, bias, d_grad, g, alpha, w_mul, b_mul, slope);
  if (!need_weight) return {d_grad, at::empty({0}, weight.options())};
  if (numel == 0) return {d_grad, at::zeros_like(weight)};
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t splits = std::min<int64_t>(kMaxSplits, ceil_div(pixels, kThreads * 16));
  auto partial = at::empty({splits, g.Co, g.Ci}, grad.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "fastgan_cuda::fade_in_from_rgb_double_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_weight_kernel<scalar_t, true>
        <<<dim3(static_cast<unsigned>(g.Co), static_cast<unsigned>(splits)), kThreads, 0,
            at::cuda::getCurrentCUDAStream()>>>(
            grad.const_data_ptr<scalar_t>(), img.const_data_ptr<scalar_t>(), gg_img.const_data_ptr<scalar_t>(),
            weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), g,
            Scalars{alpha, w_mul, b_mul, slope}, pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The partials added in a fixed order, scaled by w_mul (gz carries the 1 - alpha).
  auto d_weight = partial.sum(0).mul(w_mul).to(weight.scalar_type()).reshape(weight.sizes()).contiguous();
  return {d_grad, d_weight};
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("fade_in_from_rgb", &fastgan::cuda::fade_in_from_rgb_cuda);
  m.impl("fade_in_from_rgb_backward", &fastgan::cuda::fade_in_from_rgb_backward_cuda);
  m.impl("fade_in_from_rgb_double_backward", &fastgan::cuda::fade_in_from_rgb_double_backward_cuda);
}
