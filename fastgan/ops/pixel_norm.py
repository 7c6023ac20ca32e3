"""Pixelwise feature normalization (SPEC 4): y = x * rsqrt(mean_c(x^2) + eps).

Normalizes over dim 1 of a tensor of rank >= 2 ([N, C] latents or [N, C, H, W]
feature maps). Double backward: the backward is the custom op
`pixel_norm_backward`; its gradient with respect to the incoming gradient is
that same fused op again, the one with respect to x is eager PyTorch code.
"""

import torch

from .._backend import resolve
from .._checks import as_layout, check_eps, check_tensor, empty, memory_format
from ._dispatch import fused_op, kernels


def default_eps(dtype):
    """SPEC 4: 1e-8, and 1e-4 for float16."""
    return 1e-4 if dtype == torch.float16 else 1e-8


def pixel_norm_reference(x, eps=None):
    """Eager PyTorch, statistics in float32 (float64 for float64 inputs)."""
    eps = default_eps(x.dtype) if eps is None else eps
    xf = x if x.dtype == torch.float64 else x.float()
    return (xf * torch.rsqrt(xf.square().mean(dim=1, keepdim=True) + eps)).to(x.dtype)


def pixel_norm(x, eps=None, impl=None):
    """Normalize each feature vector x[n, :, ...] to unit root-mean-square (eps: see default_eps)."""
    check_tensor(x, "x", min_ndim=2)
    eps = check_eps(default_eps(x.dtype) if eps is None else eps)
    impl = resolve(impl, x.device)
    if impl == "reference":
        return pixel_norm_reference(x, eps)
    return _pixel_norm(x, eps, impl)


def _pixel_norm_kernel(x: torch.Tensor, eps: float, impl: str) -> torch.Tensor:
    return kernels(impl).pixel_norm(as_layout(x, memory_format(x)), eps)


def _pixel_norm_backward_kernel(grad: torch.Tensor, x: torch.Tensor, eps: float, impl: str) -> torch.Tensor:
    fmt = memory_format(x)
    return kernels(impl).pixel_norm_backward(as_layout(grad, fmt), as_layout(x, fmt), eps)


def _like_x(*args):
    x = args[-3]  # (..., x, eps, impl)
    return empty(x.shape, x, memory_format(x))


def _save_x(ctx, inputs, output):
    # inputs end with (..., x, eps, impl): keep the tensors, eps and impl.
    ctx.eps, ctx.impl = inputs[-2:]
    ctx.save_for_backward(*inputs[:-2])


def _pixel_norm_bwd(ctx, grad):
    (x,) = ctx.saved_tensors
    return _pixel_norm_backward(grad, x, ctx.eps, ctx.impl), None, None


def _pixel_norm_backward_bwd(ctx, gg):
    """Gradients of gx = r*g - x*r^3*sum_c(g*x)/C with r = rsqrt(mean_c(x^2) + eps)."""
    grad, x = ctx.saved_tensors
    d_grad = d_x = None
    if ctx.needs_input_grad[0]:
        d_grad = _pixel_norm_backward(gg, x, ctx.eps, ctx.impl)
    if ctx.needs_input_grad[1]:
        d_x = pixel_norm_backward_x_grad(grad, x, gg, ctx.eps)
    return d_grad, d_x, None, None


def pixel_norm_backward_x_grad(grad, x, gg, eps):
    """The gradient with respect to x of <gg, pixel_norm_backward(grad, x)>, eager (differentiable)."""
    c = x.shape[1]
    r = torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)
    s = (grad * x).sum(dim=1, keepdim=True)
    a = (gg * grad).sum(dim=1, keepdim=True)
    b = (gg * x).sum(dim=1, keepdim=True)
    r3 = r * r * r
    return -r3 / c * (a * x + s * gg + b * grad) + 3.0 * r3 * r * r * b * s * x / (c * c)


_pixel_norm = fused_op("pixel_norm", _pixel_norm_kernel, _like_x, _pixel_norm_bwd, _save_x)
_pixel_norm_backward = fused_op("pixel_norm_backward", _pixel_norm_backward_kernel, _like_x,
                                _pixel_norm_backward_bwd, _save_x)
