"""Generator-side fade-in of progressive growing (SPEC 6):

    out = (1 - alpha) * upsample_nearest_2x(rgb_low) + alpha * rgb_high

The up-sampled tensor is never materialized. The op is linear, so its backward
is the fused `fade_in_backward` (a 2x2 sum-pool of the gradient) and the
backward of that is `fade_in` again: derivatives of every order stay fused.
"""

import torch
import torch.nn.functional as F

from .._backend import resolve
from .._checks import as_layout, check_alpha, check_same, check_tensor, empty, memory_format
from ._dispatch import fused_op, kernels


def fade_in_reference(rgb_low, rgb_high, alpha):
    return (1.0 - alpha) * F.interpolate(rgb_low, scale_factor=2.0, mode="nearest") + alpha * rgb_high


def fade_in(rgb_low, rgb_high, alpha, impl=None):
    """Blend the 2x nearest up-sampling of `rgb_low` [N, C, H, W] into `rgb_high` [N, C, 2H, 2W]."""
    check_tensor(rgb_low, "rgb_low", ndim=4)
    check_tensor(rgb_high, "rgb_high", ndim=4)
    check_same(rgb_low, "rgb_low", rgb_high, "rgb_high")
    n, c, h, w = rgb_low.shape
    if tuple(rgb_high.shape) != (n, c, 2 * h, 2 * w):
        raise ValueError(f"fastgan: rgb_high must have shape {(n, c, 2 * h, 2 * w)} (rgb_low's batch and "
                         f"channels, twice its height and width), got {tuple(rgb_high.shape)}")
    alpha = check_alpha(alpha)
    impl = resolve(impl, rgb_high.device)
    if impl == "reference":
        return fade_in_reference(rgb_low, rgb_high, alpha)
    return _fade_in(rgb_low, rgb_high, alpha, impl)


def _fade_in_kernel(rgb_low: torch.Tensor, rgb_high: torch.Tensor, alpha: float, impl: str) -> torch.Tensor:
    fmt = memory_format(rgb_high)
    return kernels(impl).fade_in(as_layout(rgb_low, fmt), as_layout(rgb_high, fmt), alpha)


def _fade_in_backward_kernel(grad: torch.Tensor, alpha: float, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    return kernels(impl).fade_in_backward(as_layout(grad, memory_format(grad)), alpha)


def _fade_in_fake(rgb_low, rgb_high, alpha, impl):
    return empty(rgb_high.shape, rgb_high, memory_format(rgb_high))


def _fade_in_backward_fake(grad, alpha, impl):
    n, c, h, w = grad.shape
    fmt = memory_format(grad)
    return empty((n, c, h // 2, w // 2), grad, fmt), empty(grad.shape, grad, fmt)


def _save_alpha_impl(ctx, inputs, output):
    ctx.alpha, ctx.impl = inputs[-2:]


def _fade_in_bwd(ctx, grad):
    grad_low, grad_high = _fade_in_backward(grad, ctx.alpha, ctx.impl)
    return grad_low, grad_high, None, None


def _fade_in_backward_bwd(ctx, gg_low, gg_high):
    return _fade_in(gg_low, gg_high, ctx.alpha, ctx.impl), None, None


_fade_in = fused_op("fade_in", _fade_in_kernel, _fade_in_fake, _fade_in_bwd, _save_alpha_impl)
_fade_in_backward = fused_op("fade_in_backward", _fade_in_backward_kernel, _fade_in_backward_fake,
                             _fade_in_backward_bwd, _save_alpha_impl)
