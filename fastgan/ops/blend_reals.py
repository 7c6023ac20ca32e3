"""Real-image blend of progressive growing (SPEC 6):

    out = (1 - alpha) * upsample_nearest_2x(avg_pool_2x2(x)) + alpha * x

Each output pixel mixes itself with the mean of its 2x2 block. The map is
self-adjoint, so the backward of `blend_reals` is `blend_reals` of the gradient
with the same alpha, to every order.
"""

import torch
import torch.nn.functional as F

from .._backend import resolve
from .._checks import as_layout, check_alpha, check_tensor, empty, memory_format
from ._dispatch import fused_op, kernels


def blend_reals_reference(x, alpha):
    low = F.avg_pool2d(x, kernel_size=2)
    return (1.0 - alpha) * F.interpolate(low, scale_factor=2.0, mode="nearest") + alpha * x


def blend_reals(x, alpha, impl=None):
    """Blend real images [N, C, H, W] (H and W even) with their 2x down-then-up-sampled copy."""
    check_tensor(x, "x", ndim=4)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"fastgan: x must have even height and width, got shape {tuple(x.shape)}")
    alpha = check_alpha(alpha)
    impl = resolve(impl, x.device)
    if impl == "reference":
        return blend_reals_reference(x, alpha)
    return _blend_reals(x, alpha, impl)


def _blend_reals_kernel(x: torch.Tensor, alpha: float, impl: str) -> torch.Tensor:
    return kernels(impl).blend_reals(as_layout(x, memory_format(x)), alpha)


def _blend_reals_fake(x, alpha, impl):
    return empty(x.shape, x, memory_format(x))


def _save_alpha_impl(ctx, inputs, output):
    ctx.alpha, ctx.impl = inputs[-2:]


def _blend_reals_bwd(ctx, grad):
    return _blend_reals(grad, ctx.alpha, ctx.impl), None, None


_blend_reals = fused_op("blend_reals", _blend_reals_kernel, _blend_reals_fake, _blend_reals_bwd, _save_alpha_impl)
