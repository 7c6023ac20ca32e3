// Autograd of kernel ops, registered in C++ at their Autograd key so that a plain call from Python is
// one dispatch and its graph node is C++ (a Python torch.autograd.Function costs several microseconds
// of host time a call more). Both extensions include this with the names of their own ops: the
// formulas are written once. The public ops call these kernel ops directly in eager code (cpu and
// cuda backends); traced code (torch.compile, opcheck) keeps the Python custom ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "sum_except.h"

namespace fastgan {

// The typed handle of the kernel op `name` ("fastgan_cpu::bias_act"), looked up once per name.
template <typename Signature>
c10::TypedOperatorHandle<Signature> kernel_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using BiasActSignature = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double, double,
                                    double, double, double);
using BiasActBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, double, double, double, double);
using BiasActBackwardBiasSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                         double, double, double, double, double);

// The layout of a kernel op's dense input, which its companions must share (an NCHW loss gradient
// of a channels-last y goes to y's layout first).
inline at::MemoryFormat layout_of(const at::Tensor& t) {
  return t.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
}

// grad_x = bias_act_backward(grad, y): linear in grad and piecewise constant in y, so its own
// backward is the same op on the incoming gradient, and nothing for y (schemas.h).
template <typename Names>
struct BiasActBackwardFunction : torch::autograd::Function<BiasActBackwardFunction<Names>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& y,
                            double slope, double gain, double x_mul, double clamp) {
    static const auto op = kernel_op<BiasActBackwardSignature>(Names::kBiasActBackward);
    at::AutoDispatchBelowADInplaceOrView below;  // to the backend's kernel, not back to this one
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({y});
    ctx->saved_data["params"] = c10::List<double>({slope, gain, x_mul, clamp});
    return op.call(grad.contiguous(layout_of(y)), y, slope, gain, x_mul, clamp);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(6);
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      const auto p = ctx->saved_data["params"].toDoubleList();
      out[0] = apply(grads[0], ctx->get_saved_variables()[0], p[0], p[1], p[2], p[3]);
    }
    return out;
  }

  static at::Tensor apply(const at::Tensor& grad, const at::Tensor& y, double slope, double gain, double x_mul,
                          double clamp) {
    return torch::autograd::Function<BiasActBackwardFunction<Names>>::apply(grad, y, slope, gain, x_mul, clamp);
  }
};

// The graph node of y = bias_act(x, bias) (schemas.h): a plain autograd Node, as PyTorch's generated
// ones, where a torch::autograd::Function's context (a map of IValues, a saved-tensor list) cost ~1 us
// of host time a call more. It saves y, whose signs are the pre-activation's. grad_bias is the sum of
// grad_x over all dims but `dim`, times b_mul / x_mul, in float32 (float64 for float64), rounded once
// to the bias's dtype. Its edges: x, then bias when given.
template <typename Names>
struct BiasActBackward : torch::autograd::Node {
  torch::autograd::SavedVariable y;
  int64_t dim = 1;
  double slope = 1, gain = 1, x_mul = 1, b_mul = 1, clamp = -1;
  bool has_bias = false;

  std::string name() const override { return "BiasActBackward"; }
  void release_variables() override { y.reset_data(); }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::autograd::variable_list out(has_bias ? 2 : 1);
    const at::Tensor& grad = grads[0];
    const bool need_x = task_should_compute_output(0);
    const bool need_bias = has_bias && task_should_compute_output(1);
    if (!grad.defined() || !(need_x || need_bias)) return out;  // a double backward sends none to y
    const at::Tensor yv = y.unpack(getptr());
    if (need_bias && x_mul != 0 && !at::GradMode::is_enabled()) {
      // Not differentiated again: grad_x and the bias's sum in one pass over grad and y.
      static const auto op = kernel_op<BiasActBackwardBiasSignature>(Names::kBiasActBackwardBias);
      at::AutoDispatchBelowADInplaceOrView below;
      auto [grad_x, grad_bias] = op.call(grad.contiguous(layout_of(yv)), yv, dim, slope, gain, x_mul, b_mul / x_mul,
                                         clamp);
      if (need_x) out[0] = std::move(grad_x);
      out[1] = std::move(grad_bias);
      return out;
    }
    const at::Tensor grad_x = BiasActBackwardFunction<Names>::apply(grad, yv, slope, gain, x_mul, clamp);
    if (need_x) out[0] = grad_x;
    if (need_bias) {
      // grad_x / x_mul is the pre-activation's gradient (a second pass only for x_mul == 0).
      const at::Tensor grad_v =
          x_mul != 0 ? grad_x : BiasActBackwardFunction<Names>::apply(grad, yv, slope, gain, 1.0, clamp);
      out[1] = sum_except(grad_v, dim, b_mul / (x_mul != 0 ? x_mul : 1.0));
    }
    return out;
  }
};

// The Autograd kernel of bias_act: the backend's kernel, and the node when an input requires grad.
template <typename Names>
at::Tensor bias_act_autograd(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t dim, double slope,
                             double gain, double x_mul, double b_mul, double clamp) {
  static const auto op = kernel_op<BiasActSignature>(Names::kBiasAct);
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below;  // to the backend's kernel, not back to this one
    y = op.call(x, bias, dim, slope, gain, x_mul, b_mul, clamp);
  }
  if (!torch::autograd::compute_requires_grad(x, bias)) return y;
  auto node = c10::make_intrusive<BiasActBackward<Names>>();
  node->has_bias = bias.has_value() && bias->defined();
  node->set_next_edges(node->has_bias ? torch::autograd::collect_next_edges(x, *bias)
                                      : torch::autograd::collect_next_edges(x));
  torch::autograd::set_history(y, node);
  node->y = torch::autograd::SavedVariable(y, /*is_output=*/true);
  node->dim = dim;
  node->slope = slope;
  node->gain = gain;
  node->x_mul = x_mul;
  node->b_mul = b_mul;
  // The backward finds clamped outputs by |y| < clamp: the clamp as rounded in y's dtype, which is
  // what a clamped y holds (float16 stores 0.8 as 0.7998).
  node->clamp =
      clamp < 0 ? clamp : at::scalar_tensor(clamp, at::TensorOptions().dtype(y.scalar_type())).item<double>();
  return y;
}

// Registers the Autograd kernels of `Names`'s ops (FASTGAN_REGISTER_AUTOGRAD below).
template <typename Names>
void register_autograd(torch::Library& m) {
  m.impl("bias_act", &bias_act_autograd<Names>);
  m.impl("bias_act_backward", [](const at::Tensor& grad, const at::Tensor& y, double slope, double gain, double x_mul,
                                 double clamp) {
    return BiasActBackwardFunction<Names>::apply(grad, y, slope, gain, x_mul, clamp);
  });
}

}  // namespace fastgan
