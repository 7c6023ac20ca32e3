"""Modules of progressive growing (ProGAN)."""

import torch

from .. import ops


class PixelNorm(torch.nn.Module):
    """y = x * rsqrt(mean over channels of x^2 + eps); ProGAN's generator normalization.

    eps defaults to 1e-8 (1e-4 for float16 inputs), as SPEC 4 asks.
    """

    def __init__(self, eps=None, impl=None):
        super().__init__()
        self.eps = eps
        self.impl = impl

    def forward(self, x):
        return ops.pixel_norm(x, self.eps, impl=self.impl)

    def extra_repr(self):
        return f"eps={self.eps}"


class FadeIn(torch.nn.Module):
    """out = (1 - alpha) * upsample_2x(rgb_low) + alpha * rgb_high; set `alpha` from the schedule."""

    def __init__(self, alpha=0.0, impl=None):
        super().__init__()
        self.alpha = alpha
        self.impl = impl

    def forward(self, rgb_low, rgb_high):
        return ops.fade_in(rgb_low, rgb_high, self.alpha, impl=self.impl)

    def extra_repr(self):
        return f"alpha={self.alpha}"
