import pytest
import torch

import fastgan
from fastgan.ops.bias_act_pixel_norm import bias_act_pixel_norm_reference
from fastgan.ops.pixel_norm import default_eps
from helpers import (CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, assert_bias_grad_close, assert_close,
                     assert_close_to_parts, gradchecks, randn)

SHAPES = [(1, 3, 5, 7), (2, 7, 4, 6), (3, 1, 8, 8), (2, 16, 9, 5), (2, 512, 2, 3), (2, 9, 3, 4)]
OTHER_RANKS = [(5, 17), (1, 512), (3, 4, 10), (2, 3, 2, 3, 2)]


def check(x, impl, dtype, alpha=0.2, gain=1.0, bias_grad=True):
    """Output and gradients against the reference in float64 on the same inputs (x and the bias on
    x's device); bias_grad=False leaves the bias constant. The side of the lrelu kink needs no care:
    the kernels' x + bias (float32 or float64) has the exact sum's sign. eps: dtype's default, in both."""
    eps = default_eps(dtype)
    bias = randn(x.shape[1:2], dtype=dtype, device=x.device)
    inputs = [x, bias] if bias_grad else [x]
    exact = [t.detach().double().requires_grad_() for t in inputs]
    mine = [t.detach().requires_grad_() for t in inputs]  # keeps each input's strides
    want = bias_act_pixel_norm_reference(exact[0], exact[1] if bias_grad else bias.double(), alpha, gain, eps)
    got = fastgan.ops.bias_act_pixel_norm(mine[0], mine[1] if bias_grad else bias, alpha, gain, eps, impl=impl)
    assert_close(got, want, dtype)
    grad = torch.randn_like(want).to(dtype)  # the gradient both get: representable in dtype
    want_grads = torch.autograd.grad(want, exact, grad.double())
    got_grads = torch.autograd.grad(got, mine, grad)
    parts = gradient_parts(exact[0].detach(), bias.double(), grad.double(), alpha, gain, eps)
    assert_close_to_parts(got_grads[0], want_grads[0], parts, dtype)
    if bias_grad:
        assert_bias_grad_close(got_grads[1], want_grads[1], want_grads[0], 1, dtype, parts)


def gradient_parts(x, bias, grad, alpha, gain, eps):
    """The magnitude the kernels' float32 grad_x = m * (r * g - a * r^3 * sum_c(g * a) / C) works at:
    |m| * (r |g| + |a| r^3 sum_c |g * a| / C), with sqrt(C) more for the channel sums' roundings. It
    cancels to far less (C = 1: y = sign(a), grad_x ~ eps), where the bias sum's error is that of
    these parts, not of grad_x."""
    c = x.shape[1]
    v = x + bias.reshape([-1 if i == 1 else 1 for i in range(x.dim())])
    a = torch.nn.functional.leaky_relu(v, alpha) * gain
    m = torch.where(v > 0, gain, gain * alpha)
    r = (a.square().mean(1, keepdim=True) + eps).rsqrt()
    coef = r ** 3 * (grad * a).abs().sum(1, keepdim=True) / c
    return m.abs() * (r * grad.abs() + a.abs() * coef) * (1 + c ** 0.5 / 8)


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
@pytest.mark.parametrize("shape", [(3, 64, 50, 50), (2, 512, 20, 30), (2, 71, 9, 7), (32, 512, 4, 4), (5, 40, 3, 5)])
def test_parity_cpu_large(shape, layout, dtype):
    """Vector loops and their tails in both layouts; samples of several NCHW tiles, the last one
    partial; NCHW maps of fewer pixels than a vector (transposed into rows); the bias gradient sums
    hundreds of rounded grad_x values (assert_sum_close)."""
    check(randn(shape, layout, dtype), "cpu", dtype)


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


# (x's dtype, the bias's, autocast bfloat16 on): a float32 bias meeting a half x from an autocast
# convolution, under autocast and without it, and the other pairs eager's x + bias promotes.
MIXED_DTYPES = [(torch.bfloat16, torch.float32, True), (torch.bfloat16, torch.float32, False),
                (torch.float16, torch.float32, False), (torch.float32, torch.bfloat16, False),
                (torch.bfloat16, torch.float16, False), (torch.float32, torch.float64, False)]


@pytest.mark.parametrize("x_dtype, bias_dtype, autocast", MIXED_DTYPES, ids=str)
@pytest.mark.parametrize("impl", ["reference", *CPU_BACKENDS])
def test_mixed_dtypes(impl, x_dtype, bias_dtype, autocast):
    """x and a bias of another dtype: out in the dtype eager's pixel_norm(lrelu(x + bias)) gives
    (promoted: float32 for a half x and a float32 bias, under autocast or not) and computed in it, eps
    that dtype's default, against float64 from the same inputs; the gradients in x's and the bias's dtypes."""
    x, bias = randn((2, 6, 4, 3), dtype=x_dtype), randn((6,), dtype=bias_dtype)
    out_dtype = torch.promote_types(x_dtype, bias_dtype)
    eps = default_eps(out_dtype)
    exact = [t.detach().double().requires_grad_() for t in (x, bias)]
    mine = [t.detach().requires_grad_() for t in (x, bias)]
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        a = torch.nn.functional.leaky_relu(x + bias.view(1, -1, 1, 1), 0.2)
        eager = a * torch.rsqrt(a.square().mean(1, keepdim=True) + eps)
        got = fastgan.ops.bias_act_pixel_norm(*mine, impl=impl)
    assert got.dtype == eager.dtype == out_dtype
    want = bias_act_pixel_norm_reference(*exact, 0.2, 1.0, eps)
    assert_close(got, want, out_dtype)  # out_dtype's arithmetic (float32 / float64) and its rounding
    grad = torch.randn_like(want).to(out_dtype)  # representable in out_dtype
    want_grads = torch.autograd.grad(want, exact, grad.double())
    got_grads = torch.autograd.grad(got, mine, grad)
    assert got_grads[0].dtype == x_dtype and got_grads[1].dtype == bias_dtype
    parts = gradient_parts(exact[0].detach(), exact[1].detach(), grad.double(), 0.2, 1.0, eps)
    assert_close_to_parts(got_grads[0], want_grads[0], parts, x_dtype)  # rounded to x's dtype at the end
    # Summed in out_dtype's accumulation type, rounded once to the bias's dtype (per-term rounding at its u).
    assert_bias_grad_close(got_grads[1], want_grads[1], want_grads[0], 1, bias_dtype, parts)


def test_matches_unfused_ops():
    x, b = randn((2, 8, 4, 4)), randn((8,))
    want = fastgan.ops.pixel_norm(fastgan.ops.bias_act(x, b, "lrelu", 0.2, 1.0, impl="cpu"), impl="cpu")
    torch.testing.assert_close(fastgan.ops.bias_act_pixel_norm(x, b, impl="cpu"), want)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x=torch.ones(2, 3, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
    (dict(x=torch.ones(3)), ValueError, "x must have at least 2 dimensions"),
    (dict(bias=torch.ones(4)), ValueError, r"bias must have shape \(3,\)"),
    (dict(bias=torch.ones(3, device="meta")), ValueError, "bias is on meta but x is on cpu"),  # eager's x + bias too
    (dict(bias=torch.ones(3, dtype=torch.int32)), TypeError, "bias must be a floating tensor"),
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
