"""Discriminator-side fade-in of progressive growing (SPEC 6):

    out = (1 - alpha) * lrelu(conv1x1(avg_pool_2x2(img), weight * w_mul) + bias * lr_mul) + alpha * x_high

with the equalized learning rate of SPEC 3: w_mul = gain / sqrt(C_img) * lr_mul, applied
inside the kernels to the raw weight [C_out, C_img, 1, 1] (no scaled copy). The pooling,
the 1x1 conv (a per-pixel matrix-vector product over the C_img = 3 colour channels), the
bias, the lrelu and the blend are one pass over x_high.

Derivatives: the fused `fade_in_from_rgb_backward` gives the gradients of img, x_high,
weight and bias in one pass (z is recomputed, not saved). It is linear in the incoming
gradient for a fixed lrelu mask, and the mask has zero curvature, so its own backward
(`_fade_in_from_rgb_backward_bwd`, eager PyTorch) is linear in the incoming gradients.
"""

import math

import torch
import torch.nn.functional as F

from .._backend import resolve
from .._checks import as_layout, check_alpha, check_device, check_same, check_tensor, empty, memory_format
from ._autocast import lower
from ._dispatch import _traced, fused_op, kernels


def _scales(img_channels, gain, lr_mul):
    """(w_mul, b_mul) of the equalized 1x1 conv."""
    return gain / math.sqrt(img_channels) * lr_mul, lr_mul


def fade_in_from_rgb_reference(img, x_high, weight, bias, alpha, gain=math.sqrt(2), lr_mul=1.0, slope=0.2):
    w_mul, b_mul = _scales(img.shape[1], gain, lr_mul)
    y = F.leaky_relu(F.conv2d(F.avg_pool2d(img, 2), weight * w_mul, bias * b_mul), slope)
    return (1.0 - alpha) * y + alpha * x_high


def _check_args(img, x_high, weight, bias):
    check_tensor(img, "img", ndim=4)
    check_tensor(x_high, "x_high", ndim=4)
    check_tensor(weight, "weight", ndim=4)
    check_tensor(bias, "bias", ndim=1)
    check_device(x_high, "x_high", img, "img")  # x_high's dtype may differ: the blend promotes
    for t, name in ((weight, "weight"), (bias, "bias")):
        check_same(t, name, img, "img")
    n, ci, hh, wh = img.shape
    co = x_high.shape[1]
    if tuple(x_high.shape) != (n, co, hh // 2, wh // 2) or hh % 2 or wh % 2:
        raise ValueError(f"fastgan: x_high must be [N, C_out, H/2, W/2] for img of shape {tuple(img.shape)} "
                         f"(even H and W), got {tuple(x_high.shape)}")
    if tuple(weight.shape) != (co, ci, 1, 1):
        raise ValueError(f"fastgan: weight must have shape {(co, ci, 1, 1)} (x_high's channels, img's channels, "
                         f"1, 1), got {tuple(weight.shape)}")
    if tuple(bias.shape) != (co,):
        raise ValueError(f"fastgan: bias must have shape {(co,)}, got {tuple(bias.shape)}")


def fade_in_from_rgb(img, x_high, weight, bias, alpha, gain=math.sqrt(2), lr_mul=1.0, slope=0.2, impl=None):
    """Blend from_rgb(avg_pool_2x2(img)) into x_high [N, C_out, H, W]; img is [N, C_img, 2H, 2W]."""
    img, weight, bias = lower(img.device.type, img, weight, bias)  # as torch.autocast casts from_rgb's conv
    _check_args(img, x_high, weight, bias)
    if x_high.dtype != img.dtype:
        # Eager's blend promotes (autocast's bfloat16 conv output + a float32 x_high: float32): the conv's
        # operands, as autocast rounded them, and x_high go to that dtype (img is 12 / C_out of x_high's
        # size). A weight or bias of another dtype than img _check_args rejects, as eager's conv2d does.
        dtype = torch.promote_types(x_high.dtype, img.dtype)
        img, x_high, weight, bias = (t.to(dtype) for t in (img, x_high, weight, bias))
    alpha = check_alpha(alpha)
    gain, lr_mul, slope = float(gain), float(lr_mul), float(slope)
    impl = resolve(impl, x_high.device)
    if impl == "reference":
        return fade_in_from_rgb_reference(img, x_high, weight, bias, alpha, gain, lr_mul, slope)
    w_mul, b_mul = _scales(img.shape[1], gain, lr_mul)
    return _fade_in_from_rgb(img, x_high, weight, bias, alpha, w_mul, b_mul, slope, impl)


def _fade_in_from_rgb_kernel(img: torch.Tensor, x_high: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             alpha: float, w_mul: float, b_mul: float, slope: float, impl: str) -> torch.Tensor:
    fmt = memory_format(x_high)
    return kernels(impl).fade_in_from_rgb(as_layout(img, fmt), as_layout(x_high, fmt), weight.contiguous(),
                                          bias.contiguous(), alpha, w_mul, b_mul, slope)


def _fade_in_from_rgb_backward_kernel(
        grad: torch.Tensor, img: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float,
        w_mul: float, b_mul: float, slope: float, impl: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    fmt = memory_format(grad)
    return kernels(impl).fade_in_from_rgb_backward(as_layout(grad, fmt), as_layout(img, fmt), weight.contiguous(),
                                                   bias.contiguous(), alpha, w_mul, b_mul, slope)


def _fade_in_from_rgb_fake(img, x_high, weight, bias, alpha, w_mul, b_mul, slope, impl):
    return empty(x_high.shape, x_high, memory_format(x_high))


def _fade_in_from_rgb_backward_fake(grad, img, weight, bias, alpha, w_mul, b_mul, slope, impl):
    fmt = memory_format(grad)
    return (empty(img.shape, img, fmt), empty(grad.shape, grad, fmt),
            torch.empty_like(weight, memory_format=torch.contiguous_format),
            torch.empty_like(bias, memory_format=torch.contiguous_format))


def _save_forward(ctx, inputs, output):
    img, _, weight, bias = inputs[:4]
    ctx.scalars = inputs[4:]  # alpha, w_mul, b_mul, slope, impl
    ctx.save_for_backward(img, weight, bias)


def _save_backward(ctx, inputs, output):
    ctx.scalars = inputs[4:]
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: its terms are skipped
    ctx.save_for_backward(*inputs[:4])  # grad, img, weight, bias


def _fade_in_from_rgb_bwd(ctx, grad):
    img, weight, bias = ctx.saved_tensors
    g_img, g_high, g_weight, g_bias = _fade_in_from_rgb_backward(grad, img, weight, bias, *ctx.scalars)
    return g_img, g_high, g_weight, g_bias, None, None, None, None, None


def _fade_in_from_rgb_backward_bwd(ctx, gg_img, gg_high, gg_weight, gg_bias):
    """Second derivatives. With p = avg_pool_2x2(img), z the conv output, m = lrelu'(z)
    (1 or slope) and gz = (1 - alpha) * m * grad, the backward is
        grad_img = up_2x(w_mul * W^T gz) / 4, grad_x_high = alpha * grad,
        grad_weight = w_mul * sum gz p^T, grad_bias = b_mul * sum gz.
    Its derivatives, with q = avg_pool_2x2(gg_img):
        d grad   = (1 - alpha) * m * (w_mul * (W q + gg_weight p) + b_mul * gg_bias) + alpha * gg_x_high
        d img    = up_2x(w_mul * gg_weight^T gz) / 4
        d weight = w_mul * sum gz q^T
        d bias   = 0 (bias enters only through the mask).
    A gradient penalty through img brings gg_img (and gg_x_high) alone: the terms of q are one
    kernel pass (fade_in_from_rgb_double_backward) when nothing differentiates this backward again
    or traces it; everything else is eager, with autograd."""
    grad, img, weight, bias = ctx.saved_tensors
    alpha, w_mul, b_mul, slope, impl = ctx.scalars
    # An incoming gradient that is None (zero) skips its terms: the convolutions with gg_weight
    # would be of zeros.
    need_grad = ctx.needs_input_grad[0]
    need_img = ctx.needs_input_grad[1] and gg_weight is not None
    need_weight = ctx.needs_input_grad[2] and gg_img is not None
    d_grad = d_img = d_weight = None
    if gg_img is not None and (need_grad or need_weight) and not torch.is_grad_enabled() and not _traced():
        fmt = memory_format(grad)
        d_grad, d_weight = kernels(impl).fade_in_from_rgb_double_backward(
            as_layout(grad, fmt), as_layout(img, fmt), as_layout(gg_img, fmt), weight.contiguous(), bias.contiguous(),
            alpha, w_mul, b_mul, slope, need_grad, need_weight)
        d_grad, d_weight, gg_img = d_grad if need_grad else None, d_weight if need_weight else None, None
    grad_of_z = need_grad and (gg_img is not None or gg_weight is not None or gg_bias is not None)
    if grad_of_z or need_img or (need_weight and gg_img is not None):
        d_grad, d_img, d_weight_q = _eager_terms(grad, img, weight, bias, gg_img, gg_weight, gg_bias, alpha, w_mul,
                                                 b_mul, slope, grad_of_z, need_img, need_weight, d_grad)
        d_weight = d_weight if d_weight_q is None else d_weight_q
    if need_grad and gg_high is not None:
        d_grad = gg_high * alpha if d_grad is None else d_grad + gg_high * alpha
    return d_grad, d_img, d_weight, None, None, None, None, None, None


def _eager_terms(grad, img, weight, bias, gg_img, gg_weight, gg_bias, alpha, w_mul, b_mul, slope, grad_of_z,
                 need_img, need_weight, d_grad):
    """The double backward's terms through z (see _fade_in_from_rgb_backward_bwd) in eager PyTorch,
    differentiable: (d_grad with them added, d_img, d_weight), None where not asked for. The
    full-size work is z, the product with the mask (leaky_relu_backward: exactly m * t) and the
    convolutions; the scales are folded into the small weight-sized tensors."""
    co, ci = weight.shape[:2]
    # Each scalar enters on its own (t - t * alpha, not (1 - alpha) * t): traced with dynamic
    # shapes they are symbolic floats, and AOT autograd cannot turn compound ones into tensors.

    def blended(t):  # (1 - alpha) * t
        return t - t * alpha

    # In the saved tensors' dtype, as the first backward: autocast would round z to half precision
    # and move the mask.
    with torch.autocast(img.device.type, enabled=False):
        p = F.avg_pool2d(img, 2)
        z = F.conv2d(p, weight * w_mul, bias * b_mul)
        q = None if gg_img is None else F.avg_pool2d(gg_img, 2)
        d_img = d_weight = None
        if grad_of_z:
            t = None  # (1 - alpha) * the change of z
            if gg_weight is not None:
                t = F.conv2d(p, blended(gg_weight * w_mul), None if gg_bias is None else blended(gg_bias * b_mul))
            elif gg_bias is not None:
                t = blended(gg_bias * b_mul)[:, None, None].expand_as(z)
            if q is not None:
                tq = F.conv2d(q, blended(weight * w_mul))
                t = tq if t is None else t + tq
            d_t = torch.ops.aten.leaky_relu_backward(t, z, slope, False)
            d_grad = d_t if d_grad is None else d_grad + d_t
        if need_img or (need_weight and q is not None):
            mg = torch.ops.aten.leaky_relu_backward(grad, z, slope, False)  # gz / (1 - alpha)
        if need_img:
            d_p = F.conv2d(mg, blended(gg_weight.transpose(0, 1) * w_mul) * 0.25)
            n, _, h, w = d_p.shape  # nearest 2x up-sampling (F.interpolate's float scale breaks dynamic shapes)
            d_img = d_p[:, :, :, None, :, None].expand(n, ci, h, 2, w, 2).reshape(img.shape)
        if need_weight and q is not None:
            d_weight = blended(torch.einsum("nohw,nihw->oi", mg, q) * w_mul).reshape(co, ci, 1, 1)
    return d_grad, d_img, d_weight


_fade_in_from_rgb = fused_op("fade_in_from_rgb", _fade_in_from_rgb_kernel, _fade_in_from_rgb_fake,
                             _fade_in_from_rgb_bwd, _save_forward)
_fade_in_from_rgb_backward = fused_op("fade_in_from_rgb_backward", _fade_in_from_rgb_backward_kernel,
                                      _fade_in_from_rgb_backward_fake, _fade_in_from_rgb_backward_bwd,
                                      _save_backward)
