// a @ b through oneDNN's matmul (mkldnn::_linear_pointwise, the op torch.compile's CPU backend
// uses) for float32, else at::mm (MKL). Why: on the AMD EPYC (Zen 4) machines this project now
// runs on, MKL's sgemm takes a slower code path (measured, 2 threads: 140-190 GFLOP/s on the DCGAN
// and minibatch-discrimination shapes, 75-100 on the thin ones of the 1x1 block) where oneDNN's
// JIT kernels reach 180-215. With a transposed a and a narrow b (N of 100 or 256) oneDNN fell to
// 50-90, so those stay on MKL; with N >= 1024 it kept 180-200. The op is looked up once; a torch
// built without oneDNN lacks it, and every product goes to at::mm (the same product up to float32
// rounding; only the speed differs).
#include "gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

#include "layout.h"

namespace fastgan::cpu {
namespace {

using LinearFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::string_view, c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>);

const std::optional<c10::TypedOperatorHandle<LinearFn>>& onednn_linear() {
  static const auto op = []() -> std::optional<c10::TypedOperatorHandle<LinearFn>> {
    const auto handle = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
    if (!handle.has_value()) return std::nullopt;
    return handle->typed<LinearFn>();
  }();
  return op;
}

// a made dense. oneDNN's linear would copy a strided input with PyTorch's element-wise copy_
// (0.65 ms for the 4x4 block's 2 MB transposed x here); a transposed one goes through register
// tiles instead.
at::Tensor dense(const at::Tensor& a) {
  if (a.is_contiguous() || a.stride(0) != 1 || a.stride(1) != a.size(0)) return a.contiguous();
  auto out = at::empty(a.sizes(), a.options());
  transpose(a.const_data_ptr(), out.mutable_data_ptr(), a.size(1), a.size(0), a.element_size());
  return out;
}

}  // namespace

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  const auto& linear = onednn_linear();
  const bool onednn_ok = linear.has_value() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                         (a.stride(1) == 1 || b.size(1) >= 1024) && a.size(0) > 0 && a.size(1) > 0 && b.size(1) > 0;
  if (!onednn_ok) return at::mm(a, b);
  // linear(X, W) = X @ W^T with W [N, K]: W = b^T, a view.
  return linear->call(dense(a), b.t(), std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
}

}  // namespace fastgan::cpu
