import pytest
import torch

import fastgan
from fastgan.ops.pixel_norm import default_eps, pixel_norm_reference
from helpers import (CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, assert_close, assert_close_to_parts, gradchecks,
                     randn)

SHAPES = [(1, 3, 5, 7), (2, 7, 4, 6), (3, 1, 8, 8), (2, 16, 9, 5), (2, 512, 2, 3), (2, 9, 3, 4)]
OTHER_RANKS = [(5, 17), (1, 512), (3, 4, 10), (2, 3, 2, 3, 2)]


def check(x, impl, dtype):
    """Output and grad_x against the reference in float64 on the same inputs, with x's dtype's eps on both
    sides. grad_x = r * (g - y * mean_c(g * y)), r = rsqrt(mean_c(x^2) + eps), is computed in float32
    (float64) from two terms that cancel where one value dominates the feature vector (C = 1: grad_x ~
    eps): its error is a few roundings of the terms, r * (|g| + |y| mean_c |g y|) (sqrt(C) more for the
    channel sum), not of the result (assert_close_to_parts)."""
    eps = default_eps(dtype)
    exact = x.detach().double().requires_grad_()
    mine = x.detach().requires_grad_()  # keeps x's strides
    want = pixel_norm_reference(exact, eps)
    got = fastgan.ops.pixel_norm(mine, eps, impl=impl)
    assert_close(got, want, dtype)
    grad = torch.randn_like(want).to(dtype)  # the gradient both get: representable in dtype
    (want_grad,) = torch.autograd.grad(want, exact, grad.double())
    (got_grad,) = torch.autograd.grad(got, mine, grad)
    with torch.no_grad():
        g, y, c = grad.double(), want, x.shape[1]
        r = (exact.square().mean(1, keepdim=True) + eps).rsqrt()
        parts = r * (g.abs() + y.abs() * (g * y).abs().mean(1, keepdim=True)) * (1 + c ** 0.5 / 8)
    assert_close_to_parts(got_grad, want_grad, parts, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity(impl, shape, layout, dtype):
    check(randn(shape, layout, dtype), impl, dtype)


@pytest.mark.parametrize("shape", OTHER_RANKS)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_other_ranks(impl, shape):
    check(randn(shape), impl, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parity_low_precision_cpu(dtype):
    check(randn((2, 7, 5, 3), "channels_last", dtype), "cpu", dtype)
    check(randn((2, 7, 5, 3), "contiguous", dtype), "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 64, 50, 50), (2, 512, 20, 30), (2, 64, 128, 128), (2, 71, 9, 7),
                                   (32, 512, 4, 4), (32, 512, 2, 2), (5, 40, 3, 5)])
def test_parity_cpu_large(shape, layout, dtype):
    """Vector loops and their tails in both layouts; samples of several NCHW tiles, the last one
    partial, pipelined or not; NCHW maps of a few pixels as rows, transposed by register tiles (from
    8 pixels) or element by element (csrc/cpu/pixel_norm.cpp)."""
    check(randn(shape, layout, dtype), "cpu", dtype)


def test_large_offset_is_scale_invariant():
    """x and 1e4 * x normalize to the same values (no overflow of the sum of squares in float32)."""
    x = randn((2, 64, 4, 4))
    for impl in CPU_BACKENDS:
        torch.testing.assert_close(fastgan.ops.pixel_norm(1e4 * x, impl=impl), pixel_norm_reference(x))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, layout, dtype):
    for shape in SHAPES + [(32, 512, 16, 16)]:
        check(randn(shape, layout, dtype, "cuda"), impl, dtype)


@pytest.mark.parametrize("shape", [(2, 3, 3, 2), (3, 5)])
@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_gradcheck(impl, shape):
    x = randn(shape, dtype=torch.float64).requires_grad_()
    fn = lambda x: fastgan.ops.pixel_norm(x, impl=impl)  # noqa: E731
    gradchecks(fn, (x,), impl)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl, layout):
    x = randn((2, 5, 3, 4), layout).requires_grad_()
    g = randn((2, 5, 3, 4), layout).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.pixel_norm.default, (x, 1e-8, impl))
    torch.library.opcheck(torch.ops.fastgan.pixel_norm_backward.default, (g, x, 1e-8, impl))


def test_module():
    x = randn((3, 8, 4, 4))
    m = fastgan.nn.PixelNorm(impl="cpu")
    torch.testing.assert_close(m(x), pixel_norm_reference(x))
    assert "eps" in repr(fastgan.nn.PixelNorm(eps=1e-6))


def test_default_eps_follows_spec():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    x[0, 0, 0, 0] = 1e-2  # mean square 3.3e-5: 1e-4 of eps is visible, 1e-8 would not be
    y = fastgan.ops.pixel_norm(x, impl="cpu")
    assert y[0, 0, 0, 0].item() == pytest.approx(1e-2 / (1e-4 / 3 + 1e-4) ** 0.5, rel=1e-2)


@pytest.mark.parametrize("bad, error, words", [
    (torch.ones(2, 3, dtype=torch.int32), TypeError, "x must be a floating tensor"),
    (torch.ones(5), ValueError, "x must have at least 2 dimensions"),
    ([1.0, 2.0], TypeError, "x must be a torch.Tensor"),
])
def test_bad_input(bad, error, words):
    with pytest.raises(error, match=words):
        fastgan.ops.pixel_norm(bad, impl="cpu")


def test_bad_eps():
    with pytest.raises(ValueError, match="eps must be positive"):
        fastgan.ops.pixel_norm(randn((2, 3)), eps=0.0)
