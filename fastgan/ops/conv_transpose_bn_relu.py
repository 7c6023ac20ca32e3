"""Fused ConvTranspose2d + BatchNorm2d + ReLU, the DCGAN generator block (SPEC 1).

Training (batch statistics): z, mean, var = conv_transpose_stats(x, W) leaves the conv bias out
(it cancels in the normalization and only moves the running mean); the backend's bn_finalize turns
the statistics into the per-channel scale and shift and updates the running statistics exactly as
nn.BatchNorm2d does (one launch, no host sync even for momentum=None); then y = relu((z - mean) *
scale + shift) in one pass, in place over z when no gradient is needed.
Eval (running statistics): they are folded into the weight and bias, W' = W * gamma * invstd
over dim 1, b' = beta + (bias - running_mean) * gamma * invstd, and the backend runs
relu(conv_transpose2d(x, W', b')): no normalization pass at all.

Backward: training runs the fused BN + ReLU backward (both per-channel sums in one pass) and
hands grad_z to the backend's conv_transpose_backward kernel op (on CPU: GEMMs for small inputs,
else oneDNN's direct convolution; see csrc/cpu/convolution.cpp); eval backpropagates through
the folded formula. Eval without gradients skips the fold where it saves nothing (_fold_pays)
and normalizes z in place (_eval_unfolded). Double backward is not supported:
it raises (once_differentiable).

The kernels get x channels-last (except 1x1 inputs, see _layout_for), so z and y come out
channels-last (per-channel work vectorizes across the contiguous channels, and the next block
takes y without a copy).

Plain training calls on the cpu and cuda backends go to the backend's `conv_transpose_bn_relu_train`
op, which runs the same kernels with its autograd in C++ (csrc/block_autograd.h): one dispatch and
a C++ graph node per call instead of the Python Function below (~20 us less host time); its
statistics come from conv_transpose + batch_stats_finalize, one GPU launch less than
conv_transpose_stats + bn_finalize where (cuda) the convolution does not compute them itself.
Traced code and triton (whose conv_transpose_stats kernel does) take the Python path, with the same
formulas.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._backend import resolve
from .._checks import as_layout, check_eps, empty
from ._batch_norm import (LAYOUT, NO_UPDATE, block_op, bn_relu_backward, call, cpp_block, cancelled_bias_grad,
                          check_batch, check_block_arguments, dense_weight, empty_batch, finalize, folded,
                          in_stats_dtype, layout_of, momentum_factor, needs_grad, pair, run_without_grad,
                          running_update, saved_input, saved_input_fake, stats_dtype, weight_grad_fake)
from ._autocast import lower
from ._dispatch import fused_op, kernels, to_layout
from ._sync_batch_norm import sync_group
from ._sync_conv_blocks import ConvTranspose2d as SyncConvTranspose2d, sync_block


def _layout_for(x):
    """The layout of x, z and y: channels-last, except for 1x1 inputs (the first DCGAN block,
    from the latent) on the CPU, where its GEMM gives z in NCHW directly (and oneDNN, elsewhere, ran
    their transposed convolution 3x faster in NCHW). On a GPU channels-last throughout: cuDNN gives
    z so, and an NCHW block there cost 4 copies a step (z, the next block's x, and their gradients)."""
    return torch.contiguous_format if x.shape[2] * x.shape[3] == 1 and x.device.type == "cpu" else LAYOUT


def conv_transpose_bn_relu_reference(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training,
                                     momentum=0.1, eps=1e-5, stride=1, padding=0, output_padding=0,
                                     num_batches_tracked=None):
    """Eager PyTorch: what nn.Sequential(ConvTranspose2d, BatchNorm2d, ReLU) computes."""
    z = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)
    factor = momentum_factor(training, running_mean, momentum, num_batches_tracked)
    use_batch = training or running_mean is None
    return F.relu(F.batch_norm(z, running_mean, running_var, bn_weight, bn_bias, use_batch, factor, eps))


def conv_transpose_bn_relu(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training,
                           momentum=0.1, eps=1e-5, stride=1, padding=0, output_padding=0,
                           num_batches_tracked=None, impl=None, process_group=None):
    """relu(batch_norm(conv_transpose2d(x, weight, bias, stride, padding, output_padding))).

    x [N, C_in, H, W], weight [C_in, C_out, kH, kW], bias / bn_weight / bn_bias / running_mean /
    running_var [C_out] or None (no conv bias, affine=False, track_running_stats=False). In
    training the running statistics (when given) and num_batches_tracked (when given) are updated
    in place as nn.BatchNorm2d does; momentum=None is the cumulative average over
    num_batches_tracked. Without running statistics batch statistics are used, also in eval.
    process_group (a torch.distributed group, fastgan.ops.WORLD for the default one): training
    statistics over every process's batch, as nn.SyncBatchNorm (_sync_conv_blocks).
    """
    x, weight, bias = lower(x.device.type, x, weight, bias)  # as torch.autocast casts a convolution
    sizes = _check(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum,
                   num_batches_tracked, stride, padding, output_padding)
    eps = check_eps(eps)
    use_batch = training or running_mean is None
    z_shape = _out_shape(x, weight, sizes)
    group = sync_group(process_group)  # issue 17: statistics synchronized across processes
    if use_batch:
        check_batch(z_shape, synchronized=training and group is not None)
    impl = resolve(impl, x.device)
    if training and group is not None:
        return sync_block(SyncConvTranspose2d(*sizes), x, weight, bias, bn_weight, bn_bias, running_mean,
                          running_var, momentum, eps, num_batches_tracked, 0.0, group, impl)
    if impl == "reference" or empty_batch(z_shape):
        return conv_transpose_bn_relu_reference(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                                training, momentum, eps, sizes[0], sizes[1], sizes[2],
                                                num_batches_tracked)
    if not use_batch:
        if not _fold_pays(weight, z_shape, impl) and not needs_grad(x, weight, bias, bn_weight, bn_bias):
            vectors = in_stats_dtype(x, bn_weight, bn_bias, running_mean, running_var)
            return call(_eval_unfolded, x, weight, bias, *vectors, eps, *sizes, impl)
        return _eval(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, sizes, impl)
    gamma, beta = in_stats_dtype(x, bn_weight, bn_bias)
    update = running_update(training, running_mean, running_var, num_batches_tracked, momentum)
    if cpp_block(impl):
        return kernels(impl).conv_transpose_bn_relu_train(x, weight, bias, gamma, beta, eps, *sizes, *update)
    count = z_shape[0] * z_shape[2] * z_shape[3]
    if needs_grad(x, weight, bias, bn_weight, bn_bias):
        return _train(x, weight, bias, gamma, beta, eps, *sizes, impl, update=update, bias=bias, count=count)[0]
    return run_without_grad(_train_inplace, _train_inplace_body, (x, weight, gamma, beta, eps, *sizes, impl), bias,
                            update, count)


# ---- checks ----

def _check(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum,
           num_batches_tracked, stride, padding, output_padding):
    """Validates the arguments; returns [stride, padding, output_padding] as pairs."""
    check_block_arguments(x, weight, 0, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum,
                          num_batches_tracked)
    sizes = [pair(stride, "stride", 1), pair(padding, "padding", 0), pair(output_padding, "output_padding", 0)]
    if any(o >= s for o, s in zip(sizes[2], sizes[0])):
        raise ValueError(f"fastgan: output_padding must be smaller than stride, got {output_padding!r} and {stride!r}")
    return sizes


def _out_shape(x, weight, sizes):
    (sh, sw), (ph, pw), (oh, ow) = sizes
    n, _, h, w = x.shape
    _, c, kh, kw = weight.shape
    return (n, c, (h - 1) * sh - 2 * ph + kh + oh, (w - 1) * sw - 2 * pw + kw + ow)


# ---- training ----

def _train_body(x, weight, bias, gamma, beta, eps, stride, padding, output_padding, impl, running_mean, running_var,
                num_batches_tracked, momentum):
    """The training forward on real tensors: (y, z, mean, var, invstd, x as the kernels took it, if
    converted). The running statistics are updated in bn_finalize (running_update; NO_UPDATE: not)."""
    k = kernels(impl)
    fmt = _layout_for(x)
    x_fmt = to_layout(k, x, fmt)
    z, mean, var = k.conv_transpose_stats(x_fmt, dense_weight(weight), stride, padding, output_padding)
    z = as_layout(z, fmt)
    invstd, scale, shift = finalize(k, mean, var, gamma, beta, eps, bias,
                                    (running_mean, running_var, num_batches_tracked, momentum), z.numel() // z.shape[1])
    return as_layout(k.bn_relu(z, mean, scale, shift, 0.0), fmt), z, mean, var, invstd, saved_input(x, x_fmt)


def _train_kernel(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                  beta: Optional[torch.Tensor], eps: float, stride: list[int], padding: list[int],
                  output_padding: list[int], impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                                 torch.Tensor, torch.Tensor]:
    return _train_body(x, weight, bias, gamma, beta, eps, stride, padding, output_padding, impl, *NO_UPDATE)


def _train_fake(x, weight, bias, gamma, beta, eps, stride, padding, output_padding, impl):
    shape = _out_shape(x, weight, [stride, padding, output_padding])
    stats = x.new_empty((shape[1],), dtype=stats_dtype(x))
    fmt = _layout_for(x)
    return (empty(shape, x, fmt), empty(shape, x, fmt), stats, torch.empty_like(stats), torch.empty_like(stats),
            saved_input_fake(x, fmt))


def _train_setup(ctx, inputs, output):
    x, weight, bias, gamma, beta, ctx.eps, ctx.stride, ctx.padding, ctx.output_padding, ctx.impl = inputs
    _, z, mean, var, invstd, x_saved = output
    ctx.mark_non_differentiable(z, mean, var, invstd, x_saved)
    ctx.set_materialize_grads(False)  # else autograd fills a zero gradient for z (a pass over it) and x_saved
    ctx.has_bias, ctx.has_gamma, ctx.has_beta = bias is not None, gamma is not None, beta is not None
    ctx.save_for_backward(x_saved if x_saved.numel() else x, weight, gamma, beta, z, mean, invstd)


@once_differentiable
def _train_bwd(ctx, grad_y, *_):
    if grad_y is None:  # y took no part in what is differentiated
        return (None,) * 10
    x, weight, gamma, beta, z, mean, invstd = ctx.saved_tensors
    grad_z, grad_gamma, grad_beta = call(bn_relu_backward, grad_y, z, mean, invstd, gamma, beta, 0.0, ctx.impl)
    need = ctx.needs_input_grad
    grad_x, grad_w, _ = _conv_backward(grad_z, x, weight, ctx, need[0], need[1], False)
    grad_b = cancelled_bias_grad(weight, weight.shape[1]) if ctx.has_bias and need[2] else None
    return (grad_x, grad_w, grad_b, grad_gamma if ctx.has_gamma else None, grad_beta if ctx.has_beta else None,
            None, None, None, None, None)


def _conv_backward(grad, x, weight, ctx, need_x, need_w, need_b):
    """Gradients of conv_transpose2d(x, weight, bias) from `grad`, the gradient of its output:
    the backend's conv_transpose_backward (cpu: GEMMs on small inputs, else oneDNN's direct
    convolution; cuda and triton: cuDNN) and the bias gradient, a sum."""
    grad_x = grad_w = None
    if need_x or need_w:
        grad_x, grad_w = call(_conv_transpose_backward, grad, as_layout(x, _layout_for(x)), weight, ctx.stride,
                               ctx.padding, ctx.output_padding, need_x, need_w, ctx.impl)
    return grad_x if need_x else None, grad_w if need_w else None, grad.sum((0, 2, 3)) if need_b else None


@torch.library.custom_op("fastgan::conv_transpose_backward", mutates_args=())
def _conv_transpose_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                             padding: list[int], output_padding: list[int], need_x: bool, need_weight: bool,
                             impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel op (csrc/schemas.h) as a traceable op: (grad_x, grad_weight), [0] where not asked for."""
    grad_x, grad_w = kernels(impl).conv_transpose_backward(grad, x, dense_weight(weight), stride, padding,
                                                           output_padding, need_x, need_weight)
    return to_layout(kernels(impl), grad_x, layout_of(x)) if need_x else grad_x, grad_w


@_conv_transpose_backward.register_fake
def _(grad, x, weight, stride, padding, output_padding, need_x, need_weight, impl):
    none = x.new_empty((0,))
    return (empty(x.shape, x, layout_of(x)) if need_x else none,
            weight_grad_fake(weight) if need_weight else none)


_train = block_op("conv_transpose_bn_relu_train", _train_kernel, _train_body, _train_fake, _train_bwd, _train_setup)


def _train_inplace_body(x, weight, gamma, beta, eps, stride, padding, output_padding, impl, bias=None,
                        update=NO_UPDATE):
    """Training forward when no gradient is needed: normalizes z in place (one tensor fewer);
    (y, mean, var), the running statistics updated as `update` asks (with the conv bias)."""
    k = kernels(impl)
    fmt = _layout_for(x)
    z, mean, var = k.conv_transpose_stats(to_layout(k, x, fmt), dense_weight(weight), stride, padding, output_padding)
    z = as_layout(z, fmt)
    _, scale, shift = finalize(k, mean, var, gamma, beta, eps, bias, update, z.numel() // z.shape[1])
    k.bn_relu_(z, mean, scale, shift, 0.0)
    return z, mean, var


@torch.library.custom_op("fastgan::conv_transpose_bn_relu_train_inplace", mutates_args=())
def _train_inplace(x: torch.Tensor, weight: torch.Tensor, gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor],
                   eps: float, stride: list[int], padding: list[int], output_padding: list[int],
                   impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """_train_inplace_body as a traceable op (the running statistics left to bn_running_stats_update)."""
    return _train_inplace_body(x, weight, gamma, beta, eps, stride, padding, output_padding, impl)


@_train_inplace.register_fake
def _(x, weight, gamma, beta, eps, stride, padding, output_padding, impl):
    y, _, mean, var, _, _ = _train_fake(x, weight, None, gamma, beta, eps, stride, padding, output_padding, impl)
    return y, mean, var


# ---- eval ----

# Eval without gradients normalizes z in place (_eval_unfolded) unless folding saves more. It saves the
# pass over z only where the convolution applies the folded bias and the ReLU itself (cpu: oneDNN's
# post-op, triton: its epilogue; the cuda backend's cuDNN convolution is followed by a ReLU pass), and
# the fold costs ~7 small ops, ~20 us of host time on CPU (a pass over ~64K float32 values), plus a
# pass over the weight.
_FOLD_MIN_SAVED = 1 << 16


def _fold_pays(weight, z_shape, impl):
    return impl != "cuda" and torch.Size(z_shape).numel() > weight.numel() + _FOLD_MIN_SAVED


def _eval(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, sizes, impl):
    """relu(conv_transpose2d(x, W * s, beta + (bias - running_mean) * s)), s = gamma * invstd:
    differentiable torch code folds, the fused op convolves."""
    w, b = folded(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, x.dtype, out_dim=1)
    return _bias_relu(x, w, b, *sizes, impl)


@torch.library.custom_op("fastgan::conv_transpose_bn_relu_eval_unfolded", mutates_args=())
def _eval_unfolded(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                   beta: Optional[torch.Tensor], running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
                   stride: list[int], padding: list[int], output_padding: list[int], impl: str) -> torch.Tensor:
    """Eval forward without gradients where the weight is larger than the output (the first DCGAN
    blocks at small batches): folding would cost more than normalizing z in place, which this does.
    The conv bias (x's dtype) is added by the convolution, as eager adds it."""
    k = kernels(impl)
    fmt = _layout_for(x)
    z = k.conv_transpose(to_layout(k, x, fmt), dense_weight(weight), stride, padding, output_padding, bias)
    z = as_layout(z, fmt)
    _, scale, shift = k.bn_finalize(running_mean, running_var, gamma, beta, eps, None, None, None, None, 0.0, 0)
    k.bn_relu_(z, running_mean, scale, shift, 0.0)
    return z


@_eval_unfolded.register_fake
def _(x, weight, bias, gamma, beta, running_mean, running_var, eps, stride, padding, output_padding, impl):
    return _bias_relu_fake(x, weight, None, stride, padding, output_padding, impl)


def _bias_relu_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: list[int],
                      padding: list[int], output_padding: list[int], impl: str) -> torch.Tensor:
    fmt = _layout_for(x)
    k = kernels(impl)
    y = k.conv_transpose_bias_relu(to_layout(k, x, fmt), dense_weight(weight), bias, stride, padding, output_padding)
    return as_layout(y, fmt)


def _bias_relu_fake(x, weight, bias, stride, padding, output_padding, impl):
    return empty(_out_shape(x, weight, [stride, padding, output_padding]), x, _layout_for(x))


def _bias_relu_setup(ctx, inputs, output):
    x, weight, _, ctx.stride, ctx.padding, ctx.output_padding, ctx.impl = inputs
    ctx.save_for_backward(x, weight, output)


@once_differentiable
def _bias_relu_bwd(ctx, grad):
    x, weight, y = ctx.saved_tensors
    grad_z = torch.ops.aten.threshold_backward(grad, y, 0)
    need = ctx.needs_input_grad
    grad_x, grad_w, grad_b = _conv_backward(grad_z, x, weight, ctx, need[0], need[1], need[2])
    return grad_x, grad_w, grad_b, None, None, None, None


_bias_relu = fused_op("conv_transpose_bias_relu", _bias_relu_kernel, _bias_relu_fake, _bias_relu_bwd,
                      _bias_relu_setup)
