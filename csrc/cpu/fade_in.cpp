// SPEC 6, generator side: out = (1 - alpha) * upsample_nearest_2x(low) + alpha * high,
// and its backward (grad_low, grad_high) = ((1 - alpha) * sum_pool_2x2(grad), alpha * grad).
// One pass over memory: each task walks low rows and the two high rows below them
// (the row kernels are in common.h, shared with blend_reals).
#include <array>

#include "common.h"

namespace fastgan::cpu {
namespace {

template <typename T>
void fade_in_rows(const T* low, const T* high, T* out, const RowPairs& g, double alpha) {
  using acc_t = at::opmath_type<T>;
  const acc_t a = static_cast<acc_t>(alpha), b = static_cast<acc_t>(1.0 - alpha);
  const int64_t hl = 2 * g.len;
  at::parallel_for(0, g.rows, grain(4 * g.len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t i = 2 * r; i < 2 * r + 2; ++i)
        upsample_blend_row(low + r * g.len, high + i * hl, out + i * hl, g, b, a);
    }
  });
}

template <typename T>
void fade_in_backward_rows(const T* grad, T* grad_low, T* grad_high, const RowPairs& g, double alpha) {
  using acc_t = at::opmath_type<T>;
  const acc_t a = static_cast<acc_t>(alpha), b = static_cast<acc_t>(1.0 - alpha);
  const int64_t hl = 2 * g.len;
  at::parallel_for(0, g.rows, grain(4 * g.len), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      // grad_high = alpha * grad, a row at a time, then grad_low from the rows now in L1:
      // the channels-last pooling is slow to issue loads, so it should not be first to touch them.
      for (int64_t i = 2 * r; i < 2 * r + 2; ++i) {
        const T* gi = grad + i * hl;
        T* oi = grad_high + i * hl;
        for (int64_t k = scale_vectorized(gi, oi, hl, a); k < hl; ++k)
          oi[k] = static_cast<T>(a * static_cast<acc_t>(gi[k]));
      }
      pool_row(grad + 2 * r * hl, grad + (2 * r + 1) * hl, grad_low + r * g.len, g, b);
    }
  });
}

at::Tensor fade_in(const at::Tensor& rgb_low, const at::Tensor& rgb_high, double alpha) {
  TORCH_CHECK(rgb_low.dim() == 4 && rgb_high.dim() == 4, "fastgan_cpu::fade_in: rgb_low and rgb_high must be 4-D, got ",
              rgb_low.sizes(), " and ", rgb_high.sizes());
  const auto fmt = layout_of(rgb_high, "rgb_high");
  check_like(rgb_low, "rgb_low", rgb_high, fmt);
  const int64_t n = rgb_low.size(0), c = rgb_low.size(1), h = rgb_low.size(2), w = rgb_low.size(3);
  const std::array<int64_t, 4> high_sizes{n, c, 2 * h, 2 * w};
  TORCH_CHECK(rgb_high.sizes() == at::IntArrayRef(high_sizes), "fastgan_cpu::fade_in: rgb_high must be ",
              at::IntArrayRef(high_sizes), " (rgb_low's batch and channels, twice its height and width), got ",
              rgb_high.sizes());
  auto out = at::empty(rgb_high.sizes(), rgb_high.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fastgan_cpu::fade_in", [&] {
    fade_in_rows(rgb_low.const_data_ptr<scalar_t>(), rgb_high.const_data_ptr<scalar_t>(),
                 out.mutable_data_ptr<scalar_t>(), row_pairs(n, c, h, w, fmt), alpha);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> fade_in_backward(const at::Tensor& grad, double alpha) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(2) % 2 == 0 && grad.size(3) % 2 == 0,
              "fastgan_cpu::fade_in_backward: grad must be 4-D with even height and width, got ", grad.sizes());
  const auto fmt = layout_of(grad, "grad");
  const int64_t n = grad.size(0), c = grad.size(1), h = grad.size(2) / 2, w = grad.size(3) / 2;
  auto grad_low = at::empty({n, c, h, w}, grad.options().memory_format(fmt));
  auto grad_high = at::empty(grad.sizes(), grad.options().memory_format(fmt));
  if (grad.numel() == 0) return {grad_low, grad_high};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "fastgan_cpu::fade_in_backward", [&] {
    fade_in_backward_rows(grad.const_data_ptr<scalar_t>(), grad_low.mutable_data_ptr<scalar_t>(),
                          grad_high.mutable_data_ptr<scalar_t>(), row_pairs(n, c, h, w, fmt), alpha);
  });
  return {grad_low, grad_high};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("fade_in", &fade_in);
  m.impl("fade_in_backward", &fade_in_backward);
}

}  // namespace fastgan::cpu
