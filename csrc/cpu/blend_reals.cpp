// SPEC 6, real images: out = (1 - alpha) * upsample_nearest_2x(avg_pool_2x2(x)) + alpha * x.
// Each output mixes itself with the mean of its 2x2 block: per pair of rows, pool
// the means into an L1 buffer, then blend them up into each row (the row kernels
// of fade_in, in common.h).
// The map is self-adjoint, so this kernel is also its own backward.
#include <vector>

#include "common.h"

namespace fastgan::cpu {
namespace {

template <typename T>
void blend_reals_rows(const T* x, T* out, const RowPairs& g, double alpha) {
  using acc_t = at::opmath_type<T>;
  const acc_t a = static_cast<acc_t>(alpha), q = static_cast<acc_t>((1.0 - alpha) / 4);
  const int64_t hl = 2 * g.len;
  at::parallel_for(0, g.rows, grain(4 * g.len), [&](int64_t begin, int64_t end) {
    // (1 - alpha) * the 2x2 means of a row pair, kept in L1 (in float for float16 and bfloat16).
    std::vector<acc_t> means(g.len);
    for (int64_t r = begin; r < end; ++r) {
      const T* x0 = x + 2 * r * hl;
      const T* x1 = x0 + hl;
      // Request the row pair first: the channels-last pooling is slow to issue its loads.
      for (int64_t k = 0; k < hl; k += 64 / sizeof(T)) {
        __builtin_prefetch(x0 + k);
        __builtin_prefetch(x1 + k);
      }
      pool_row(x0, x1, means.data(), g, q);
      for (int64_t i = 2 * r; i < 2 * r + 2; ++i)
        upsample_blend_row(means.data(), x + i * hl, out + i * hl, g, acc_t(1), a);
    }
  });
}

at::Tensor blend_reals(const at::Tensor& x, double alpha) {
  TORCH_CHECK(x.dim() == 4 && x.size(2) % 2 == 0 && x.size(3) % 2 == 0,
              "fastgan_cpu::blend_reals: x must be 4-D with even height and width, got ", x.sizes());
  const auto fmt = layout_of(x, "x");
  auto out = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastgan_cpu::blend_reals", [&] {
    blend_reals_rows(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                     row_pairs(x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2, fmt), alpha);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) { m.impl("blend_reals", &blend_reals); }

}  // namespace fastgan::cpu
