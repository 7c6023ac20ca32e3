import pytest
import torch

import fastgan
from fastgan.ops.bias_act_pixel_norm import bias_act_pixel_norm_reference
from helpers import CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, check_forward_backward, gradchecks, randn

SHAPES = [(1, 3, 5, 7), (2, 7, 4, 6), (3, 1, 8, 8), (2, 16, 9, 5), (2, 512, 2, 3)]
OTHER_RANKS = [(5, 17), (1, 512), (3, 4, 10), (2, 3, 2, 3, 2)]


def check(x, impl, dtype, alpha=0.2, gain=1.0, bias_grad=True):
    """Output and gradients against the reference; bias_grad=False leaves the bias constant."""
    bias = randn(x.shape[1:2], dtype=dtype)

    def op(x, b=bias, impl=None):
        return fastgan.ops.bias_act_pixel_norm(x, b, alpha, gain, impl=impl)

    def reference(x, b=bias.to(torch.float32 if dtype != torch.float64 else dtype)):
        return bias_act_pixel_norm_reference(x, b, alpha, gain)

    check_forward_backward(op, reference, [x, bias] if bias_grad else [x], impl, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity(impl, shape, layout, dtype):
    check(randn(shape, layout, dtype), impl, dtype)


@pytest.mark.parametrize("alpha, gain", [(0.0, 1.0), (0.1, 2 ** 0.5), (1.0, 0.5)])
@pytest.mark.parametrize("shape", OTHER_RANKS)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_other_ranks_and_params(impl, shape, alpha, gain):
    check(randn(shape), impl, torch.float32, alpha, gain)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity_low_precision_cpu(layout, dtype):
    check(randn((2, 7, 5, 3), layout, dtype), "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 64, 50, 50), (2, 512, 20, 30), (2, 71, 9, 7)])
def test_parity_cpu_large(shape, layout, dtype):
    """Vector loops and their tails in both layouts; samples of several NCHW tiles, the last one
    partial. The bias gradient in float32 only: in float16/bfloat16 it sums hundreds of rounded
    grad_x values (as eager autograd does), beyond a float32 oracle's tolerance."""
    check(randn(shape, layout, dtype), "cpu", dtype, bias_grad=dtype == torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, layout, dtype):
    for shape in SHAPES + [(32, 512, 16, 16)]:
        check(randn(shape, layout, dtype, "cuda"), impl, dtype)


@pytest.mark.parametrize("shape, layout", [((2, 3, 3, 2), "contiguous"), ((2, 3, 3, 2), "channels_last"),
                                           ((3, 5), "contiguous")])  # channels-last is 4-D only
@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_gradcheck(impl, shape, layout):
    x = randn(shape, layout, torch.float64).requires_grad_()
    b = randn(shape[1:2], dtype=torch.float64).requires_grad_()
    fn = lambda x, b: fastgan.ops.bias_act_pixel_norm(x, b, 0.2, 1.3, impl=impl)  # noqa: E731
    gradchecks(fn, (x, b), impl)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl, layout):
    x = randn((2, 5, 3, 4), layout).requires_grad_()
    g = randn((2, 5, 3, 4), layout).requires_grad_()
    b = randn((5,)).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.bias_act_pixel_norm.default, (x, b, 0.2, 1.3, 1e-8, impl))
    torch.library.opcheck(torch.ops.fastgan.bias_act_pixel_norm_backward.default, (g, x, b, 0.2, 1.3, 1e-8, impl))


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    fn = torch.compile(lambda x, b: fastgan.ops.bias_act_pixel_norm(x, b, impl=impl), fullgraph=True)
    x = randn((2, 4, 3, 5), "channels_last").requires_grad_()
    b = randn((4,)).requires_grad_()
    out, want = fn(x, b), bias_act_pixel_norm_reference(x, b)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(want)
    for a, w in zip(torch.autograd.grad(out, (x, b), g), torch.autograd.grad(want, (x, b), g)):
        torch.testing.assert_close(a, w)


def test_matches_unfused_ops():
    x, b = randn((2, 8, 4, 4)), randn((8,))
    want = fastgan.ops.pixel_norm(fastgan.ops.bias_act(x, b, "lrelu", 0.2, 1.0, impl="cpu"), impl="cpu")
    torch.testing.assert_close(fastgan.ops.bias_act_pixel_norm(x, b, impl="cpu"), want)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x=torch.ones(2, 3, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
    (dict(x=torch.ones(3)), ValueError, "x must have at least 2 dimensions"),
    (dict(bias=torch.ones(4)), ValueError, r"bias must have shape \(3,\)"),
    (dict(bias=torch.ones(3, dtype=torch.float64)), TypeError, "bias has dtype"),
    (dict(bias=None), TypeError, "bias must be a torch.Tensor"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(gain=-1.0), ValueError, "gain must be positive"),
    (dict(eps=0.0), ValueError, "eps must be positive"),
])
def test_bad_input(kwargs, error, words):
    args = dict(x=torch.ones(2, 3), bias=torch.ones(3))
    args.update(kwargs)
    with pytest.raises(error, match=words):
        fastgan.ops.bias_act_pixel_norm(**args, impl="cpu")
