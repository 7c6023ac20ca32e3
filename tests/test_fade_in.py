import pytest
import torch

import fastgan
from fastgan.ops.fade_in import fade_in_reference
from helpers import CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, check_forward_backward, gradchecks, randn

LOW_SHAPES = [(1, 3, 4, 4), (2, 3, 3, 5), (3, 7, 1, 2), (2, 1, 5, 3), (2, 16, 6, 7)]
ALPHAS = [0.0, 0.37, 1.0]


def high_shape(low_shape):
    n, c, h, w = low_shape
    return (n, c, 2 * h, 2 * w)


def check(low, high, alpha, impl, dtype):
    op = lambda low, high, impl: fastgan.ops.fade_in(low, high, alpha, impl=impl)  # noqa: E731
    check_forward_backward(op, lambda low, high: fade_in_reference(low, high, alpha), [low, high], impl, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", LOW_SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity(impl, shape, layout, dtype):
    check(randn(shape, layout, dtype), randn(high_shape(shape), layout, dtype), 0.37, impl, dtype)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("layouts", [("contiguous", "channels_last"), ("channels_last", "strided")])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_mixed_layouts_and_alphas(impl, layouts, alpha):
    shape = (2, 3, 4, 5)
    check(randn(shape, layouts[0]), randn(high_shape(shape), layouts[1]), alpha, impl, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity_low_precision_cpu(layout, dtype):
    shape = (2, 3, 5, 9)
    check(randn(shape, layout, dtype), randn(high_shape(shape), layout, dtype), 0.37, "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity_cpu_large(layout, dtype):
    """Rows of many vectors and a tail (odd widths), outputs of megabytes."""
    shape = (2, 4, 63, 257)
    check(randn(shape, layout, dtype), randn(high_shape(shape), layout, dtype), 0.37, "cpu", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, layout, dtype):
    for shape in LOW_SHAPES + [(32, 3, 128, 128)]:
        low, high = randn(shape, layout, dtype, "cuda"), randn(high_shape(shape), layout, dtype, "cuda")
        check(low, high, 0.37, impl, dtype)


@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_gradcheck(impl):
    low = randn((2, 3, 2, 3), dtype=torch.float64).requires_grad_()
    high = randn((2, 3, 4, 6), dtype=torch.float64).requires_grad_()
    fn = lambda low, high: fastgan.ops.fade_in(low, high, 0.3, impl=impl)  # noqa: E731
    gradchecks(fn, (low, high), impl)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl, layout):
    low = randn((2, 3, 3, 4), layout).requires_grad_()
    high = randn((2, 3, 6, 8), layout).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.fade_in.default, (low, high, 0.3, impl))
    torch.library.opcheck(torch.ops.fastgan.fade_in_backward.default, (high, 0.3, impl))


def test_module():
    low, high = randn((2, 3, 4, 4)), randn((2, 3, 8, 8))
    m = fastgan.nn.FadeIn(alpha=0.25, impl="cpu")
    torch.testing.assert_close(m(low, high), fade_in_reference(low, high, 0.25))
    m.alpha = fastgan.ops.fade_alpha(images_shown=300, fade_images=400)
    torch.testing.assert_close(m(low, high), fade_in_reference(low, high, 0.75))


def test_fade_alpha_schedule():
    assert fastgan.ops.fade_alpha(0, 800) == 0.0
    assert fastgan.ops.fade_alpha(200, 800) == 0.25
    assert fastgan.ops.fade_alpha(5000, 800) == 1.0
    with pytest.raises(ValueError, match="fade_images"):
        fastgan.ops.fade_alpha(1, 0)


LOW, HIGH = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("low, high, alpha, error, words", [
    (LOW, HIGH, 1.5, ValueError, r"alpha must be in \[0, 1\], got 1.5"),
    (LOW, HIGH, -0.1, ValueError, r"alpha must be in \[0, 1\]"),
    (LOW, HIGH, torch.ones(2), ValueError, "alpha must be a number"),
    (LOW, HIGH[:, :, :7], 0.5, ValueError, "rgb_high must have shape"),
    (LOW[0], HIGH, 0.5, ValueError, "rgb_low must be 4-D"),
    (LOW, HIGH.double(), 0.5, TypeError, "rgb_low has dtype torch.float32 but rgb_high has torch.float64"),
    (LOW.int(), HIGH, 0.5, TypeError, "rgb_low must be a floating tensor"),
    (LOW, HIGH.to("meta"), 0.5, ValueError, "rgb_low is on cpu but rgb_high is on meta"),
])
def test_bad_input(low, high, alpha, error, words):
    with pytest.raises(error, match=words):
        fastgan.ops.fade_in(low, high, alpha, impl="cpu")
