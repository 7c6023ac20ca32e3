"""The ProGAN generator's epilogue in one pass (SPEC 3 + 4):

    y = pixel_norm(a),  a = lrelu(x + bias, alpha) * gain

normalizing over dim 1 (bias: [C]). `a` is never stored: the backward kernel
recomputes it from x and the bias. Derivatives:
    grad_x    = gain * (a > 0 ? 1 : alpha) * pixel_norm_backward(grad, a)   (fused)
    grad_bias = sum of grad_x over all dims but 1
and of grad_x, with M = gain * (a > 0 ? 1 : alpha) piecewise constant and the
pixel-norm Jacobian symmetric: d_grad = pixel_norm_backward(gg * M, a) and
d_x = M * (the x-gradient of pixel_norm_backward, pixel_norm.py's eager formula),
a and gg * M coming from the fused bias_act ops.
"""

import torch

from .._backend import resolve
from .._checks import as_layout, check_device, check_eps, check_tensor, empty, memory_format
from ._dispatch import fused_op, kernels
from .bias_act import _bias_act, _bias_act_backward, act_params, bias_shape, promote, sum_except
from .pixel_norm import _pixel_norm_backward, default_eps, pixel_norm_backward_x_grad, pixel_norm_reference


def bias_act_pixel_norm_reference(x, bias, alpha=0.2, gain=1.0, eps=None):
    """Eager PyTorch in float32 (float64 for float64 inputs). Out in x's dtype promoted with the bias's,
    as eager's x + bias (a bfloat16 x with a float32 bias: float32), eps defaulting to that dtype's."""
    out_dtype = torch.promote_types(x.dtype, bias.dtype)
    eps = default_eps(out_dtype) if eps is None else eps
    xf = x.to(torch.float64 if out_dtype == torch.float64 else torch.float32)
    a = torch.nn.functional.leaky_relu(xf + bias.to(xf.dtype).reshape(bias_shape(x, 1)), alpha) * gain
    return pixel_norm_reference(a, eps).to(out_dtype)


def bias_act_pixel_norm(x, bias, alpha=0.2, gain=1.0, eps=None, impl=None):
    """pixel_norm(lrelu(x + bias, alpha) * gain) over dim 1 of x (rank >= 2); bias [C].
    eps defaults to pixel_norm's (1e-8, 1e-4 for float16)."""
    check_tensor(x, "x", min_ndim=2)
    check_tensor(bias, "bias", ndim=1)
    check_device(bias, "bias", x, "x")
    if bias.shape[0] != x.shape[1]:
        raise ValueError(f"fastgan: bias must have shape ({x.shape[1]},) (the channels of x), got {tuple(bias.shape)}")
    if bias.dtype != x.dtype:
        x, bias = promote(x, bias)  # eager's x + bias dtype (float32 for a half x and a float32 bias)
    slope, gain, _ = act_params("lrelu", alpha, gain)
    eps = check_eps(default_eps(x.dtype) if eps is None else eps)
    impl = resolve(impl, x.device)
    if impl == "reference":
        return bias_act_pixel_norm_reference(x, bias, slope, gain, eps)
    return _bias_act_pixel_norm(x, bias, slope, gain, eps, impl)


def _bias_act_pixel_norm_kernel(x: torch.Tensor, bias: torch.Tensor, slope: float, gain: float, eps: float,
                                impl: str) -> torch.Tensor:
    return kernels(impl).bias_act_pixel_norm(as_layout(x, memory_format(x)), bias.contiguous(), slope, gain, eps)


def _bias_act_pixel_norm_backward_kernel(grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, slope: float,
                                         gain: float, eps: float, impl: str) -> torch.Tensor:
    fmt = memory_format(x)
    return kernels(impl).bias_act_pixel_norm_backward(as_layout(grad, fmt), as_layout(x, fmt), bias.contiguous(),
                                                      slope, gain, eps)


def _like_x(*args):
    x = args[-6]  # (..., x, bias, slope, gain, eps, impl)
    return empty(x.shape, x, memory_format(x))


def _save_x_bias(ctx, inputs, output):
    # inputs end with (..., x, bias, slope, gain, eps, impl)
    ctx.slope, ctx.gain, ctx.eps, ctx.impl = inputs[-4:]
    ctx.save_for_backward(*inputs[:-4])


def _bias_act_pixel_norm_bwd(ctx, grad):
    x, bias = ctx.saved_tensors
    grad_x = _bias_act_pixel_norm_backward(grad, x, bias, ctx.slope, ctx.gain, ctx.eps, ctx.impl)
    grad_bias = sum_except(grad_x, 1) if ctx.needs_input_grad[1] else None
    return grad_x, grad_bias, None, None, None, None


def _bias_act_pixel_norm_backward_bwd(ctx, gg):
    grad, x, bias = ctx.saved_tensors
    slope, gain, impl = ctx.slope, ctx.gain, ctx.impl
    a = _bias_act(x, bias, 1, slope, gain, 1.0, 1.0, -1.0, impl)
    gg_m = _bias_act_backward(gg, a, slope, gain, 1.0, -1.0, impl)  # gg * M
    d_grad = d_x = d_bias = None
    if ctx.needs_input_grad[0]:
        d_grad = _pixel_norm_backward(gg_m, a, ctx.eps, impl)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        d_x = _bias_act_backward(pixel_norm_backward_x_grad(grad, a, gg_m, ctx.eps), a, slope, gain, 1.0, -1.0, impl)
        if ctx.needs_input_grad[2]:
            d_bias = sum_except(d_x, 1)
    return d_grad, d_x, d_bias, None, None, None, None


_bias_act_pixel_norm = fused_op("bias_act_pixel_norm", _bias_act_pixel_norm_kernel, _like_x,
                                _bias_act_pixel_norm_bwd, _save_x_bias)
_bias_act_pixel_norm_backward = fused_op("bias_act_pixel_norm_backward", _bias_act_pixel_norm_backward_kernel,
                                         _like_x, _bias_act_pixel_norm_backward_bwd, _save_x_bias)
