"""Fused Conv2d + BatchNorm2d + LeakyReLU, the DCGAN discriminator block (SPEC 7).

The generator block's design (conv_transpose_bn_relu.py) with a direct convolution and a slope.
Training (batch statistics): z = conv2d(x, W) channels-last, without the conv bias (it cancels in
the normalization and only moves the running mean); the backend's batch_stats_finalize gives the
mean and variance of z in one pass and from them the scale and shift (and the running statistics'
update, as nn.BatchNorm2d does), and bn_relu with negative_slope normalizes + activates in one more
pass.
Eval (running statistics): folded into W and the bias, then one convolution and an in-place
LeakyReLU (ATen ops, so autograd and torch.compile see through them).

Backward: the fused BN + activation backward (both per-channel sums in one pass) hands grad_z
to the backend's conv2d_backward. Double backward (a gradient penalty through the block, where
the backward runs with create_graph) falls back explicitly to the reference formula, recomputed
from the saved inputs with autograd: eager speed and memory, exact derivatives.

The convolution is the backend's conv2d kernel op on channels-last x: on CPU GEMMs where the
output is small (the 8x8 -> 4x4 block; see csrc/cpu/convolution.cpp), else oneDNN, which ran the
DCGAN discriminator's other convolutions 1.2-1.7x faster on channels-last than on NCHW here
(forward and backward, batch 128, 2 threads); on GPU cuDNN, channels-last for tensor cores.

Plain training calls on the cpu and cuda backends go to the backend's `conv2d_bn_leaky_relu_train`
op, which runs the same kernels with its autograd in C++ (csrc/block_autograd.h): one dispatch and
a C++ graph node per call instead of the Python Function below (~20 us less host time). Traced code
and triton take the Python path, with the same formulas.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._backend import resolve
from .._checks import as_layout, check_eps, empty
from ._batch_norm import (LAYOUT, NO_UPDATE, block_op, bn_relu_backward, call, cpp_block, cancelled_bias_grad,
                          check_batch, check_block_arguments, dense_weight, empty_batch, folded, in_stats_dtype,
                          layout_of, momentum_factor, needs_grad, pair, running_update, save_block, saved_block_inputs,
                          saved_input, saved_input_fake, stats_dtype, wanted_grads, weight_grad_fake)
from ._autocast import lower
from ._dispatch import kernels, to_layout
from ._sync_batch_norm import sync_group
from ._sync_conv_blocks import Conv2d as SyncConv2d, sync_block


def conv2d_bn_leaky_relu_reference(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training,
                                   momentum=0.1, eps=1e-5, stride=1, padding=0, negative_slope=0.2,
                                   num_batches_tracked=None):
    """Eager PyTorch: what nn.Sequential(Conv2d, BatchNorm2d, LeakyReLU) computes."""
    z = F.conv2d(x, weight, bias, stride, padding)
    factor = momentum_factor(training, running_mean, momentum, num_batches_tracked)
    use_batch = training or running_mean is None
    z = F.batch_norm(z, running_mean, running_var, bn_weight, bn_bias, use_batch, factor, eps)
    return F.leaky_relu(z, negative_slope)


def conv2d_bn_leaky_relu(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training,
                         momentum=0.1, eps=1e-5, stride=1, padding=0, negative_slope=0.2,
                         num_batches_tracked=None, impl=None, process_group=None):
    """leaky_relu(batch_norm(conv2d(x, weight, bias, stride, padding)), negative_slope).

    x [N, C_in, H, W], weight [C_out, C_in, kH, kW], bias / bn_weight / bn_bias / running_mean /
    running_var [C_out] or None, with nn.BatchNorm2d's semantics as in conv_transpose_bn_relu
    (running statistics and num_batches_tracked updated in place in training, momentum=None the
    cumulative average, batch statistics when there are no running ones). The output is
    channels-last. process_group (a torch.distributed group, fastgan.ops.WORLD for the default
    one): training statistics over every process's batch, as nn.SyncBatchNorm (_sync_conv_blocks).
    """
    x, weight, bias = lower(x.device.type, x, weight, bias)  # as torch.autocast casts a convolution
    sizes = _check(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum,
                   num_batches_tracked, stride, padding, negative_slope)
    eps, slope = check_eps(eps), float(negative_slope)
    use_batch = training or running_mean is None
    z_shape = _out_shape(x, weight, sizes)
    group = sync_group(process_group)  # issue 17: statistics synchronized across processes
    if use_batch:
        check_batch(z_shape, synchronized=training and group is not None)
    impl = resolve(impl, x.device)
    if training and group is not None:
        return sync_block(SyncConv2d(*sizes), x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                          momentum, eps, num_batches_tracked, slope, group, impl)
    if impl == "reference" or empty_batch(z_shape):
        return conv2d_bn_leaky_relu_reference(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                              training, momentum, eps, sizes[0], sizes[1], slope, num_batches_tracked)
    if not use_batch:
        w, b = folded(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, x.dtype, out_dim=0)
        z = F.conv2d(as_layout(x, LAYOUT), w, b, *sizes)
        grad = needs_grad(x, weight, bias, bn_weight, bn_bias)
        return F.leaky_relu(z, slope) if grad else F.leaky_relu_(z, slope)
    gamma, beta = in_stats_dtype(x, bn_weight, bn_bias)
    update = running_update(training, running_mean, running_var, num_batches_tracked, momentum)
    if cpp_block(impl):
        return kernels(impl).conv2d_bn_leaky_relu_train(x, weight, bias, gamma, beta, eps, *sizes, slope, *update)
    return _train(x, weight, bias, gamma, beta, eps, *sizes, slope, impl, update=update, bias=bias,
                  count=z_shape[0] * z_shape[2] * z_shape[3])[0]


def _check(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum,
           num_batches_tracked, stride, padding, negative_slope):
    """Validates the arguments; returns [stride, padding] as pairs."""
    check_block_arguments(x, weight, 1, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum,
                          num_batches_tracked)
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        raise TypeError(f"fastgan: negative_slope must be a number, got {type(negative_slope).__name__}")
    return [pair(stride, "stride", 1), pair(padding, "padding", 0)]


def _out_shape(x, weight, sizes):
    (sh, sw), (ph, pw) = sizes
    n, _, h, w = x.shape
    c, _, kh, kw = weight.shape
    return (n, c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


# ---- training ----

def _train_body(x, weight, bias, gamma, beta, eps, stride, padding, negative_slope, impl, running_mean, running_var,
                num_batches_tracked, momentum):
    """The training forward on real tensors: (y, z, mean, var, invstd, x as the kernels took it, if
    converted). The running statistics are updated in batch_stats_finalize (running_update; NO_UPDATE: not)."""
    k = kernels(impl)
    x_cl = to_layout(k, x, LAYOUT)
    z = as_layout(k.conv2d(x_cl, dense_weight(weight), stride, padding), LAYOUT)
    mean, var, invstd, scale, shift = k.batch_stats_finalize(z, gamma, beta, eps, running_mean, running_var,
                                                             num_batches_tracked, bias, momentum)
    y = k.bn_relu(z, mean, scale, shift, negative_slope)
    return y, z, mean, var, invstd, saved_input(x, x_cl)


def _train_kernel(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                  beta: Optional[torch.Tensor], eps: float, stride: list[int], padding: list[int],
                  negative_slope: float, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor, torch.Tensor]:
    return _train_body(x, weight, bias, gamma, beta, eps, stride, padding, negative_slope, impl, *NO_UPDATE)


def _train_fake(x, weight, bias, gamma, beta, eps, stride, padding, negative_slope, impl):
    shape = _out_shape(x, weight, [stride, padding])
    stats = x.new_empty((shape[1],), dtype=stats_dtype(x))
    return (empty(shape, x, LAYOUT), empty(shape, x, LAYOUT), stats, torch.empty_like(stats), torch.empty_like(stats),
            saved_input_fake(x, LAYOUT))


def _train_setup(ctx, inputs, output):
    x, weight, bias, gamma, beta, ctx.eps, ctx.stride, ctx.padding, ctx.negative_slope, ctx.impl = inputs
    _, z, mean, var, invstd, x_saved = output
    ctx.mark_non_differentiable(z, mean, var, invstd, x_saved)
    ctx.set_materialize_grads(False)  # else autograd fills zero gradients for z and x_saved (passes over them)
    ctx.has_gamma, ctx.has_beta = gamma is not None, beta is not None
    save_block(ctx, x, weight, bias, gamma, beta, z, mean, invstd, x_saved)


def _train_bwd(ctx, grad_y, *_):
    if grad_y is None:  # y took no part in what is differentiated
        return (None,) * 10
    if torch.is_grad_enabled():  # create_graph: the gradients must be differentiable themselves
        return _train_bwd_differentiable(ctx, grad_y)
    return _train_bwd_fused(ctx, grad_y)


def _train_bwd_differentiable(ctx, grad_y):
    """The explicit fallback for double backward: the reference formula on the saved inputs."""
    inputs, wanted = saved_block_inputs(ctx)
    x, weight, bias, gamma, beta = inputs
    with torch.enable_grad():
        z = F.conv2d(x, weight, bias, ctx.stride, ctx.padding)
        y = F.leaky_relu(F.batch_norm(z, None, None, gamma, beta, True, 0.0, ctx.eps), ctx.negative_slope)
        grads = wanted_grads(y, inputs, wanted, grad_y)
    return (*grads, None, None, None, None, None)


@once_differentiable
def _train_bwd_fused(ctx, grad_y):
    x, weight, gamma, beta, z, mean, invstd, _, _ = ctx.saved_tensors
    grad_z, grad_gamma, grad_beta = call(bn_relu_backward, grad_y, z, mean, invstd, gamma, beta, ctx.negative_slope,
                                         ctx.impl)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = grad_w = None
    if need_x or need_w:
        grad_x, grad_w = call(_conv2d_backward, grad_z, x, weight, ctx.stride, ctx.padding, need_x, need_w, ctx.impl)
    grad_b = cancelled_bias_grad(weight, weight.shape[0]) if ctx.has_bias and need_b else None
    return (grad_x if need_x else None, grad_w if need_w else None, grad_b, grad_gamma if ctx.has_gamma else None,
            grad_beta if ctx.has_beta else None, None, None, None, None, None)


@torch.library.custom_op("fastgan::conv2d_backward", mutates_args=())
def _conv2d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int],
                     need_x: bool, need_weight: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel op (csrc/schemas.h) as a traceable op: (grad_x, grad_weight), [0] where not asked for."""
    k = kernels(impl)
    grad_x, grad_w = k.conv2d_backward(to_layout(k, grad, layout_of(x)), x, dense_weight(weight), stride, padding,
                                       need_x, need_weight)
    return to_layout(k, grad_x, layout_of(x)) if need_x else grad_x, grad_w


@_conv2d_backward.register_fake
def _(grad, x, weight, stride, padding, need_x, need_weight, impl):
    none = x.new_empty((0,))
    return (empty(x.shape, x, layout_of(x)) if need_x else none,
            weight_grad_fake(weight) if need_weight else none)


_train = block_op("conv2d_bn_leaky_relu_train", _train_kernel, _train_body, _train_fake, _train_bwd, _train_setup)
