// SPEC 1, the DCGAN generator block ConvTranspose2d + BatchNorm2d + ReLU (schemas in csrc/schemas.h),
// whose BN + activation ops also serve the discriminator's Conv2d + BatchNorm2d + LeakyReLU (SPEC 7).
// The convolution is cuDNN's (through ATen, fed channels-last so that z comes out NHWC); around it:
// - one pass of per-channel statistics: Welford per thread (of z minus a value of its channel),
//   Chan merges across a warp (shuffles) and a block (shared memory, fixed order), per-block
//   partials merged in a fixed order by a tiny finalize kernel: deterministic, and never
//   E[z^2] - E[z]^2 (channel_stats: conv_transpose_stats on its z, batch_stats on a given z);
// - one fused normalize + activation pass (vectorized, in place or not), act(u) = u > 0 ? u :
//   negative_slope * u (ReLU for slope 0, LeakyReLU otherwise);
// - the BN + activation backward: both sums in one pass (the same reduction machinery), then grad_z.
// z is seen as [outer, C, inner]: NHWC is [N*H*W, C, 1] (threads across channels), NCHW is
// [N, C, H*W] (a block per channel and chunk). Half and bfloat16 accumulate in float.
#include "common.cuh"

#include <initializer_list>
#include <limits>

namespace fastgan::cuda {
namespace {

// ---------------------------------------------------------------------------
// Reduction states. Each has add(z, g, channel params), merge(other, in order), shfl_xor(lane mask),
// and kFields values stored per channel in the partials buffer.

// Per-channel parameters of a reduction (the backward's, with the activation's negative slope;
// unused by Welford).
template <typename acc_t>
struct ChannelParams {
  acc_t mean, invstd, gamma, beta, slope;
};

template <typename acc_t>
__device__ __forceinline__ ChannelParams<acc_t> load_params(const acc_t* mean, const acc_t* invstd,
                                                            const acc_t* gamma, const acc_t* beta, int64_t c,
                                                            acc_t slope) {
  if (mean == nullptr) return {0, 0, 0, 0, slope};
  return {mean[c], invstd[c], gamma ? gamma[c] : acc_t(1), beta ? beta[c] : acc_t(0), slope};
}

// count, mean, M2 (sum of squared deviations from the mean) of z - shift, the shift being a value
// of the channel (p.mean: its first element): the running means stay small, so their rounding
// does not spoil the merges when |mean| >> std.
template <typename acc_t>
struct WelfordState {
  static constexpr int kFields = 3;
  static constexpr bool kShifted = true;
  acc_t n, mean, m2;  // no initializers: __shared__ arrays of states need a trivial type

  __device__ __forceinline__ void add(acc_t z, acc_t, const ChannelParams<acc_t>& p) {
    const acc_t v = z - p.mean;
    n += 1;
    const acc_t d = v - mean;
    mean += d / n;
    m2 += d * (v - mean);
  }
  // Chan et al.: exact in the counts, no cancellation between the two M2.
  __device__ __forceinline__ void merge(const WelfordState& o) {
    const acc_t total = n + o.n;
    if (o.n == 0) return;
    const acc_t d = o.mean - mean;
    const acc_t w = o.n / total;
    mean += d * w;
    m2 += o.m2 + d * d * n * w;
    n = total;
  }
  __device__ __forceinline__ WelfordState shfl_xor(int m) const {
    WelfordState o{};
    o.n = __shfl_xor_sync(0xffffffffu, n, m);
    o.mean = __shfl_xor_sync(0xffffffffu, mean, m);
    o.m2 = __shfl_xor_sync(0xffffffffu, m2, m);
    return o;
  }
  __device__ __forceinline__ void store(acc_t* p, int64_t C) const {
    p[0] = n;
    p[C] = mean;
    p[2 * C] = m2;
  }
  __device__ __forceinline__ void load(const acc_t* p, int64_t C) {
    n = p[0];
    mean = p[C];
    m2 = p[2 * C];
  }
};

// The BN + activation backward sums: s1 = sum(gm), s2 = sum(gm * xhat),
// gm = grad_y * (u > 0 ? 1 : slope), u = xhat * gamma + beta.
template <typename acc_t>
struct BackwardSums {
  static constexpr int kFields = 2;
  static constexpr bool kShifted = false;
  acc_t s1, s2;

  __device__ __forceinline__ void add(acc_t z, acc_t g, const ChannelParams<acc_t>& p) {
    const acc_t xhat = (z - p.mean) * p.invstd;
    // slope 0: a true 0 where u <= 0, as ReLU's backward (not inf * 0)
    const acc_t gm = xhat * p.gamma + p.beta > acc_t(0) ? g : (p.slope == acc_t(0) ? acc_t(0) : g * p.slope);
    s1 += gm;
    s2 += gm * xhat;
  }
  __device__ __forceinline__ void merge(const BackwardSums& o) {
    s1 += o.s1;
    s2 += o.s2;
  }
  __device__ __forceinline__ BackwardSums shfl_xor(int m) const {
    return {__shfl_xor_sync(0xffffffffu, s1, m), __shfl_xor_sync(0xffffffffu, s2, m)};
  }
  __device__ __forceinline__ void store(acc_t* p, int64_t C) const {
    p[0] = s1;
    p[C] = s2;
  }
  __device__ __forceinline__ void load(const acc_t* p, int64_t C) {
    s1 = p[0];
    s2 = p[C];
  }
};

// ---------------------------------------------------------------------------
// Pass 1 of a reduction: block (blockIdx.y = chunk g) writes its partial state of each of its
// channels to partials[g][field][c].

constexpr int kLanes = 32;   // NHWC: channels a block covers (threadIdx.x)
constexpr int kRowsNHWC = 8; // NHWC: rows a block walks at once (threadIdx.y)

// NHWC: z is [R, C]; thread (x, y) owns channel blockIdx.x * 32 + x and rows y, y + 8, ... of its chunk.
template <typename State, typename scalar_t>
__global__ void __launch_bounds__(kLanes* kRowsNHWC)
    reduce_nhwc_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ g,
                       at::opmath_type<scalar_t>* __restrict__ partials, int64_t R, int64_t C,
                       const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* invstd,
                       const at::opmath_type<scalar_t>* gamma, const at::opmath_type<scalar_t>* beta,
                       at::opmath_type<scalar_t> slope) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ State states[kRowsNHWC][kLanes];
  const int64_t c = int64_t{blockIdx.x} * kLanes + threadIdx.x;
  State s{};
  if (c < C) {
    ChannelParams<acc_t> p = load_params(mean, invstd, gamma, beta, c, slope);
    if constexpr (State::kShifted) p.mean = static_cast<acc_t>(z[c]);  // row 0
    const int64_t step = int64_t{gridDim.y} * kRowsNHWC;
    for (int64_t r = int64_t{blockIdx.y} * kRowsNHWC + threadIdx.y; r < R; r += step) {
      const int64_t i = r * C + c;
      s.add(static_cast<acc_t>(z[i]), g ? static_cast<acc_t>(g[i]) : acc_t(0), p);
    }
  }
  states[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int y = 1; y < kRowsNHWC; ++y) s.merge(states[y][threadIdx.x]);
    s.store(partials + int64_t{blockIdx.y} * State::kFields * C + c, C);
  }
}

constexpr int kThreadsNCHW = 256;

// NCHW: z is [N, C, S]; block (c, g) walks the N * S values of channel c, a chunk's threads
// adjacent along S (coalesced); warp shuffles then shared memory merge them.
template <typename State, typename scalar_t>
__global__ void __launch_bounds__(kThreadsNCHW)
    reduce_nchw_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ g,
                       at::opmath_type<scalar_t>* __restrict__ partials, int64_t N, int64_t C, int64_t S,
                       const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* invstd,
                       const at::opmath_type<scalar_t>* gamma, const at::opmath_type<scalar_t>* beta,
                       at::opmath_type<scalar_t> slope) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kWarps = kThreadsNCHW / 32;
  __shared__ State states[kWarps];
  const int64_t c = blockIdx.x;
  ChannelParams<acc_t> p = load_params(mean, invstd, gamma, beta, c, slope);
  if constexpr (State::kShifted) p.mean = static_cast<acc_t>(z[c * S]);  // sample 0, pixel 0
  State s{};
  const int64_t total = N * S, step = int64_t{gridDim.y} * kThreadsNCHW;
  for (int64_t e = int64_t{blockIdx.y} * kThreadsNCHW + threadIdx.x; e < total; e += step) {
    const int64_t n = e / S;
    const int64_t i = (n * C + c) * S + (e - n * S);
    s.add(static_cast<acc_t>(z[i]), g ? static_cast<acc_t>(g[i]) : acc_t(0), p);
  }
#pragma unroll
  for (int m = 16; m > 0; m /= 2) s.merge(s.shfl_xor(m));
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) states[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) s.merge(states[w]);
    s.store(partials + int64_t{blockIdx.y} * State::kFields * C + c, C);
  }
}

// Runs pass 1 over z (and g, if given) in its layout; returns the partials [G, kFields, C].
template <typename State, typename scalar_t>
at::Tensor reduce_channels(const at::Tensor& z, const at::Tensor& g, bool nhwc, const at::Tensor& mean,
                           const at::Tensor& invstd, const at::Tensor& gamma, const at::Tensor& beta,
                           at::opmath_type<scalar_t> slope) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = z.size(0), C = z.size(1), S = z.numel() / (N * C);
  const int64_t target_blocks = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 4;
  // Enough blocks to fill the GPU, but several values per thread.
  int64_t blocks_c, max_chunks;
  if (nhwc) {
    blocks_c = ceil_div(C, kLanes);
    max_chunks = ceil_div(N * S, kRowsNHWC * 4);
  } else {
    blocks_c = C;
    max_chunks = ceil_div(N * S, kThreadsNCHW * 4);
  }
  const int64_t chunks = std::clamp<int64_t>(ceil_div(target_blocks, blocks_c), 1, std::min<int64_t>(max_chunks, 65535));
  TORCH_CHECK(blocks_c <= INT_MAX, "fastgan_cuda: too many channels (", C, ")");
  at::Tensor partials = at::empty({chunks, State::kFields, C}, z.options().dtype(c10::CppTypeToScalarType<acc_t>::value));

  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<acc_t>() : nullptr; };
  const scalar_t* gp = g.defined() ? g.const_data_ptr<scalar_t>() : nullptr;
  const dim3 grid(static_cast<unsigned>(blocks_c), static_cast<unsigned>(chunks));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (nhwc) {
    reduce_nhwc_kernel<State, scalar_t><<<grid, dim3(kLanes, kRowsNHWC), 0, stream>>>(
        z.const_data_ptr<scalar_t>(), gp, partials.mutable_data_ptr<acc_t>(), N * S, C, ptr(mean), ptr(invstd),
        ptr(gamma), ptr(beta), slope);
  } else {
    reduce_nchw_kernel<State, scalar_t><<<grid, kThreadsNCHW, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), gp, partials.mutable_data_ptr<acc_t>(), N, C, S, ptr(mean), ptr(invstd),
        ptr(gamma), ptr(beta), slope);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partials;
}

// The partials [chunks][kFields][C] of channel c, merged in chunk order.
template <typename State, typename acc_t>
__device__ __forceinline__ State merge_partials(const acc_t* partials, int64_t chunks, int64_t C, int64_t c) {
  State s{}, o{};
  for (int64_t k = 0; k < chunks; ++k) {
    o.load(partials + k * State::kFields * C + c, C);
    s.merge(o);
  }
  return s;
}

// Channel c's mean and biased variance from the partials merged in chunk order, stored and returned
// (finalize_stats_kernel, stats_finalize_kernel).
template <typename acc_t>
struct MeanVar {
  acc_t mean, var;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ MeanVar<acc_t> store_channel_stats(const acc_t* partials, const scalar_t* z,
                                                              int64_t shift_stride, int64_t chunks, int64_t C,
                                                              int64_t c, acc_t* mean, acc_t* var) {
  const auto s = merge_partials<WelfordState<acc_t>>(partials, chunks, C, c);
  const MeanVar<acc_t> out{static_cast<acc_t>(z[c * shift_stride]) + s.mean, s.m2 / s.n};
  mean[c] = out.mean;
  var[c] = out.var;
  return out;
}

// Pass 2 of the statistics: per channel, the partials merged in chunk order -> mean, biased var.
// The shift of channel c is z[c * shift_stride] (its first element).
template <typename scalar_t, typename acc_t>
__global__ void finalize_stats_kernel(const acc_t* __restrict__ partials, const scalar_t* __restrict__ z,
                                      int64_t shift_stride, acc_t* __restrict__ mean, acc_t* __restrict__ var,
                                      int64_t chunks, int64_t C) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= C) return;
  store_channel_stats(partials, z, shift_stride, chunks, C, c, mean, var);
}

// The backward sums merged in chunk order -> grad_gamma = s2, grad_beta = s1, and the
// coefficients of grad_z = k * (gm - a - xhat * b): k = gamma * invstd, a = s1 / n, b = s2 / n.
template <typename acc_t>
__global__ void finalize_backward_kernel(const acc_t* __restrict__ partials, const acc_t* __restrict__ invstd,
                                         const acc_t* __restrict__ gamma, acc_t* __restrict__ grad_gamma,
                                         acc_t* __restrict__ grad_beta, acc_t* __restrict__ coef, int64_t chunks,
                                         int64_t C, acc_t n) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const auto s = merge_partials<BackwardSums<acc_t>>(partials, chunks, C, c);
  grad_gamma[c] = s.s2;
  grad_beta[c] = s.s1;
  if (coef == nullptr) return;  // bn_relu_backward_reduce: the sums alone
  coef[c] = (gamma ? gamma[c] : acc_t(1)) * invstd[c];
  coef[C + c] = s.s1 / n;
  coef[2 * C + c] = s.s2 / n;
}

// bn_relu_backward_elemt's coefficients, finalize_backward_kernel's from given sums over *count values.
template <typename acc_t>
__global__ void elemt_coef_kernel(const acc_t* __restrict__ sum_dy_xhat, const acc_t* __restrict__ sum_dy,
                                  const acc_t* __restrict__ count, const acc_t* __restrict__ invstd,
                                  const acc_t* __restrict__ gamma, acc_t* __restrict__ coef, int64_t C) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const acc_t n = *count;
  coef[c] = (gamma ? gamma[c] : acc_t(1)) * invstd[c];
  coef[C + c] = sum_dy[c] / n;
  coef[2 * C + c] = sum_dy_xhat[c] / n;
}

// ---------------------------------------------------------------------------
// Elementwise passes, kVec values a thread at a time (16-byte accesses when the sizes allow).

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

template <typename index_t, bool kNHWC>
__device__ __forceinline__ index_t channel_of(index_t i, index_t C, index_t S) {
  if constexpr (kNHWC) {
    return i % C;
  } else {
    return (i / S) % C;
  }
}

// y = act((z - mean) * scale + shift), act(u) = u > 0 ? u : slope * u (NaN stays NaN); z and y may
// alias (bn_relu_).
template <typename scalar_t, int kVec, typename index_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    bn_relu_kernel(const scalar_t* z, scalar_t* y, const at::opmath_type<scalar_t>* __restrict__ mean,
                   const at::opmath_type<scalar_t>* __restrict__ scale,
                   const at::opmath_type<scalar_t>* __restrict__ shift, at::opmath_type<scalar_t> slope,
                   index_t packs, index_t C, index_t S) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const index_t stride = index_t(gridDim.x) * index_t(blockDim.x);
  for (index_t k = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); k < packs; k += stride) {
    P p = reinterpret_cast<const P*>(z)[k];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const index_t c = channel_of<index_t, kNHWC>(k * kVec + j, C, S);
      const acc_t v = (static_cast<acc_t>(p.v[j]) - mean[c]) * scale[c] + shift[c];
      // slope 0 is ReLU exactly (0, not -0 or inf * 0); NaN stays NaN
      p.v[j] = static_cast<scalar_t>(v > acc_t(0) || v != v ? v : (slope == acc_t(0) ? acc_t(0) : v * slope));
    }
    reinterpret_cast<P*>(y)[k] = p;
  }
}

// grad_z = k * (gm - a - xhat * b), coef = [k | a | b] per channel (finalize_backward_kernel).
template <typename scalar_t, int kVec, typename index_t, bool kNHWC>
__global__ void __launch_bounds__(kThreads)
    bn_relu_grad_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ z,
                        scalar_t* __restrict__ grad_z, const at::opmath_type<scalar_t>* __restrict__ mean,
                        const at::opmath_type<scalar_t>* __restrict__ invstd,
                        const at::opmath_type<scalar_t>* __restrict__ gamma,
                        const at::opmath_type<scalar_t>* __restrict__ beta,
                        const at::opmath_type<scalar_t>* __restrict__ coef, at::opmath_type<scalar_t> slope,
                        index_t packs, index_t C, index_t S) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const index_t stride = index_t(gridDim.x) * index_t(blockDim.x);
  for (index_t k = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); k < packs; k += stride) {
    const P zp = reinterpret_cast<const P*>(z)[k];
    const P gp = reinterpret_cast<const P*>(grad_y)[k];
    P out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const index_t c = channel_of<index_t, kNHWC>(k * kVec + j, C, S);
      const ChannelParams<acc_t> p = load_params(mean, invstd, gamma, beta, c, slope);
      const acc_t xhat = (static_cast<acc_t>(zp.v[j]) - p.mean) * p.invstd;
      const acc_t g = static_cast<acc_t>(gp.v[j]);
      // slope 0: a true 0 where u <= 0, as ReLU's backward (not inf * 0)
    const acc_t gm = xhat * p.gamma + p.beta > acc_t(0) ? g : (p.slope == acc_t(0) ? acc_t(0) : g * p.slope);
      out.v[j] = static_cast<scalar_t>(coef[c] * (gm - coef[C + c] - xhat * coef[2 * C + c]));
    }
    reinterpret_cast<P*>(grad_z)[k] = out;
  }
}

// Calls f(std::integral_constant<int, kVec>{}) with the widest pack (up to 16 bytes) that divides
// numel and to which every pointer is aligned.
template <typename scalar_t, typename F>
void dispatch_vec(int64_t numel, std::initializer_list<const void*> ptrs, F&& f) {
  constexpr int kWide = std::max<int>(1, 16 / sizeof(scalar_t));
  bool ok = numel % kWide == 0;
  for (const void* p : ptrs) ok = ok && reinterpret_cast<uintptr_t>(p) % (kWide * sizeof(scalar_t)) == 0;
  if (ok) {
    f(std::integral_constant<int, kWide>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// ---------------------------------------------------------------------------
// Host side.

at::ScalarType acc_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_vector(const at::Tensor& v, const char* op, const char* name, const at::Tensor& z) {
  check_cuda(v, op, name);
  TORCH_CHECK(v.device() == z.device(), "fastgan_cuda::", op, ": ", name, " is on ", v.device(), " but z is on ",
              z.device());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == z.size(1) && v.is_contiguous(), "fastgan_cuda::", op, ": ", name,
              " must be a contiguous vector of ", z.size(1), " values, got shape ", v.sizes());
  TORCH_CHECK(v.scalar_type() == acc_type(z), "fastgan_cuda::", op, ": ", name, " must be ", acc_type(z),
              " for ", z.scalar_type(), " z, got ", v.scalar_type());
}

void check_z(const at::Tensor& z, const char* op, const char* name) {
  check_cuda(z, op, name);
  TORCH_CHECK(z.dim() == 4, "fastgan_cuda::", op, ": ", name, " must be 4-D, got shape ", z.sizes());
}

// The convolution of ATen (cuDNN), channels-last in and out.
at::Tensor conv_transpose_nhwc(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                               const char* op) {
  check_cuda(x, op, "x");
  check_cuda(weight, op, "weight");
  check_same(weight, "weight", x, "x", op);
  TORCH_CHECK(x.dim() == 4, "fastgan_cuda::", op, ": x must be 4-D, got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == x.size(1), "fastgan_cuda::", op,
              ": weight must be [C_in, C_out, kH, kW] with C_in = ", x.size(1), ", got shape ", weight.sizes());
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor z = at::conv_transpose2d(x.contiguous(cl), weight.contiguous(cl), bias, stride, padding,
                                      output_padding, 1, {1, 1});
  return z.contiguous(cl);
}

// The per-channel mean and biased variance of a 4-D z (dense, NHWC or NCHW as `nhwc` says) over
// (N, H, W): the Welford pass and the finalize, float32 (float64 for double z); NaN for an empty z.
// The shift of channel c is its first element: z[c] in NHWC, z[c * H * W] in NCHW.
std::tuple<at::Tensor, at::Tensor> channel_stats(const at::Tensor& z, bool nhwc) {
  const int64_t C = z.size(1);
  at::Tensor mean = at::empty({C}, z.options().dtype(acc_type(z)));
  at::Tensor var = at::empty({C}, z.options().dtype(acc_type(z)));
  if (z.numel() == 0) {
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {mean, var};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cuda::channel_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor partials = reduce_channels<WelfordState<acc_t>, scalar_t>(z, at::Tensor(), nhwc, {}, {}, {}, {},
                                                                         acc_t(0));
    const int64_t chunks = partials.size(0);
    finalize_stats_kernel<scalar_t, acc_t><<<static_cast<unsigned>(ceil_div(C, kThreads)), kThreads, 0,
                                             at::cuda::getCurrentCUDAStream()>>>(
        partials.const_data_ptr<acc_t>(), z.const_data_ptr<scalar_t>(),
        /*shift_stride=*/nhwc ? int64_t{1} : z.size(2) * z.size(3), mean.mutable_data_ptr<acc_t>(),
        var.mutable_data_ptr<acc_t>(), chunks, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_transpose_stats_cuda(const at::Tensor& x,
                                                                         const at::Tensor& weight,
                                                                         at::IntArrayRef stride,
                                                                         at::IntArrayRef padding,
                                                                         at::IntArrayRef output_padding) {
  const char* op = "conv_transpose_stats";
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor z = conv_transpose_nhwc(x, weight, at::Tensor(), stride, padding, output_padding, op);
  auto [mean, var] = channel_stats(z, /*nhwc=*/true);
  return {z, mean, var};
}

// The conv bias: a vector of C_out values in x's dtype, on x's device.
void check_conv_bias(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const char* op) {
  check_cuda(bias, op, "bias");
  check_same(bias, "bias", x, "x", op);
  TORCH_CHECK(bias.dim() == 1 && weight.dim() == 4 && bias.size(0) == weight.size(1), "fastgan_cuda::", op,
              ": bias must be a vector of C_out = ", weight.dim() == 4 ? weight.size(1) : -1, " values, got shape ",
              bias.sizes());
}

at::Tensor conv_transpose_cuda(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef output_padding,
                               const std::optional<at::Tensor>& bias) {
  const char* op = "conv_transpose";
  c10::cuda::CUDAGuard guard(x.device());
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) check_conv_bias(x, weight, *bias, op);
  return conv_transpose_nhwc(x, weight, has_bias ? *bias : at::Tensor(), stride, padding, output_padding, op);
}

// The statistics of a convolution run elsewhere (the discriminator's Conv2d, SPEC 7), in z's layout.
std::tuple<at::Tensor, at::Tensor> batch_stats_cuda(const at::Tensor& z) {
  const char* op = "batch_stats";
  check_z(z, op, "z");
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), "fastgan_cuda::", op, ": z must be a floating-point tensor, got ",
              z.scalar_type());
  const bool nhwc = shared_layout(op, {z}) == at::MemoryFormat::ChannelsLast;
  c10::cuda::CUDAGuard guard(z.device());
  return channel_stats(z, nhwc);
}

void bn_relu_into(const at::Tensor& z, const at::Tensor& y, const at::Tensor& mean, const at::Tensor& scale,
                  const at::Tensor& shift, double negative_slope, bool nhwc) {
  if (z.numel() == 0) return;
  const int64_t numel = z.numel(), C = z.size(1), S = z.size(2) * z.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cuda::bn_relu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_vec<scalar_t>(numel, {z.const_data_ptr(), y.const_data_ptr()}, [&](auto vec) {
      constexpr int kVec = decltype(vec)::value;
      const int64_t packs = numel / kVec;
      const unsigned grid = grid_size(packs, kThreads);
      dispatch_index_layout(fits_int32(numel, grid, kThreads), nhwc, [&](auto index, auto layout) {
        using index_t = decltype(index);
        bn_relu_kernel<scalar_t, kVec, index_t, decltype(layout)::value>
            <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                z.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
                scale.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(), static_cast<acc_t>(negative_slope),
                static_cast<index_t>(packs), static_cast<index_t>(C), static_cast<index_t>(S));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

bool check_bn_relu(const char* op, const at::Tensor& z, const at::Tensor& mean, const at::Tensor& scale,
                   const at::Tensor& shift) {
  check_z(z, op, "z");
  check_vector(mean, op, "mean", z);
  check_vector(scale, op, "scale", z);
  check_vector(shift, op, "shift", z);
  return shared_layout(op, {z}) == at::MemoryFormat::ChannelsLast;
}

at::Tensor bn_relu_cuda(const at::Tensor& z, const at::Tensor& mean, const at::Tensor& scale, const at::Tensor& shift,
                        double negative_slope) {
  const bool nhwc = check_bn_relu("bn_relu", z, mean, scale, shift);
  c10::cuda::CUDAGuard guard(z.device());
  at::Tensor y = at::empty_like(z);  // preserves the (dense) layout
  bn_relu_into(z, y, mean, scale, shift, negative_slope, nhwc);
  return y;
}

void bn_relu_inplace_cuda(const at::Tensor& z, const at::Tensor& mean, const at::Tensor& scale,
                          const at::Tensor& shift, double negative_slope) {
  const bool nhwc = check_bn_relu("bn_relu_", z, mean, scale, shift);
  c10::cuda::CUDAGuard guard(z.device());
  bn_relu_into(z, z, mean, scale, shift, negative_slope, nhwc);
}

// The backward's inputs checked: grad_y in z's layout (it may come in either, schemas.h), gamma and
// beta (undefined for affine=False), and whether z is channels-last.
struct BackwardInputs {
  at::Tensor grad_y, gamma, beta;
  bool nhwc;
};

BackwardInputs check_backward(const at::Tensor& grad_y_any, const at::Tensor& z, const at::Tensor& mean,
                              const at::Tensor& invstd, const std::optional<at::Tensor>& gamma_opt,
                              const std::optional<at::Tensor>& beta_opt, const char* op) {
  check_z(z, op, "z");
  check_cuda(grad_y_any, op, "grad_y");
  TORCH_CHECK(grad_y_any.sizes() == z.sizes(), "fastgan_cuda::", op, ": grad_y has shape ", grad_y_any.sizes(),
              " but z has shape ", z.sizes());
  const at::Tensor grad_y = grad_y_any.contiguous(
      z.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
  check_same(grad_y, "grad_y", z, "z", op);
  check_vector(mean, op, "mean", z);
  check_vector(invstd, op, "invstd", z);
  const at::Tensor gamma = gamma_opt.value_or(at::Tensor());
  const at::Tensor beta = beta_opt.value_or(at::Tensor());
  if (gamma.defined()) check_vector(gamma, op, "gamma", z);
  if (beta.defined()) check_vector(beta, op, "beta", z);
  return {grad_y, gamma, beta, shared_layout(op, {grad_y, z}) == at::MemoryFormat::ChannelsLast};
}

template <typename acc_t>
const acc_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

// The reduce pass and its merge: grad_gamma (sum gm * xhat), grad_beta (sum gm), and with coef
// [3, C] given the coefficients of grad_z.
template <typename scalar_t>
void backward_sums(const BackwardInputs& in, const at::Tensor& z, const at::Tensor& mean, const at::Tensor& invstd,
                   at::opmath_type<scalar_t> slope, const at::Tensor& grad_gamma, const at::Tensor& grad_beta,
                   const at::Tensor& coef) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = z.size(1);
  const at::Tensor partials =
      reduce_channels<BackwardSums<acc_t>, scalar_t>(z, in.grad_y, in.nhwc, mean, invstd, in.gamma, in.beta, slope);
  finalize_backward_kernel<acc_t>
      <<<static_cast<unsigned>(ceil_div(C, kThreads)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          partials.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(in.gamma),
          grad_gamma.mutable_data_ptr<acc_t>(), grad_beta.mutable_data_ptr<acc_t>(),
          coef.defined() ? coef.mutable_data_ptr<acc_t>() : nullptr, partials.size(0), C,
          static_cast<acc_t>(z.numel() / C));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// grad_z = k * (gm - a - xhat * b) with coef = [k | a | b].
template <typename scalar_t>
void backward_grad_z(const BackwardInputs& in, const at::Tensor& z, const at::Tensor& grad_z, const at::Tensor& mean,
                     const at::Tensor& invstd, at::opmath_type<scalar_t> slope, const at::Tensor& coef) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = z.size(1), numel = z.numel(), S = z.size(2) * z.size(3);
  dispatch_vec<scalar_t>(numel, {in.grad_y.const_data_ptr(), z.const_data_ptr(), grad_z.const_data_ptr()},
                         [&](auto vec) {
    constexpr int kVec = decltype(vec)::value;
    const int64_t packs = numel / kVec;
    const unsigned grid = grid_size(packs, kThreads);
    dispatch_index_layout(fits_int32(numel, grid, kThreads), in.nhwc, [&](auto index, auto layout) {
      using index_t = decltype(index);
      bn_relu_grad_kernel<scalar_t, kVec, index_t, decltype(layout)::value>
          <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              in.grad_y.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), grad_z.mutable_data_ptr<scalar_t>(),
              mean.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(in.gamma),
              ptr_or_null<acc_t>(in.beta), coef.const_data_ptr<acc_t>(), slope, static_cast<index_t>(packs),
              static_cast<index_t>(C), static_cast<index_t>(S));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward_cuda(const at::Tensor& grad_y, const at::Tensor& z,
                                                                     const at::Tensor& mean,
                                                                     const at::Tensor& invstd,
                                                                     const std::optional<at::Tensor>& gamma,
                                                                     const std::optional<at::Tensor>& beta,
                                                                     double negative_slope) {
  const BackwardInputs in = check_backward(grad_y, z, mean, invstd, gamma, beta, "bn_relu_backward");
  c10::cuda::CUDAGuard guard(z.device());
  const int64_t C = z.size(1);
  at::Tensor grad_z = at::empty_like(z);
  if (z.numel() == 0) return {grad_z, at::zeros({C}, mean.options()), at::zeros({C}, mean.options())};
  // Written whole by the finalize kernel: no fill launches.
  at::Tensor grad_gamma = at::empty({C}, mean.options());
  at::Tensor grad_beta = at::empty({C}, mean.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cuda::bn_relu_backward", [&] {
    const auto slope = static_cast<at::opmath_type<scalar_t>>(negative_slope);
    const at::Tensor coef = at::empty({3, C}, mean.options());
    backward_sums<scalar_t>(in, z, mean, invstd, slope, grad_gamma, grad_beta, coef);
    backward_grad_z<scalar_t>(in, z, grad_z, mean, invstd, slope, coef);
  });
  return {grad_z, grad_gamma, grad_beta};
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_reduce_cuda(const at::Tensor& grad_y, const at::Tensor& z,
                                                                const at::Tensor& mean, const at::Tensor& invstd,
                                                                const std::optional<at::Tensor>& gamma,
                                                                const std::optional<at::Tensor>& beta,
                                                                double negative_slope) {
  const BackwardInputs in = check_backward(grad_y, z, mean, invstd, gamma, beta, "bn_relu_backward_reduce");
  c10::cuda::CUDAGuard guard(z.device());
  const int64_t C = z.size(1);
  if (z.numel() == 0) return {at::zeros({C}, mean.options()), at::zeros({C}, mean.options())};
  at::Tensor sum_dy_xhat = at::empty({C}, mean.options());
  at::Tensor sum_dy = at::empty({C}, mean.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cuda::bn_relu_backward_reduce",
                                  [&] {
    backward_sums<scalar_t>(in, z, mean, invstd, static_cast<at::opmath_type<scalar_t>>(negative_slope), sum_dy_xhat,
                            sum_dy, at::Tensor());
  });
  return {sum_dy_xhat, sum_dy};
}

at::Tensor bn_relu_backward_elemt_cuda(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& mean,
                                       const at::Tensor& invstd, const std::optional<at::Tensor>& gamma,
                                       const std::optional<at::Tensor>& beta, double negative_slope,
                                       const at::Tensor& sum_dy_xhat, const at::Tensor& sum_dy,
                                       const at::Tensor& count) {
  const char* op = "bn_relu_backward_elemt";
  const BackwardInputs in = check_backward(grad_y, z, mean, invstd, gamma, beta, op);
  check_vector(sum_dy_xhat, op, "sum_dy_xhat", z);
  check_vector(sum_dy, op, "sum_dy", z);
  check_cuda(count, op, "count");
  TORCH_CHECK(count.numel() == 1 && count.scalar_type() == acc_type(z) && count.device() == z.device(),
              "fastgan_cuda::", op, ": count must be a one-element ", acc_type(z), " tensor on z's device, got ",
              count.scalar_type(), " of shape ", count.sizes());
  c10::cuda::CUDAGuard guard(z.device());
  const int64_t C = z.size(1);
  at::Tensor grad_z = at::empty_like(z);
  if (z.numel() == 0) return grad_z;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cuda::bn_relu_backward_elemt",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor coef = at::empty({3, C}, mean.options());
    elemt_coef_kernel<acc_t><<<static_cast<unsigned>(ceil_div(C, kThreads)), kThreads, 0,
                               at::cuda::getCurrentCUDAStream()>>>(
        sum_dy_xhat.const_data_ptr<acc_t>(), sum_dy.const_data_ptr<acc_t>(), count.const_data_ptr<acc_t>(),
        invstd.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(in.gamma), coef.mutable_data_ptr<acc_t>(), C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    backward_grad_z<scalar_t>(in, z, grad_z, mean, invstd, static_cast<acc_t>(negative_slope), coef);
  });
  return grad_z;
}

// bn_finalize (schemas.h) in one block: its threads loop over the channels, and the block reads
// num_batches_tracked before one thread increments it (a grid of blocks could read it after).
// FinalizeArgs: its arguments besides mean and var (batch_stats_finalize's too).
template <typename acc_t, typename run_t, typename bias_t>
struct FinalizeArgs {
  const acc_t* gamma;
  const acc_t* beta;
  acc_t eps;
  run_t* running_mean;
  run_t* running_var;
  int64_t* num_batches_tracked;
  const bias_t* bias;
  double momentum;
  acc_t unbias;
  acc_t* invstd;
  acc_t* scale;
  acc_t* shift;
  int64_t C;
};

// The momentum of this call's running update; num_batches_tracked incremented once the whole block
// has read it (a grid of blocks could read it after).
template <typename acc_t, typename run_t, typename bias_t>
__device__ __forceinline__ acc_t finalize_momentum(const FinalizeArgs<acc_t, run_t, bias_t>& a) {
  double m = a.momentum;
  if (a.running_mean != nullptr && a.num_batches_tracked != nullptr) {
    const int64_t n = *a.num_batches_tracked + 1;
    if (a.momentum < 0) m = 1.0 / static_cast<double>(n);
    __syncthreads();  // every thread has read the count before it changes
    if (threadIdx.x == 0) *a.num_batches_tracked = n;
  }
  return static_cast<acc_t>(m);
}

template <typename acc_t, typename run_t, typename bias_t>
__device__ __forceinline__ void finalize_channel(const FinalizeArgs<acc_t, run_t, bias_t>& a, int64_t c, acc_t mean,
                                                 acc_t var, acc_t m) {
  const acc_t is = acc_rsqrt(var + a.eps);
  a.invstd[c] = is;
  a.scale[c] = a.gamma ? a.gamma[c] * is : is;
  a.shift[c] = a.beta ? a.beta[c] : acc_t(0);
  if (a.running_mean != nullptr) {
    const acc_t batch_mean = mean + (a.bias ? static_cast<acc_t>(a.bias[c]) : acc_t(0));
    const acc_t rm = static_cast<acc_t>(a.running_mean[c]), rv = static_cast<acc_t>(a.running_var[c]);
    a.running_mean[c] = static_cast<run_t>(rm + m * (batch_mean - rm));
    a.running_var[c] = static_cast<run_t>(rv + m * (var * a.unbias - rv));
  }
}

template <typename acc_t, typename run_t, typename bias_t>
__global__ void __launch_bounds__(kThreads)
    bn_finalize_kernel(const acc_t* __restrict__ mean, const acc_t* __restrict__ var,
                       const FinalizeArgs<acc_t, run_t, bias_t> a) {
  const acc_t m = finalize_momentum(a);
  for (int64_t c = threadIdx.x; c < a.C; c += blockDim.x) finalize_channel(a, c, mean[c], var[c], m);
}

// batch_stats_finalize: finalize_stats_kernel's merge and bn_finalize_kernel in one block.
template <typename scalar_t, typename acc_t, typename run_t, typename bias_t>
__global__ void __launch_bounds__(kThreads)
    stats_finalize_kernel(const acc_t* __restrict__ partials, const scalar_t* __restrict__ z, int64_t shift_stride,
                          int64_t chunks, acc_t* __restrict__ mean, acc_t* __restrict__ var,
                          const FinalizeArgs<acc_t, run_t, bias_t> a) {
  const acc_t m = finalize_momentum(a);
#pragma unroll 1  // unrolled, the variants with float64 running statistics spilled 8 bytes (ptxas -v)
  for (int64_t c = threadIdx.x; c < a.C; c += blockDim.x) {
    const auto s = store_channel_stats(partials, z, shift_stride, chunks, a.C, c, mean, var);
    finalize_channel(a, c, s.mean, s.var, m);
  }
}

// bn_gather_finalize: the processes' rows (count, mean [C], var [C]) merged in row order (Chan), then
// bn_finalize_kernel's work with the running variance unbiased by the merged count, in one block.
template <typename acc_t, typename run_t, typename bias_t>
__global__ void __launch_bounds__(kThreads)
    gather_finalize_kernel(const acc_t* __restrict__ stats, int64_t rows, acc_t* __restrict__ mean,
                           acc_t* __restrict__ var, acc_t* __restrict__ count, FinalizeArgs<acc_t, run_t, bias_t> a) {
  const int64_t width = 2 * a.C + 1;
  acc_t n = 0;
  for (int64_t p = 0; p < rows; ++p) n += stats[p * width];
  if (threadIdx.x == 0) *count = n;
  const acc_t inv_n = acc_t(1) / n;  // one division: float64 divisions in the loop spilled (ptxas -v)
  a.unbias = acc_t(double(n) / (double(n) - 1.0));  // as the host computes it for bn_finalize's count
  const acc_t m = finalize_momentum(a);
#pragma unroll 1
  for (int64_t c = threadIdx.x; c < a.C; c += blockDim.x) {
    acc_t mu = 0, m2 = 0;
#pragma unroll 1
    for (int64_t p = 0; p < rows; ++p) mu += stats[p * width] * stats[p * width + 1 + c];
    mu *= inv_n;
#pragma unroll 1
    for (int64_t p = 0; p < rows; ++p) {
      const acc_t np = stats[p * width], d = stats[p * width + 1 + c] - mu;
      m2 += np * stats[p * width + 1 + a.C + c] + np * d * d;
    }
    mean[c] = mu;
    var[c] = m2 * inv_n;
    finalize_channel(a, c, mu, m2 * inv_n, m);
  }
}

void check_finalize_vector(const char* op, const at::Tensor& t, const char* name, const at::Tensor& mean,
                           bool own_dtype) {
  check_cuda(t, op, name);
  TORCH_CHECK(t.device() == mean.device(), "fastgan_cuda::", op, ": ", name, " is on ", t.device(),
              " but mean is on ", mean.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == mean.size(0) && t.is_contiguous(), "fastgan_cuda::", op, ": ", name,
              " must be a contiguous vector of ", mean.size(0), " values, got shape ", t.sizes());
  const auto dtype = t.scalar_type();
  const bool dispatched = dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK(own_dtype ? dispatched : dtype == mean.scalar_type(), "fastgan_cuda::", op, ": ", name,
              " has dtype ", dtype, ", expected ",
              own_dtype ? "float32, float64, float16 or bfloat16" : c10::toString(mean.scalar_type()));
}

// bn_finalize's optional tensors, checked against mean ([C], its statistics' dtype); errors name `op`,
// the kernel op called (bn_finalize, batch_stats_finalize or bn_gather_finalize).
struct FinalizeInputs {
  at::Tensor gamma, beta, running_mean, running_var, nbt, bias;
  bool update() const { return running_mean.defined(); }
};

FinalizeInputs check_finalize(const char* op, const at::Tensor& mean, const at::Tensor& var,
                              const std::optional<at::Tensor>& gamma_opt,
                              const std::optional<at::Tensor>& beta_opt,
                              const std::optional<at::Tensor>& running_mean_opt,
                              const std::optional<at::Tensor>& running_var_opt,
                              const std::optional<at::Tensor>& nbt_opt, const std::optional<at::Tensor>& bias_opt,
                              double momentum, int64_t count) {
  const auto get = [](const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); };
  const FinalizeInputs in{get(gamma_opt), get(beta_opt), get(running_mean_opt),
                          get(running_var_opt), get(nbt_opt), get(bias_opt)};
  check_cuda(mean, op, "mean");
  TORCH_CHECK(mean.dim() == 1 && (mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble),
              "fastgan_cuda::", op, ": mean must be a float32 or float64 vector, got ", mean.scalar_type(), " ",
              mean.sizes());
  check_finalize_vector(op, mean, "mean", mean, false);
  check_finalize_vector(op, var, "var", mean, false);
  if (in.gamma.defined()) check_finalize_vector(op, in.gamma, "gamma", mean, false);
  if (in.beta.defined()) check_finalize_vector(op, in.beta, "beta", mean, false);
  TORCH_CHECK(in.update() == in.running_var.defined(), "fastgan_cuda::", op,
              ": running_mean and running_var must be given together");
  if (in.update()) {
    check_finalize_vector(op, in.running_mean, "running_mean", mean, true);
    check_finalize_vector(op, in.running_var, "running_var", mean, true);
    TORCH_CHECK(in.running_mean.scalar_type() == in.running_var.scalar_type(), "fastgan_cuda::", op,
                ": running_mean and running_var must share a dtype");
    TORCH_CHECK(count > 1, "fastgan_cuda::", op, ": count must be > 1 to update the running variance, got ", count);
    TORCH_CHECK(momentum >= 0 || in.nbt.defined(), "fastgan_cuda::", op,
                ": momentum < 0 (the cumulative average) needs num_batches_tracked");
  }
  if (in.nbt.defined())
    TORCH_CHECK(in.nbt.numel() == 1 && in.nbt.scalar_type() == at::kLong && in.nbt.device() == mean.device(),
                "fastgan_cuda::", op, ": num_batches_tracked must be a one-element int64 tensor on mean's device");
  if (in.bias.defined()) check_finalize_vector(op, in.bias, "bias", mean, true);
  return in;
}

// launch(FinalizeArgs<acc_t, run_t, bias_t>) for the running statistics' and bias's types (acc_t:
// mean's), its outputs invstd, scale, shift; nothing for C = 0.
template <typename acc_t, typename F>
std::tuple<at::Tensor, at::Tensor, at::Tensor> finalize_with(const at::Tensor& mean, const FinalizeInputs& in,
                                                             double eps, double momentum, int64_t count,
                                                             F&& launch) {
  at::Tensor invstd = at::empty_like(mean), scale = at::empty_like(mean), shift = at::empty_like(mean);
  const int64_t C = mean.size(0);
  if (C == 0) return {invstd, scale, shift};
  const bool update = in.update();
  // Without an update the running-statistics and bias types are unused: the float instantiation.
  const auto run_type = update ? in.running_mean.scalar_type() : at::kFloat;
  const auto bias_type = in.bias.defined() ? in.bias.scalar_type() : at::kFloat;
  // check_finalize_vector admitted only these dtypes: the dispatch's own error cannot name `op`.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, run_type, "fastgan_cuda::finalize", [&] {
    using run_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bias_type, "fastgan_cuda::finalize", [&] {
      using bias_t = scalar_t;
      launch(FinalizeArgs<acc_t, run_t, bias_t>{
          in.gamma.defined() ? in.gamma.const_data_ptr<acc_t>() : nullptr,
          in.beta.defined() ? in.beta.const_data_ptr<acc_t>() : nullptr, static_cast<acc_t>(eps),
          update ? in.running_mean.mutable_data_ptr<run_t>() : nullptr,
          update ? in.running_var.mutable_data_ptr<run_t>() : nullptr,
          in.nbt.defined() ? in.nbt.mutable_data_ptr<int64_t>() : nullptr,
          in.bias.defined() ? in.bias.const_data_ptr<bias_t>() : nullptr, momentum,
          update ? static_cast<acc_t>(double(count) / double(count - 1)) : acc_t(1), invstd.mutable_data_ptr<acc_t>(),
          scale.mutable_data_ptr<acc_t>(), shift.mutable_data_ptr<acc_t>(), C});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {invstd, scale, shift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_finalize_cuda(
    const at::Tensor& mean, const at::Tensor& var, const std::optional<at::Tensor>& gamma,
    const std::optional<at::Tensor>& beta, double eps, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, const std::optional<at::Tensor>& nbt,
    const std::optional<at::Tensor>& bias, double momentum, int64_t count) {
  const char* op = "bn_finalize";
  const FinalizeInputs in =
      check_finalize(op, mean, var, gamma, beta, running_mean, running_var, nbt, bias, momentum, count);
  c10::cuda::CUDAGuard guard(mean.device());
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "fastgan_cuda::bn_finalize", [&] {
    using acc_t = scalar_t;
    out = finalize_with<acc_t>(mean, in, eps, momentum, count, [&](const auto& args) {
      bn_finalize_kernel<<<1, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(mean.const_data_ptr<acc_t>(),
                                                                                var.const_data_ptr<acc_t>(), args);
    });
  });
  return out;
}

// The reduce pass of channel_stats, then stats_finalize_kernel: two launches where batch_stats and
// bn_finalize take three.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_stats_finalize_cuda(
    const at::Tensor& z, const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& beta, double eps,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& nbt, const std::optional<at::Tensor>& bias, double momentum) {
  const char* op = "batch_stats_finalize";
  check_z(z, op, "z");
  TORCH_CHECK(at::isFloatingType(z.scalar_type()), "fastgan_cuda::", op, ": z must be a floating-point tensor, got ",
              z.scalar_type());
  TORCH_CHECK(z.numel() > 0, "fastgan_cuda::", op, ": empty z ", z.sizes());
  const bool nhwc = shared_layout(op, {z}) == at::MemoryFormat::ChannelsLast;
  c10::cuda::CUDAGuard guard(z.device());
  const int64_t C = z.size(1), count = z.numel() / C;
  at::Tensor mean = at::empty({C}, z.options().dtype(acc_type(z)));
  at::Tensor var = at::empty_like(mean);
  const FinalizeInputs in =
      check_finalize(op, mean, var, gamma, beta, running_mean, running_var, nbt, bias, momentum, count);
  at::Tensor invstd, scale, shift;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fastgan_cuda::batch_stats_finalize", [&] {
    using z_t = scalar_t;
    using acc_t = at::opmath_type<z_t>;
    const at::Tensor partials =
        reduce_channels<WelfordState<acc_t>, z_t>(z, at::Tensor(), nhwc, {}, {}, {}, {}, acc_t(0));
    std::tie(invstd, scale, shift) = finalize_with<acc_t>(mean, in, eps, momentum, count, [&](const auto& args) {
      stats_finalize_kernel<<<1, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          partials.const_data_ptr<acc_t>(), z.const_data_ptr<z_t>(),
          /*shift_stride=*/nhwc ? int64_t{1} : z.size(2) * z.size(3), partials.size(0), mean.mutable_data_ptr<acc_t>(),
          var.mutable_data_ptr<acc_t>(), args);
    });
  });
  return {mean, var, invstd, scale, shift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_gather_finalize_cuda(
    const at::Tensor& stats, const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& beta, double eps,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& nbt, const std::optional<at::Tensor>& bias, double momentum) {
  const char* op = "bn_gather_finalize";
  check_cuda(stats, op, "stats");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) > 0 && stats.size(1) > 1 && stats.size(1) % 2 == 1 &&
                  stats.is_contiguous() && (stats.scalar_type() == at::kFloat || stats.scalar_type() == at::kDouble),
              "fastgan_cuda::", op, ": stats must be a contiguous float32 or float64 tensor [P, 2C + 1] (a row of ",
              "count, mean, var per process), got ", stats.scalar_type(), " of shape ", stats.sizes());
  c10::cuda::CUDAGuard guard(stats.device());
  const int64_t rows = stats.size(0), C = (stats.size(1) - 1) / 2;
  at::Tensor mean = at::empty({C}, stats.options()), var = at::empty_like(mean);
  at::Tensor count = at::empty({1}, stats.options());
  // The merged count lives on the device: the kernel unbiases the running variance with it (the
  // synchronized blocks merge several processes' non-empty batches, so it is > 1; a total of 1
  // makes the running variance NaN, as nothing is read on the host to refuse it); 2 passes the
  // host check.
  const FinalizeInputs in =
      check_finalize(op, mean, var, gamma, beta, running_mean, running_var, nbt, bias, momentum, 2);
  at::Tensor invstd, scale, shift;
  AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "fastgan_cuda::bn_gather_finalize", [&] {
    using acc_t = scalar_t;
    std::tie(invstd, scale, shift) = finalize_with<acc_t>(mean, in, eps, momentum, 2, [&](const auto& args) {
      gather_finalize_kernel<<<1, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          stats.const_data_ptr<acc_t>(), rows, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(),
          count.mutable_data_ptr<acc_t>(), args);
    });
  });
  return {mean, var, invstd, scale, shift, count};
}

// Eval: relu(conv_transpose2d(x, weight, bias)), the statistics folded into weight and bias.
at::Tensor conv_transpose_bias_relu_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef output_padding) {
  const char* op = "conv_transpose_bias_relu";
  c10::cuda::CUDAGuard guard(x.device());
  check_conv_bias(x, weight, bias, op);
  at::Tensor y = conv_transpose_nhwc(x, weight, bias, stride, padding, output_padding, op);
  y.relu_();
  return y;
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("conv_transpose_stats", &fastgan::cuda::conv_transpose_stats_cuda);
  m.impl("conv_transpose", &fastgan::cuda::conv_transpose_cuda);
  m.impl("bn_relu", &fastgan::cuda::bn_relu_cuda);
  m.impl("bn_relu_", &fastgan::cuda::bn_relu_inplace_cuda);
  m.impl("bn_relu_backward", &fastgan::cuda::bn_relu_backward_cuda);
  m.impl("bn_relu_backward_reduce", &fastgan::cuda::bn_relu_backward_reduce_cuda);
  m.impl("bn_relu_backward_elemt", &fastgan::cuda::bn_relu_backward_elemt_cuda);
  m.impl("batch_stats", &fastgan::cuda::batch_stats_cuda);
  m.impl("bn_finalize", &fastgan::cuda::bn_finalize_cuda);
  m.impl("batch_stats_finalize", &fastgan::cuda::batch_stats_finalize_cuda);
  m.impl("bn_gather_finalize", &fastgan::cuda::bn_gather_finalize_cuda);
  m.impl("conv_transpose_bias_relu", &fastgan::cuda::conv_transpose_bias_relu_cuda);
}
