import pytest
import torch

import fastgan
from fastgan.ops.blend_reals import blend_reals_reference
from helpers import CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, check_forward_backward, gradchecks, randn

SHAPES = [(1, 3, 4, 4), (2, 3, 6, 10), (3, 7, 2, 2), (2, 1, 10, 6), (2, 16, 8, 14)]


def check(x, alpha, impl, dtype):
    op = lambda x, impl: fastgan.ops.blend_reals(x, alpha, impl=impl)  # noqa: E731
    check_forward_backward(op, lambda x: blend_reals_reference(x, alpha), [x], impl, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity(impl, shape, layout, dtype):
    check(randn(shape, layout, dtype), 0.61, impl, dtype)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_alpha_ends(impl, alpha):
    check(randn((2, 3, 4, 6)), alpha, impl, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity_low_precision_cpu(layout, dtype):
    check(randn((2, 3, 6, 18), layout, dtype), 0.61, "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity_cpu_large(layout, dtype):
    """Rows of many vectors and a tail (odd widths), outputs of megabytes."""
    check(randn((2, 4, 126, 514), layout, dtype), 0.61, "cpu", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, layout, dtype):
    for shape in SHAPES + [(32, 3, 256, 256)]:
        check(randn(shape, layout, dtype, "cuda"), 0.61, impl, dtype)


@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_gradcheck(impl):
    x = randn((2, 3, 4, 6), dtype=torch.float64).requires_grad_()
    fn = lambda x: fastgan.ops.blend_reals(x, 0.3, impl=impl)  # noqa: E731
    gradchecks(fn, (x,), impl)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl, layout):
    x = randn((2, 3, 4, 6), layout).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.blend_reals.default, (x, 0.3, impl))


@pytest.mark.parametrize("x, alpha, error, words", [
    (torch.randn(2, 3, 5, 4), 0.5, ValueError, "x must have even height and width"),
    (torch.randn(2, 3, 4, 7), 0.5, ValueError, "x must have even height and width"),
    (torch.randn(3, 4, 4), 0.5, ValueError, "x must be 4-D"),
    (torch.randn(2, 3, 4, 4), 2.0, ValueError, r"alpha must be in \[0, 1\]"),
    (torch.ones(2, 3, 4, 4, dtype=torch.int64), 0.5, TypeError, "x must be a floating tensor"),
])
def test_bad_input(x, alpha, error, words):
    with pytest.raises(error, match=words):
        fastgan.ops.blend_reals(x, alpha, impl="cpu")
