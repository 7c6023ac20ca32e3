// The convolutions' kernel ops that are a GEMM library's job (schemas.h): the discriminator's
// direct convolution and its backward, and the transposed convolution's backward. cuDNN through
// ATen, channels-last (tensor cores), results in x's layout, the weight's gradient in the weight's:
// a channels-last weight (model.to(memory_format=torch.channels_last)) costs no copy either way.
#include "common.cuh"

namespace fastgan::cuda {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

at::MemoryFormat format_of(const at::Tensor& x) {
  return x.is_contiguous() ? at::MemoryFormat::Contiguous : kCL;
}

void check_args(const at::Tensor& x, const at::Tensor& weight, int64_t in_dim, const char* op) {
  check_cuda(x, op, "x");
  check_cuda(weight, op, "weight");
  check_same(weight, "weight", x, "x", op);
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(in_dim) == x.size(1), "fastgan_cuda::", op,
              ": weight must be ", in_dim == 0 ? "[C_in, C_out, kH, kW]" : "[C_out, C_in, kH, kW]",
              " with C_in = x.size(1), got x ", x.sizes(), " and weight ", weight.sizes());
}

// (grad_x, grad_weight) of the (transposed) convolution, [0] where not asked for.
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                            at::IntArrayRef stride, at::IntArrayRef padding, bool transposed,
                                            at::IntArrayRef output_padding, bool need_x, bool need_weight,
                                            const char* op) {
  check_args(x, weight, transposed ? 0 : 1, op);
  check_cuda(grad, op, "grad");
  check_same(grad, "grad", x, "x", op);
  c10::cuda::CUDAGuard guard(x.device());
  auto [grad_x, grad_w, unused] =
      at::convolution_backward(grad.contiguous(kCL), x.contiguous(kCL), weight.contiguous(kCL), c10::nullopt, stride,
                               padding, {1, 1}, transposed, output_padding, 1, {need_x, need_weight, false});
  const auto none = at::empty({0}, x.options());
  return {grad_x.defined() ? grad_x.contiguous(format_of(x)) : none,
          grad_w.defined() ? grad_w.contiguous(format_of(weight)) : none};
}

at::Tensor conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding) {
  check_args(x, weight, 1, "conv2d");
  c10::cuda::CUDAGuard guard(x.device());
  return at::conv2d(x.contiguous(kCL), weight.contiguous(kCL), {}, stride, padding).contiguous(format_of(x));
}

std::tuple<at::Tensor, at::Tensor> conv2d_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                        const at::Tensor& weight, at::IntArrayRef stride,
                                                        at::IntArrayRef padding, bool need_x, bool need_weight) {
  return backward(grad, x, weight, stride, padding, false, {0, 0}, need_x, need_weight, "conv2d_backward");
}

std::tuple<at::Tensor, at::Tensor> conv_transpose_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                const at::Tensor& weight, at::IntArrayRef stride,
                                                                at::IntArrayRef padding,
                                                                at::IntArrayRef output_padding, bool need_x,
                                                                bool need_weight) {
  return backward(grad, x, weight, stride, padding, true, output_padding, need_x, need_weight,
                  "conv_transpose_backward");
}

at::Tensor to_layout_cuda(const at::Tensor& t, bool channels_last) {
  TORCH_CHECK(t.dim() == 4, "fastgan_cuda::to_layout: t must be 4-D, got ", t.sizes());
  c10::cuda::CUDAGuard guard(t.device());
  return t.contiguous(channels_last ? kCL : at::MemoryFormat::Contiguous);
}

}  // namespace
}  // namespace fastgan::cuda

TORCH_LIBRARY_IMPL(fastgan_cuda, CUDA, m) {
  m.impl("conv2d", &fastgan::cuda::conv2d_cuda);
  m.impl("conv2d_backward", &fastgan::cuda::conv2d_backward_cuda);
  m.impl("conv_transpose_backward", &fastgan::cuda::conv_transpose_backward_cuda);
  m.impl("to_layout", &fastgan::cuda::to_layout_cuda);
}
