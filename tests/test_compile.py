"""torch.compile(fullgraph=True) through the custom ops: fake kernels and autograd are registered."""

import pytest
import torch

import fastgan
from fastgan.ops import blend_reals_reference, fade_in_reference, pixel_norm_reference
from helpers import CPU_BACKENDS, randn


class ToyGrowingGenerator(torch.nn.Module):
    """A progressive-growing tail: pixel norm on both resolutions, then fade-in of the RGB outputs."""

    def __init__(self, impl, alpha=0.4):
        super().__init__()
        self.norm = fastgan.nn.PixelNorm(impl=impl)
        self.fade = fastgan.nn.FadeIn(alpha, impl=impl)
        self.impl = impl

    def forward(self, low, high):
        out = self.fade(self.norm(low), self.norm(high))
        return fastgan.ops.blend_reals(out, 0.7, impl=self.impl)


def eager(low, high):
    out = fade_in_reference(pixel_norm_reference(low), pixel_norm_reference(high), 0.4)
    return blend_reals_reference(out, 0.7)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_compile_fullgraph_forward_and_backward(impl):
    torch._dynamo.reset()
    model = torch.compile(ToyGrowingGenerator(impl), fullgraph=True)
    low = randn((2, 4, 3, 5)).requires_grad_()
    high = randn((2, 4, 6, 10), "channels_last").requires_grad_()
    out = model(low, high)
    want = eager(low, high)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(out, (low, high), g), torch.autograd.grad(want, (low, high), g)):
        torch.testing.assert_close(a, b)
