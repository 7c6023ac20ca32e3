// The training forward of the fused conv + BatchNorm2d + activation blocks as one kernel op with its
// autograd in C++ (conv2d_bn_leaky_relu_train, conv_transpose_bn_relu_train; schemas.h): a plain
// call from Python is one dispatch that runs the backend's kernel ops back to back and records one
// C++ graph node, instead of a Python torch.autograd.Function around five kernel-op calls (~20 us of
// host time a call here, more than the kernels' own host cost). Traced code (torch.compile, opcheck)
// and the triton backend keep the Python custom ops of fastgan/ops, which run the same kernels.
#pragma once

#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include "autograd.h"

namespace fastgan {
namespace blocks {

using OptTensor = std::optional<at::Tensor>;
using Sizes = std::vector<int64_t>;

inline bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

// The weight as the kernels take it: dense in its own layout (no copy for NCHW or channels-last).
inline at::Tensor dense_weight(const at::Tensor& w) {
  return w.is_contiguous() || w.is_contiguous(at::MemoryFormat::ChannelsLast) ? w : w.contiguous();
}

// nn.BatchNorm2d's running statistics that a training call updates in place (bn_finalize), or none.
struct RunningStats {
  OptTensor mean, var, num_batches_tracked;
  double momentum;  // -1: momentum=None, the cumulative average

  // Autograd sees the in-place update as eager BatchNorm's (the kernel ran below ADInplaceOrView).
  void bump_versions() const {
    for (const OptTensor* t : {&mean, &var, &num_batches_tracked}) {
      if (given(*t)) torch::autograd::impl::bump_version(**t);
    }
  }
};

using ToLayoutSig = at::Tensor(const at::Tensor&, bool);
using Conv2dSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef);
using BatchStatsFinalizeSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const OptTensor&, const OptTensor&, double, const OptTensor&, const OptTensor&,
    const OptTensor&, const OptTensor&, double);
using ConvTransposeSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
                                    c10::IntArrayRef, const OptTensor&);
using BnReluSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
using BnReluInPlaceSig = void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
using BnReluBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
    double);
using Conv2dBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                             c10::IntArrayRef, c10::IntArrayRef, bool, bool);
using ConvTransposeBackwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
    bool, bool);

// The backend's kernel ops (Names::kNamespace: fastgan_cpu or fastgan_cuda), each looked up once.
template <typename Names>
struct Kernels {
#define FASTGAN_KERNEL(fn, Sig)                                                                          \
  static c10::TypedOperatorHandle<Sig> fn() {                                                            \
    static const auto op = kernel_op<Sig>((std::string(Names::kNamespace) + "::" #fn).c_str());          \
    return op;                                                                                           \
  }
  FASTGAN_KERNEL(to_layout, ToLayoutSig)
  FASTGAN_KERNEL(conv2d, Conv2dSig)
  FASTGAN_KERNEL(batch_stats_finalize, BatchStatsFinalizeSig)
  FASTGAN_KERNEL(conv_transpose, ConvTransposeSig)
  FASTGAN_KERNEL(bn_relu, BnReluSig)
  FASTGAN_KERNEL(bn_relu_, BnReluInPlaceSig)
  FASTGAN_KERNEL(bn_relu_backward, BnReluBackwardSig)
  FASTGAN_KERNEL(conv2d_backward, Conv2dBackwardSig)
  FASTGAN_KERNEL(conv_transpose_backward, ConvTransposeBackwardSig)
#undef FASTGAN_KERNEL

  // t dense in layout `fmt` (the backend's to_layout kernel when it is not: faster than a strided copy).
  static at::Tensor in_layout(const at::Tensor& t, at::MemoryFormat fmt) {
    if (t.dim() != 4 || t.is_contiguous(fmt)) return t;
    return to_layout().call(t, fmt == at::MemoryFormat::ChannelsLast);
  }
};

// What the backward needs of a training forward (undefined when no gradient is recorded).
struct Normalized {
  at::Tensor y, invstd;
};

// y = act((z - mean) * scale + shift) after the finalize that updated the running statistics as
// `running` asks: into a new tensor, or over z when nothing needs z for a backward (in_place).
template <typename Names>
Normalized activate(const at::Tensor& z, const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& scale,
                    const at::Tensor& shift, const RunningStats& running, double slope, bool in_place) {
  using K = Kernels<Names>;
  running.bump_versions();
  if (in_place) {
    K::bn_relu_().call(z, mean, scale, shift, slope);
    return {z, at::Tensor()};
  }
  return {K::bn_relu().call(z, mean, scale, shift, slope), invstd};
}

// Gradient slots of the differentiable inputs (x, weight, bias, gamma, beta) and which are asked for:
// autograd numbers the edges of defined tensors only.
struct Needs {
  bool x, weight, bias, gamma, beta;
  Needs(torch::autograd::AutogradContext* ctx, bool has_bias, bool has_gamma, bool has_beta) {
    size_t edge = 0;
    x = ctx->needs_input_grad(edge++);
    weight = ctx->needs_input_grad(edge++);
    bias = has_bias && ctx->needs_input_grad(edge++);
    gamma = has_gamma && ctx->needs_input_grad(edge++);
    beta = has_beta && ctx->needs_input_grad(edge++);
  }
};

// The gradients of the BN + activation's parameters, and the conv bias's: exactly zero in training,
// as batch statistics remove any per-channel shift of z.
inline void parameter_grads(torch::autograd::variable_list& out, const Needs& need, const at::Tensor& weight,
                            int64_t channels, const at::Tensor& grad_gamma, const at::Tensor& grad_beta) {
  if (need.bias) out[2] = at::zeros({channels}, weight.options());
  if (need.gamma) out[3] = grad_gamma;
  if (need.beta) out[4] = grad_beta;
}

inline void save_common(torch::autograd::AutogradContext* ctx, const OptTensor& bias, const OptTensor& gamma,
                        const OptTensor& beta, double eps, double slope) {
  ctx->set_materialize_grads(false);
  ctx->saved_data["eps_slope"] = c10::List<double>({eps, slope});
  ctx->saved_data["has"] = c10::List<bool>({given(bias), given(gamma), given(beta)});
}

// ---- Conv2d + BatchNorm2d + LeakyReLU (the discriminator's block, SPEC 7)

template <typename Names>
Normalized conv2d_block_forward(const at::Tensor& x_kernel, const at::Tensor& weight, const OptTensor& bias,
                                const OptTensor& gamma, const OptTensor& beta, double eps, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, double slope, const RunningStats& running, bool in_place,
                                at::Tensor* z_out, at::Tensor* mean_out) {
  using K = Kernels<Names>;
  at::Tensor z = K::conv2d().call(x_kernel, dense_weight(weight), stride, padding);
  auto [mean, var, invstd, scale, shift] = K::batch_stats_finalize().call(
      z, gamma, beta, eps, running.mean, running.var, running.num_batches_tracked, bias, running.momentum);
  *z_out = z;
  *mean_out = mean;
  return activate<Names>(z, mean, invstd, scale, shift, running, slope, in_place);
}

template <typename Names>
struct Conv2dBlockFunction : torch::autograd::Function<Conv2dBlockFunction<Names>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const OptTensor& bias, const OptTensor& gamma, const OptTensor& beta, double eps,
                            const Sizes& stride, const Sizes& padding, double slope, const RunningStats& running) {
    at::AutoDispatchBelowADInplaceOrView below;  // to the backend's kernels, not back to autograd
    const at::Tensor x_kernel = Kernels<Names>::in_layout(x, at::MemoryFormat::ChannelsLast);
    at::Tensor z, mean;
    const Normalized n = conv2d_block_forward<Names>(x_kernel, weight, bias, gamma, beta, eps, stride, padding, slope,
                                                     running, false, &z, &mean);
    save_common(ctx, bias, gamma, beta, eps, slope);
    ctx->saved_data["sizes"] = c10::List<int64_t>({stride[0], stride[1], padding[0], padding[1]});
    // x itself for the double backward's graph; the kernels' copy when the layout conversion made one.
    const at::Tensor converted = x_kernel.is_same(x) ? at::Tensor() : x_kernel;
    ctx->save_for_backward({x, converted, weight, bias.value_or(at::Tensor()), gamma.value_or(at::Tensor()),
                            beta.value_or(at::Tensor()), z, mean, n.invstd});
    return n.y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(10);
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;  // y took no part in what is differentiated
    const auto saved = ctx->get_saved_variables();
    const auto has = ctx->saved_data["has"].toBoolList();
    const auto p = ctx->saved_data["eps_slope"].toDoubleList();
    const auto s = ctx->saved_data["sizes"].toIntList().vec();
    const Sizes stride{s[0], s[1]}, padding{s[2], s[3]};
    const Needs need(ctx, has[0], has[1], has[2]);
    const at::Tensor &x = saved[0], &weight = saved[2], &gamma = saved[4], &beta = saved[5];
    if (at::GradMode::is_enabled()) {  // create_graph: the gradients must be differentiable themselves
      differentiable_backward(out, need, grad_y, x, weight, saved[3], gamma, beta, p[0], p[1], stride, padding);
      return out;
    }
    using K = Kernels<Names>;
    auto [grad_z, grad_gamma, grad_beta] =
        K::bn_relu_backward().call(grad_y, saved[6], saved[7], saved[8], gamma, beta, p[1]);
    if (need.x || need.weight) {
      const at::Tensor& x_kernel = saved[1].defined() ? saved[1] : x;
      auto [grad_x, grad_w] = K::conv2d_backward().call(grad_z, x_kernel, dense_weight(weight), stride, padding,
                                                        need.x, need.weight);
      if (need.x) out[0] = grad_x;
      if (need.weight) out[1] = grad_w;
    }
    parameter_grads(out, need, weight, weight.size(0), grad_gamma, grad_beta);
    return out;
  }

  // The explicit fallback for double backward (a gradient penalty through the block): the reference
  // formula recomputed from the saved inputs with autograd; eager speed and memory, exact derivatives.
  static void differentiable_backward(torch::autograd::variable_list& out, const Needs& need,
                                      const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias, const at::Tensor& gamma, const at::Tensor& beta,
                                      double eps, double slope, const Sizes& stride, const Sizes& padding) {
    const at::Tensor z = at::conv2d(x, weight, bias, stride, padding);
    const at::Tensor y = at::leaky_relu(at::batch_norm(z, gamma, beta, {}, {}, true, 0.0, eps, true), slope);
    const bool wanted[5] = {need.x, need.weight, need.bias, need.gamma, need.beta};
    const at::Tensor* inputs[5] = {&x, &weight, &bias, &gamma, &beta};
    torch::autograd::variable_list asked;
    for (int i = 0; i < 5; ++i) {
      if (wanted[i]) asked.push_back(*inputs[i]);
    }
    if (asked.empty()) return;
    const auto got = torch::autograd::grad({y}, asked, {grad_y}, /*retain_graph=*/true, /*create_graph=*/true);
    size_t next = 0;
    for (int i = 0; i < 5; ++i) {
      if (wanted[i]) out[i] = got[next++];
    }
  }
};

// ---- ConvTranspose2d + BatchNorm2d + ReLU (the generator's block, SPEC 1)

// The layout of x, z and y: channels-last, except for 1x1 inputs (the first DCGAN block, from the
// latent) on the CPU, as fastgan/ops/conv_transpose_bn_relu.py's _layout_for says.
inline at::MemoryFormat conv_transpose_layout(const at::Tensor& x) {
  return x.size(2) * x.size(3) == 1 && x.is_cpu() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
}

template <typename Names>
Normalized conv_transpose_block_forward(const at::Tensor& x_kernel, const at::Tensor& weight, const OptTensor& bias,
                                        const OptTensor& gamma, const OptTensor& beta, double eps,
                                        c10::IntArrayRef stride, c10::IntArrayRef padding,
                                        c10::IntArrayRef output_padding, const RunningStats& running, bool in_place,
                                        at::Tensor* z_out, at::Tensor* mean_out) {
  using K = Kernels<Names>;
  const auto fmt = conv_transpose_layout(x_kernel);
  // conv_transpose + batch_stats_finalize rather than conv_transpose_stats + bn_finalize: the same
  // dispatches and passes, and on a GPU one launch less (the statistics' merge and the finalize in one).
  const at::Tensor z =
      K::conv_transpose().call(x_kernel, dense_weight(weight), stride, padding, output_padding, c10::nullopt)
          .contiguous(fmt);
  auto [mean, var, invstd, scale, shift] = K::batch_stats_finalize().call(
      z, gamma, beta, eps, running.mean, running.var, running.num_batches_tracked, bias, running.momentum);
  *z_out = z;
  *mean_out = mean;
  Normalized n = activate<Names>(z, mean, invstd, scale, shift, running, 0.0, in_place);
  n.y = n.y.contiguous(fmt);
  return n;
}

template <typename Names>
struct ConvTransposeBlockFunction : torch::autograd::Function<ConvTransposeBlockFunction<Names>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const OptTensor& bias, const OptTensor& gamma, const OptTensor& beta, double eps,
                            const Sizes& stride, const Sizes& padding, const Sizes& output_padding,
                            const RunningStats& running) {
    at::AutoDispatchBelowADInplaceOrView below;  // to the backend's kernels, not back to autograd
    const at::Tensor x_kernel = Kernels<Names>::in_layout(x, conv_transpose_layout(x));
    at::Tensor z, mean;
    const Normalized n = conv_transpose_block_forward<Names>(x_kernel, weight, bias, gamma, beta, eps, stride,
                                                             padding, output_padding, running, false, &z, &mean);
    save_common(ctx, bias, gamma, beta, eps, 0.0);
    ctx->saved_data["sizes"] = c10::List<int64_t>(
        {stride[0], stride[1], padding[0], padding[1], output_padding[0], output_padding[1]});
    ctx->save_for_backward({x_kernel, weight, gamma.value_or(at::Tensor()), beta.value_or(at::Tensor()), z, mean,
                            n.invstd});
    return n.y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(10);
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    const auto saved = ctx->get_saved_variables();
    const auto has = ctx->saved_data["has"].toBoolList();
    const auto s = ctx->saved_data["sizes"].toIntList().vec();
    const Sizes stride{s[0], s[1]}, padding{s[2], s[3]}, output_padding{s[4], s[5]};
    const Needs need(ctx, has[0], has[1], has[2]);
    const at::Tensor &x = saved[0], &weight = saved[1];
    {
      at::NoGradGuard once;  // the fused formula is not differentiable again (see once_differentiable below)
      using K = Kernels<Names>;
      auto [grad_z, grad_gamma, grad_beta] =
          K::bn_relu_backward().call(grad_y, saved[4], saved[5], saved[6], saved[2], saved[3], 0.0);
      if (need.x || need.weight) {
        auto [grad_x, grad_w] = K::conv_transpose_backward().call(grad_z, x, dense_weight(weight), stride, padding,
                                                                  output_padding, need.x, need.weight);
        if (need.x) out[0] = grad_x;
        if (need.weight) out[1] = grad_w;
      }
      parameter_grads(out, need, weight, weight.size(1), grad_gamma, grad_beta);
    }
    return once_differentiable(out, grad_y);
  }

  // As torch.autograd.function.once_differentiable: when the backward is recorded (create_graph)
  // its outputs raise if differentiated, instead of silently acting as constants.
  static torch::autograd::variable_list once_differentiable(torch::autograd::variable_list out,
                                                            const at::Tensor& grad_y) {
    if (!at::GradMode::is_enabled() || !grad_y.requires_grad()) return out;
    for (auto& g : out) {
      if (g.defined()) g = g.detach().requires_grad_(true);  // so that the error node gets an edge
    }
    auto error = std::make_shared<torch::autograd::DelayedError>(
        "trying to differentiate twice a function that was marked with @once_differentiable "
        "(fastgan: conv_transpose_bn_relu's backward is not differentiable)",
        static_cast<int64_t>(out.size()));
    return (*error)(std::move(out));
  }
};

// Whether a call records a graph node: grad mode on and a differentiable input that requires grad.
inline bool records_grad(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                         const OptTensor& gamma, const OptTensor& beta) {
  if (!at::GradMode::is_enabled()) return false;
  if (x.requires_grad() || weight.requires_grad()) return true;
  for (const OptTensor* t : {&bias, &gamma, &beta}) {
    if (given(*t) && (*t)->requires_grad()) return true;
  }
  return false;
}

// The ops' entries (schemas.h). At the Autograd key: a graph node when a gradient is recorded, else
// the forward alone, normalizing in place over z (one tensor fewer); at the backend's key (below
// autograd: inference mode) the same forward alone.
template <typename Names, bool kAutograd>
at::Tensor conv2d_block(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias, const OptTensor& gamma,
                        const OptTensor& beta, double eps, c10::IntArrayRef stride, c10::IntArrayRef padding,
                        double slope, const OptTensor& running_mean, const OptTensor& running_var,
                        const OptTensor& num_batches_tracked, double momentum) {
  const RunningStats running{running_mean, running_var, num_batches_tracked, momentum};
  if (kAutograd && records_grad(x, weight, bias, gamma, beta)) {
    return Conv2dBlockFunction<Names>::apply(x, weight, bias, gamma, beta, eps, stride.vec(), padding.vec(), slope,
                                             running);
  }
  at::AutoDispatchBelowADInplaceOrView below;
  at::Tensor z, mean;
  const at::Tensor x_kernel = Kernels<Names>::in_layout(x, at::MemoryFormat::ChannelsLast);
  return conv2d_block_forward<Names>(x_kernel, weight, bias, gamma, beta, eps, stride, padding, slope, running, true,
                                     &z, &mean)
      .y;
}

template <typename Names, bool kAutograd>
at::Tensor conv_transpose_block(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                                const OptTensor& gamma, const OptTensor& beta, double eps, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef output_padding,
                                const OptTensor& running_mean, const OptTensor& running_var,
                                const OptTensor& num_batches_tracked, double momentum) {
  const RunningStats running{running_mean, running_var, num_batches_tracked, momentum};
  if (kAutograd && records_grad(x, weight, bias, gamma, beta)) {
    return ConvTransposeBlockFunction<Names>::apply(x, weight, bias, gamma, beta, eps, stride.vec(), padding.vec(),
                                                    output_padding.vec(), running);
  }
  at::AutoDispatchBelowADInplaceOrView below;
  at::Tensor z, mean;
  const at::Tensor x_kernel = Kernels<Names>::in_layout(x, conv_transpose_layout(x));
  return conv_transpose_block_forward<Names>(x_kernel, weight, bias, gamma, beta, eps, stride, padding,
                                             output_padding, running, true, &z, &mean)
      .y;
}

template <typename Names, bool kAutograd>
void register_blocks(torch::Library& m) {
  m.impl("conv2d_bn_leaky_relu_train", &conv2d_block<Names, kAutograd>);
  m.impl("conv_transpose_bn_relu_train", &conv_transpose_block<Names, kAutograd>);
}

}  // namespace blocks
}  // namespace fastgan
