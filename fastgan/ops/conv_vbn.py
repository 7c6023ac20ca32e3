"""The DCGAN blocks with virtual batch normalization (SPEC 10) fused: ConvTranspose2d -> VBN -> ReLU
(conv_transpose_vbn_relu) and Conv2d -> VBN -> LeakyReLU (conv2d_vbn_leaky_relu).

The forward composes the backend's convolution kernel op (as the BatchNorm blocks do) with the VBN
kernels: one pass for the per-sample statistics, the per-channel combination, one normalize +
activation pass. The conv bias is left out of z: VBN subtracts a per-channel mean from every sample,
so the bias cancels exactly (its gradient is zero). Backward: the VBN kernels' fused backward, then
the convolution's backward kernel op. Double backward falls back explicitly to the reference formula.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .._backend import resolve
from .._checks import as_layout, check_eps, empty
from ._autocast import lower
from ._batch_norm import (LAYOUT, call, cancelled_bias_grad, check_block_arguments, dense_weight, in_stats_dtype,
                          pair, save_block, saved_block_inputs, saved_input, saved_input_fake, stats_dtype,
                          wanted_grads)
from ._dispatch import fused_op, kernels, to_layout
from .conv2d_bn_leaky_relu import _conv2d_backward, _out_shape as _conv2d_shape
from .conv_transpose_bn_relu import _conv_transpose_backward, _layout_for, _out_shape as _conv_transpose_shape
from .virtual_batch_norm import check_vbn_arguments, vbn_backward, virtual_batch_norm_reference


def conv_transpose_vbn_relu_reference(x, weight, bias, bn_weight, bn_bias, ref_size, eps=1e-5, stride=1,
                                      padding=0, output_padding=0):
    """Eager PyTorch: nn.Sequential(ConvTranspose2d, VirtualBatchNorm2d, ReLU)."""
    z = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)
    return virtual_batch_norm_reference(z, ref_size, bn_weight, bn_bias, eps, 0.0)


def conv2d_vbn_leaky_relu_reference(x, weight, bias, bn_weight, bn_bias, ref_size, eps=1e-5, stride=1, padding=0,
                                    negative_slope=0.2):
    """Eager PyTorch: nn.Sequential(Conv2d, VirtualBatchNorm2d, LeakyReLU)."""
    z = F.conv2d(x, weight, bias, stride, padding)
    return virtual_batch_norm_reference(z, ref_size, bn_weight, bn_bias, eps, negative_slope)


def conv_transpose_vbn_relu(x, weight, bias, bn_weight, bn_bias, ref_size, eps=1e-5, stride=1, padding=0,
                            output_padding=0, training=True, impl=None):
    """relu(virtual_batch_norm(conv_transpose2d(x, weight, bias, stride, padding, output_padding))).

    x [N, C_in, H, W] with the reference batch as its first ref_size samples, weight [C_in, C_out,
    kH, kW], bias / bn_weight / bn_bias [C_out] or None. `training`: as virtual_batch_norm's."""
    x, weight, bias = lower(x.device.type, x, weight, bias)  # as torch.autocast casts a convolution
    check_block_arguments(x, weight, 0, bias, bn_weight, bn_bias, None, None, training, 0.1, None)
    sizes = [pair(stride, "stride", 1), pair(padding, "padding", 0), pair(output_padding, "output_padding", 0)]
    return _block(x, weight, bias, bn_weight, bn_bias, ref_size, eps, sizes, True, 0.0, training, impl)


def conv2d_vbn_leaky_relu(x, weight, bias, bn_weight, bn_bias, ref_size, eps=1e-5, stride=1, padding=0,
                          negative_slope=0.2, training=True, impl=None):
    """leaky_relu(virtual_batch_norm(conv2d(x, weight, bias, stride, padding)), negative_slope).

    x [N, C_in, H, W] with the reference batch as its first ref_size samples, weight [C_out, C_in,
    kH, kW], bias / bn_weight / bn_bias [C_out] or None. `training`: as virtual_batch_norm's."""
    x, weight, bias = lower(x.device.type, x, weight, bias)  # as torch.autocast casts a convolution
    check_block_arguments(x, weight, 1, bias, bn_weight, bn_bias, None, None, training, 0.1, None)
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        raise TypeError(f"fastgan: negative_slope must be a number, got {type(negative_slope).__name__}")
    sizes = [pair(stride, "stride", 1), pair(padding, "padding", 0), [0, 0]]
    return _block(x, weight, bias, bn_weight, bn_bias, ref_size, eps, sizes, False, float(negative_slope), training,
                  impl)


def _block(x, weight, bias, bn_weight, bn_bias, ref_size, eps, sizes, transposed, slope, training, impl):
    check_vbn_arguments(x.shape[0], ref_size, slope, training, name="x")
    z_shape = _z_shape(x, weight, sizes, transposed)
    if min(z_shape) <= 0:
        raise ValueError(f"fastgan: the output of the convolution would be empty: {z_shape}")
    eps = check_eps(eps)
    impl = resolve(impl, x.device)
    if impl == "reference":
        if transposed:
            return conv_transpose_vbn_relu_reference(x, weight, bias, bn_weight, bn_bias, ref_size, eps, *sizes)
        return conv2d_vbn_leaky_relu_reference(x, weight, bias, bn_weight, bn_bias, ref_size, eps, *sizes[:2], slope)
    gamma, beta = in_stats_dtype(x, bn_weight, bn_bias)
    return _train(x, weight, bias, gamma, beta, ref_size, eps, *sizes, transposed, slope, impl)[0]


def _z_shape(x, weight, sizes, transposed):
    return _conv_transpose_shape(x, weight, sizes) if transposed else _conv2d_shape(x, weight, sizes[:2])


def _layout(x, transposed):
    return _layout_for(x) if transposed else LAYOUT


def _train_kernel(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                  beta: Optional[torch.Tensor], ref_size: int, eps: float, stride: list[int], padding: list[int],
                  output_padding: list[int], transposed: bool, negative_slope: float,
                  impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, z, mean, invstd, x as the kernels took it if converted); z without the conv bias."""
    k = kernels(impl)
    fmt = _layout(x, transposed)
    x_fmt = to_layout(k, x, fmt)
    if transposed:
        z = k.conv_transpose(x_fmt, dense_weight(weight), stride, padding, output_padding)
    else:
        z = k.conv2d(x_fmt, dense_weight(weight), stride, padding)
    z = as_layout(z, fmt)
    y, mean, invstd = k.vbn_forward(z, ref_size, gamma, beta, eps, negative_slope)
    return y, z, mean, invstd, saved_input(x, x_fmt)


def _train_fake(x, weight, bias, gamma, beta, ref_size, eps, stride, padding, output_padding, transposed,
                negative_slope, impl):
    shape = _z_shape(x, weight, [stride, padding, output_padding], transposed)
    fmt = _layout(x, transposed)
    stats = x.new_empty(shape[:2], dtype=stats_dtype(x))
    return empty(shape, x, fmt), empty(shape, x, fmt), stats, torch.empty_like(stats), saved_input_fake(x, fmt)


def _train_setup(ctx, inputs, output):
    (x, weight, bias, gamma, beta, ctx.ref_size, ctx.eps, ctx.stride, ctx.padding, ctx.output_padding,
     ctx.transposed, ctx.negative_slope, ctx.impl) = inputs
    _, z, mean, invstd, x_saved = output
    ctx.mark_non_differentiable(z, mean, invstd, x_saved)
    ctx.set_materialize_grads(False)  # else autograd fills zero gradients for z and x_saved (passes over them)
    save_block(ctx, x, weight, bias, gamma, beta, z, mean, invstd, x_saved)


def _train_bwd(ctx, grad_y, *_):
    if grad_y is None:  # y took no part in what is differentiated
        return (None,) * 13
    if torch.is_grad_enabled():  # create_graph: the gradients must be differentiable themselves
        return _train_bwd_differentiable(ctx, grad_y)
    return _train_bwd_fused(ctx, grad_y)


def _train_bwd_differentiable(ctx, grad_y):
    """The explicit fallback for double backward: the reference formula on the saved inputs."""
    inputs, wanted = saved_block_inputs(ctx)
    x, weight, bias, gamma, beta = inputs
    with torch.enable_grad():
        if ctx.transposed:
            z = F.conv_transpose2d(x, weight, bias, ctx.stride, ctx.padding, ctx.output_padding)
        else:
            z = F.conv2d(x, weight, bias, ctx.stride, ctx.padding)
        y = virtual_batch_norm_reference(z, ctx.ref_size, gamma, beta, ctx.eps, ctx.negative_slope)
        grads = wanted_grads(y, inputs, wanted, grad_y)
    return (*grads,) + (None,) * 8


@torch.autograd.function.once_differentiable
def _train_bwd_fused(ctx, grad_y):
    x, weight, gamma, beta, z, mean, invstd, _, _ = ctx.saved_tensors
    grad_z, grad_gamma, grad_beta = call(vbn_backward, grad_y, z, mean, invstd, gamma, beta, ctx.ref_size,
                                         ctx.negative_slope, ctx.impl)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = grad_w = None
    if need_x or need_w:
        if ctx.transposed:
            grad_x, grad_w = call(_conv_transpose_backward, grad_z, x, weight, ctx.stride, ctx.padding,
                                  ctx.output_padding, need_x, need_w, ctx.impl)
        else:
            grad_x, grad_w = call(_conv2d_backward, grad_z, x, weight, ctx.stride, ctx.padding, need_x, need_w,
                                  ctx.impl)
    out_dim = 1 if ctx.transposed else 0
    grad_b = cancelled_bias_grad(weight, weight.shape[out_dim]) if ctx.has_bias and need_b else None
    return (grad_x if need_x else None, grad_w if need_w else None, grad_b,
            grad_gamma if gamma is not None else None, grad_beta if beta is not None else None) + (None,) * 8


_train = fused_op("conv_vbn_train", _train_kernel, _train_fake, _train_bwd, _train_setup)
