import math
import os

import pytest
import torch

import fastgan
from fastgan.ops._dispatch import kernels
from fastgan.ops.bias_act import act_params, bias_act_reference, bias_shape, sum_except
from helpers import (CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, UNIT_ROUNDOFF, assert_bias_grad_close, assert_close,
                     gradchecks, randn)

SHAPES = [(1, 3, 5, 7), (2, 7, 4, 6), (3, 1, 8, 8), (2, 19, 3, 5)]
# (act, alpha, gain, clamp, x_mul, b_mul): StyleGAN defaults, ProGAN's act_gain 1, the equalized scales, clamps.
VARIANTS = [
    ("linear", None, None, None, 1.0, 1.0),
    ("relu", None, None, None, 1.0, 1.0),
    ("lrelu", None, None, None, 1.0, 1.0),
    ("lrelu", 0.2, 1.0, None, 0.0589, 1.0),
    ("lrelu", 0.1, math.sqrt(2), 0.8, 0.7, 0.01),
    ("linear", None, 1.0, 0.5, 1.3, 2.0),
    ("relu", None, 2.0, 1.0, 0.5, 1.0),
]


def off_kinks(x, bias, variant, dim=1):
    """x, redrawn in place (fresh normal values) where the exact pre-activation v = x * x_mul + bias * b_mul
    is within 4 roundings of x's dtype of a kink of the activation: 0 (slope != 1) and, with a clamp,
    the v where |y| reaches it. There the kernel's side (from its float32 v, and for the clamp from y
    rounded to x's dtype, compared with the clamp rounded the same way) and the float64 reference's can
    differ, and the gradient element by all of it: a test-design matter, no tolerance covers it."""
    act, alpha, gain, clamp, x_mul, b_mul = variant
    slope, gain, clamp = act_params(act, alpha, gain, clamp)
    kinks = [0.0] if slope != 1 else []
    if clamp >= 0:
        kinks += [clamp / gain] + ([-clamp / (gain * slope)] if slope > 0 else [])
    b = 0.0 if bias is None else (bias.double() * b_mul).reshape(bias_shape(x, dim % x.dim()))
    u, tiny = UNIT_ROUNDOFF[x.dtype], torch.finfo(x.dtype).tiny  # tiny: y's underflow near 0 in float16
    for _ in range(10):
        xv = x.double() * x_mul
        near = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        for k in kinks:
            near |= (xv + b - k).abs() <= 4 * u * (xv.abs() + abs(b) + abs(k)) + tiny
        if not near.any():
            return x
        assert near.float().mean().item() < 0.1, "most of x at a kink: the margin is wrong"
        x[near] = torch.randn(x.shape, device=x.device)[near].to(x.dtype)
    raise AssertionError("could not draw x off the activation's kinks")


def check(x, bias, variant, impl, dtype, dim=1):
    """Output and gradients against bias_act_reference in float64 on the same inputs (x drawn off the
    kinks): the output and grad_x elementwise (helpers.TOLERANCES), the bias gradient as a sum."""
    act, alpha, gain, clamp, x_mul, b_mul = variant
    kwargs = dict(act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim, x_mul=x_mul, b_mul=b_mul)
    x = off_kinks(x, bias, variant, dim)
    inputs = [x] if bias is None else [x, bias]
    exact = [t.detach().double().requires_grad_() for t in inputs]
    mine = [t.detach().requires_grad_() for t in inputs]  # keeps each input's strides
    want = bias_act_reference(*exact, **kwargs)
    got = fastgan.ops.bias_act(*mine, impl=impl, **kwargs)
    assert_close(got, want, dtype)
    grad = torch.randn_like(want).to(dtype)  # the gradient both get: representable in dtype
    want_grads = torch.autograd.grad(want, exact, grad.double())
    got_grads = torch.autograd.grad(got, mine, grad)
    assert_close(got_grads[0], want_grads[0], dtype)
    if bias is not None:
        assert x_mul != 0
        assert_bias_grad_close(got_grads[1], want_grads[1], want_grads[0] * (b_mul / x_mul), dim % x.dim(), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity(impl, shape, layout, dtype):
    x = randn(shape, layout, dtype)
    check(x, randn(shape[1:2], dtype=dtype), VARIANTS[3], impl, dtype)


# (x's dtype, the bias's, autocast bfloat16 on): a float32 bias parameter meeting a half x from an
# autocast convolution (standalone bias_act under autocast, and the same dtypes without it), and the
# other pairs eager's x + bias promotes.
MIXED_DTYPES = [(torch.bfloat16, torch.float32, True), (torch.bfloat16, torch.float32, False),
                (torch.float16, torch.float32, False), (torch.float32, torch.bfloat16, False),
                (torch.bfloat16, torch.float16, False), (torch.float32, torch.float64, False)]


@pytest.mark.parametrize("x_dtype, bias_dtype, autocast", MIXED_DTYPES, ids=str)
@pytest.mark.parametrize("impl", ["reference", *CPU_BACKENDS])
def test_mixed_dtypes(impl, x_dtype, bias_dtype, autocast):
    """x and a bias of another dtype: out in the dtype eager's act(x + bias) * gain gives (promoted:
    float32 for a half x and a float32 bias, under autocast or not) and computed in it, against float64
    from the same inputs; the gradients in x's and the bias's dtypes."""
    variant = ("lrelu", 0.2, math.sqrt(2), None, 1.0, 1.0)
    bias = randn((5,), dtype=bias_dtype)
    x = off_kinks(randn((2, 5, 4, 3), dtype=x_dtype), bias, variant)
    out_dtype = torch.promote_types(x_dtype, bias_dtype)
    exact = [t.detach().double().requires_grad_() for t in (x, bias)]
    mine = [t.detach().requires_grad_() for t in (x, bias)]
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        eager = torch.nn.functional.leaky_relu(x + bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
        got = fastgan.ops.bias_act(*mine, "lrelu", 0.2, math.sqrt(2), impl=impl)
    assert got.dtype == eager.dtype == out_dtype
    want = bias_act_reference(*exact, "lrelu", 0.2, math.sqrt(2))
    assert_close(got, want, out_dtype)  # out_dtype's arithmetic (float32 / float64) and its rounding
    grad = torch.randn_like(want).to(out_dtype)  # representable in out_dtype
    want_grads = torch.autograd.grad(want, exact, grad.double())
    got_grads = torch.autograd.grad(got, mine, grad)
    assert got_grads[0].dtype == x_dtype and got_grads[1].dtype == bias_dtype
    assert_close(got_grads[0], want_grads[0], x_dtype)  # out_dtype's arithmetic, rounded to x's dtype
    # Summed in out_dtype's accumulation type, rounded once to the bias's dtype: the helper's model,
    # its per-term rounding taken at the bias's u (>= out_dtype's).
    assert_bias_grad_close(got_grads[1], want_grads[1], want_grads[0], 1, bias_dtype)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_variants(impl, layout, variant):
    x = 2 * randn((2, 5, 3, 7), layout)
    check(x, randn((5,)), variant, impl, torch.float32)


@pytest.mark.parametrize("shape, dim", [((5, 17), 1), ((5, 17), 0), ((3, 4, 10), 2), ((3, 4, 10), -2), ((33,), 0),
                                        ((2, 3, 2, 3, 2), 3), ((2, 3, 4, 5), 0)])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_dims(impl, shape, dim):
    check(randn(shape), randn((shape[dim],)), VARIANTS[4], impl, torch.float32, dim)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_no_bias(impl, layout):
    check(randn((2, 5, 3, 7), layout), None, VARIANTS[4], impl, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity_low_precision_cpu(layout, dtype):
    check(randn((2, 7, 5, 3), layout, dtype), randn((7,), dtype=dtype), VARIANTS[4], "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 64, 50, 50), (2, 71, 9, 7), (4, 512, 4, 4), (64, 40, 4, 4), (3, 5000, 2, 2)])
def test_parity_cpu_large(shape, layout, dtype):
    """Vector loops and their tails in both layouts, several parallel tasks, NCHW maps of a few pixels as
    whole samples (a sample too long for that: 5000 x 2 x 2); with the clamp (x drawn off its kink) and
    the bias, whose gradient sums thousands of rounded grad_x values."""
    check(randn(shape, layout, dtype), randn(shape[1:2], dtype=dtype), VARIANTS[4], "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_clamp_in_low_precision(dtype):
    """The backward reads the clamp from y: in float16/bfloat16 an output that rounds to the clamp
    counts as clamped (as in StyleGAN2). Elsewhere the gradient is exact."""
    x = randn((4, 16, 32, 32), dtype=dtype)
    y = fastgan.ops.bias_act(x.requires_grad_(), None, "linear", clamp=0.8, impl="cpu")
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    limit = torch.tensor(0.8, dtype=dtype)
    want = torch.where(y.abs() < limit, g, 0)
    assert torch.equal(gx, want)
    edge = (x.float().abs() < 0.8) & (y.abs() == limit)
    assert torch.equal(gx[~edge], (g * (x.float().abs() <= 0.8))[~edge])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, layout, dtype):
    for shape in SHAPES + [(32, 512, 16, 16)]:
        for variant in VARIANTS:
            check(randn(shape, layout, dtype, "cuda"), randn(shape[1:2], dtype=dtype, device="cuda"), variant, impl,
                  dtype)


def gradient_errors(op, x, bias, impl):
    """Relative L2 errors of op's output and its gradients (x, bias) against float64 on the same inputs."""
    exact = [t.double().requires_grad_() for t in (x, bias)]
    mine = [t.clone().requires_grad_() for t in (x, bias)]
    want, got = op(*exact, "reference"), op(*mine, impl)
    grad = torch.randn_like(got)
    wants = (want, *torch.autograd.grad(want, exact, grad.double()))
    gots = (got, *torch.autograd.grad(got, mine, grad))
    return [((g.double() - w).norm() / w.norm()).item() for g, w in zip(gots, wants)]


LOW_PRECISION_OPS = {
    "bias_act_lrelu": lambda x, b, impl: fastgan.ops.bias_act(x, b, "lrelu", impl=impl),  # StyleGAN2's gain sqrt 2
    "bias_act_equalized": lambda x, b, impl: fastgan.ops.bias_act(x, b, "lrelu", 0.2, 1.0, x_mul=0.0589, b_mul=0.5,
                                                                   impl=impl),
    "bias_act_pixel_norm": lambda x, b, impl: fastgan.ops.bias_act_pixel_norm(x, b, impl=impl),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", LOW_PRECISION_OPS)
@pytest.mark.parametrize("impl", ["reference", "cpu", "triton", "cuda"])
def test_low_precision_gradient_error(impl, name, dtype):
    """float16 / bfloat16 output and gradients within a single rounding of float64 from the same inputs
    (a gradient re-derived from rounded values, or rounded twice, was 3% in bfloat16). One rounding to
    nearest has relative L2 error ~0.45u (bfloat16: 0.17%); the Triton interpreter truncates instead
    (< 2u an element, ~0.9u): bound 2u (bfloat16 0.78%, float16 0.098%). The bias gradient sums rounded
    grad_x values, each error random, then rounds once: 3u. Without x_mul the side of the kink is exact
    (x + b is exact in float32); with it x is drawn off the kink (off_kinks)."""
    if impl == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    device = "cpu" if impl == "cpu" or not torch.cuda.is_available() else "cuda"
    x, b = randn((4, 32, 8, 8), dtype=dtype, device=device), randn((32,), dtype=dtype, device=device)
    if name == "bias_act_equalized":
        x = off_kinks(x, b, ("lrelu", 0.2, 1.0, None, 0.0589, 0.5))
    u = UNIT_ROUNDOFF[dtype]
    err_y, err_x, err_b = gradient_errors(LOW_PRECISION_OPS[name], x, b, impl)
    assert err_y < 2 * u and err_x < 2 * u and err_b < 3 * u, (err_y, err_x, err_b)


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[3], VARIANTS[4], VARIANTS[6]], ids=str)
@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_gradcheck(impl, variant):
    act, alpha, gain, clamp, x_mul, b_mul = variant
    x = randn((2, 3, 3, 2), dtype=torch.float64).requires_grad_()
    b = randn((3,), dtype=torch.float64).requires_grad_()
    fn = lambda x, b: fastgan.ops.bias_act(x, b, act, alpha, gain, clamp, 1, x_mul, b_mul, impl=impl)  # noqa: E731
    gradchecks(fn, (x, b), impl)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_third_derivative(impl):
    """The backward's backward is bias_act_backward again: differentiable once more (zero in y)."""
    x = randn((2, 3, 2, 2), dtype=torch.float64).requires_grad_()
    fn = lambda x: fastgan.ops.bias_act(x, None, "lrelu", impl=impl)  # noqa: E731
    assert torch.autograd.gradgradcheck(lambda x: torch.autograd.grad(fn(x).sum(), x, create_graph=True)[0], (x,))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl, layout):
    x = randn((2, 5, 3, 4), layout).requires_grad_()
    b = randn((5,)).requires_grad_()
    g = randn((2, 5, 3, 4), layout).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.bias_act.default, (x, b, 1, 0.2, 1.4, 0.7, 1.1, 0.9, impl))
    torch.library.opcheck(torch.ops.fastgan.bias_act.default, (x, None, 1, 0.0, 1.0, 1.0, 1.0, -1.0, impl))
    torch.library.opcheck(torch.ops.fastgan.bias_act_backward.default, (g, x, 0.2, 1.4, 0.7, 0.9, impl))


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    fn = torch.compile(lambda x, b: fastgan.ops.bias_act(x, b, "lrelu", 0.2, 1.0, x_mul=0.3, impl=impl),
                       fullgraph=True)
    x = randn((2, 4, 3, 5), "channels_last").requires_grad_()
    b = randn((4,)).requires_grad_()
    out, want = fn(x, b), bias_act_reference(x, b, "lrelu", 0.2, 1.0, x_mul=0.3)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(want)
    for a, w in zip(torch.autograd.grad(out, (x, b), g), torch.autograd.grad(want, (x, b), g)):
        torch.testing.assert_close(a, w)


def test_default_gain_is_stylegan2():
    x = randn((2, 3))
    torch.testing.assert_close(fastgan.ops.bias_act(x, act="lrelu", impl="cpu"),
                               torch.nn.functional.leaky_relu(x, 0.2) * math.sqrt(2))
    torch.testing.assert_close(fastgan.ops.bias_act(x, act="linear", impl="cpu"), x)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x=torch.ones(2, 3, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
    (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    (dict(bias=torch.ones(4)), ValueError, r"bias must have shape \(3,\)"),
    (dict(bias=torch.ones(3, device="meta")), ValueError, "bias is on meta but x is on cpu"),  # eager's x + bias too
    (dict(bias=torch.ones(3, dtype=torch.int32)), TypeError, "bias must be a floating tensor"),
    (dict(bias=torch.ones(1, 3)), ValueError, "bias must be 1-D"),
    (dict(act="tanh"), ValueError, "act must be one of"),
    (dict(act="lrelu", alpha=-0.1), ValueError, "alpha"),
    (dict(gain=0.0), ValueError, "gain must be positive"),
    (dict(clamp=-2.0), ValueError, "clamp must be None or >= 0"),
    (dict(dim=2), ValueError, "dim 2 is out of range"),
])
def test_bad_input(kwargs, error, words):
    args = dict(x=torch.ones(2, 3), bias=torch.ones(3))
    args.update(kwargs)
    with pytest.raises(error, match=words):
        fastgan.ops.bias_act(**args, impl="cpu")


@pytest.mark.parametrize("scale", [1.0, 0.37, 1 / 0.0589, 0.0, -0.0, -2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_sum_except_scales_exactly(dtype, scale):
    """The bias gradient's sum, scaled in float32: the same bits as the formula, signed zeros
    included; a 1-D t gives a scaled copy, never t itself."""
    t = randn((2, 3, 4, 5), dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for _ in range(2):
        got = sum_except(t, 1, scale)
        want = (t.sum((0, 2, 3), dtype=acc) * scale).to(dtype)
        assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())
    v = randn((3,), dtype=dtype)
    got = sum_except(v, 0, scale)
    assert got.data_ptr() != v.data_ptr()
    assert torch.equal(got, (v.to(acc) * scale).to(dtype))


# (shape, dim, layout) of the fused backward's kernel: NCHW planes (a bias value a row, rows of a
# channel apart; short ones as whole samples on cpu, unless a sample is too long: 5000 x 2 x 2),
# channels-last and [N, C] rows (the bias along the row), odd sizes for the vector tails, and more
# rows than one run can take (the runs' partial sums merged: 2 threads here).
BACKWARD_BIAS_CASES = [((2, 7, 5, 3), 1, "contiguous"), ((2, 7, 5, 3), 1, "channels_last"), ((9, 37), 1, "contiguous"),
                       ((9, 37), 0, "contiguous"), ((41,), 0, "contiguous"), ((2, 3, 4, 5), 2, "contiguous"),
                       ((64, 40, 8, 8), 1, "contiguous"), ((64, 40, 8, 8), 1, "channels_last"),
                       ((64, 40, 4, 4), 1, "contiguous"), ((3, 5000, 2, 2), 1, "contiguous")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", BACKWARD_BIAS_CASES, ids=str)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_backward_bias_kernel(impl, case, dtype):
    """bias_act_backward_bias: grad_x bit for bit bias_act_backward's, and the bias's gradient the scaled
    sum of that grad_x as stored, against the float64 sum; every variant (the linear one reads no y)."""
    shape, dim, layout = case
    if impl == "triton" and (dtype in (torch.bfloat16, torch.float16) or math.prod(shape) > 10_000):
        pytest.skip("the interpreter: float32 / float64 and small shapes")
    k = kernels(impl)
    for variant in VARIANTS:
        slope, gain, clamp = act_params(*variant[:4])
        x_mul, b_scale = variant[4], -0.37
        y, grad = randn(shape, layout, dtype), randn(shape, layout, dtype)
        got_x, got_b = k.bias_act_backward_bias(grad, y, dim, slope, gain, x_mul, b_scale, clamp)
        want_x = k.bias_act_backward(grad, y, slope, gain, x_mul, clamp)
        assert torch.equal(got_x, want_x) and got_x.stride() == want_x.stride()
        assert got_b.dtype == dtype and tuple(got_b.shape) == (shape[dim],)
        terms = want_x.double() * b_scale
        assert_bias_grad_close(got_b, sum_except(terms, dim), terms, dim, dtype)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_backward_bias_kernel_empty(impl):
    """No elements: grad_x empty, the bias's gradient zeros (an empty sum), not garbage."""
    y = torch.randn(0, 5, 3, 3)
    got_x, got_b = kernels(impl).bias_act_backward_bias(y, y, 1, 0.2, 1.0, 1.0, 1.0, -1.0)
    assert got_x.shape == y.shape and torch.equal(got_b, torch.zeros(5))


def _dispatched(fn):
    """The names of the ops that fn dispatches (the profiler's CPU events)."""
    with torch.autograd.profiler.profile() as prof:
        fn()
    return [e.name for e in prof.function_events]


def test_backward_sums_the_bias_in_the_kernel():
    """A plain cpu backward gets grad_x and the bias's gradient from one kernel op (one pass over grad and y,
    no separate sum); create_graph keeps the differentiable pair (bias_act_backward, then the sum). (The
    triton and cuda kernel ops are still that pair inside.)"""
    impl = "cpu"
    x = randn((2, 5, 3, 4)).requires_grad_()
    b = randn((5,)).requires_grad_()
    y = fastgan.ops.bias_act(x, b, "lrelu", x_mul=0.7, b_mul=0.5, impl=impl)
    g = torch.randn_like(y)
    names = _dispatched(lambda: torch.autograd.grad(y, (x, b), g, retain_graph=True))
    assert any(n.endswith("bias_act_backward_bias") for n in names), names
    assert "aten::sum" not in names
    names = _dispatched(lambda: torch.autograd.grad(y, (x, b), g, create_graph=True))
    assert not any(n.endswith("bias_act_backward_bias") for n in names) and "aten::sum" in names


BIAS_ACT_KERNELS = ["bias_act", "bias_act_backward", "bias_act_pixel_norm", "bias_act_pixel_norm_backward"]


@pytest.mark.parametrize("namespace, key, module", [("fastgan_cpu", "CPU", "_C"), ("fastgan_cuda", "CUDA", "_C_cuda")])
def test_extensions_register_the_kernels(namespace, key, module):
    """Both extensions define every kernel of SPEC 3 (the CUDA one where it is built, as test_extensions.py)."""
    from fastgan import _extensions

    if _extensions.load(module) is None:
        if module == "_C" or os.environ.get("FASTGAN_REQUIRE_CUDA_EXT") == "1":
            pytest.fail(_extensions.load_error(module))
        pytest.skip(f"{module} not built: {_extensions.load_error(module)}")
    for op in [*BIAS_ACT_KERNELS, "bias_act_backward_bias"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{op}", key), op


def _custom_op_callers():
    """name: (the fused_op caller, fresh float64 inputs, the arguments after them), as test_autograd_paths.py."""
    import importlib

    ba, bapn = (importlib.import_module(f"fastgan.ops.{m}") for m in ("bias_act", "bias_act_pixel_norm"))
    x = lambda: randn((2, 3, 3, 2), dtype=torch.float64)  # noqa: E731
    b = lambda: randn((3,), dtype=torch.float64)  # noqa: E731
    return {
        "bias_act": (ba._bias_act, lambda: [x(), b()], [1, 0.2, 1.4, 0.7, 1.1, 0.9]),
        "bias_act_backward": (ba._bias_act_backward, lambda: [x(), x()], [0.2, 1.4, 0.7, -1.0]),
        "bias_act_pixel_norm": (bapn._bias_act_pixel_norm, lambda: [x(), b()], [0.2, 1.3, 1e-8]),
        "bias_act_pixel_norm_backward": (bapn._bias_act_pixel_norm_backward, lambda: [x(), x(), b()],
                                         [0.2, 1.3, 1e-8]),
    }


@pytest.mark.parametrize("impl", CPU_BACKENDS)
@pytest.mark.parametrize("name", BIAS_ACT_KERNELS)
def test_custom_op_gradcheck(name, impl):
    """The custom ops' own autograd (what torch.compile runs) to the second order."""
    caller, make, args = _custom_op_callers()[name]
    inputs = tuple(t.requires_grad_() for t in make())
    gradchecks(lambda *ts: caller.op(*ts, *args, impl), inputs, impl)


@pytest.mark.parametrize("name", BIAS_ACT_KERNELS)
def test_eager_and_traced_paths_agree(name):
    caller, make, args = _custom_op_callers()[name]
    inputs = [t.requires_grad_() for t in make()]
    eager, traced = caller(*inputs, *args, "cpu"), caller.op(*inputs, *args, "cpu")
    assert type(eager.grad_fn).__name__ == f"{name}Backward"
    assert "fastgan" in type(traced.grad_fn).__name__.lower()
    grad = torch.randn_like(eager)
    got = torch.autograd.grad(eager, inputs, grad, allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad(traced, inputs, grad, allow_unused=True, materialize_grads=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cpu_autograd_is_cpp():
    """Plain cpu calls run the kernel op with its C++ autograd (csrc/autograd.h): a C++ graph node whose
    gradients, and their gradients, are exactly the custom op's (the Python formulas)."""
    x = randn((2, 5, 3, 4), dtype=torch.float64).requires_grad_()
    b = randn((5,), dtype=torch.float64).requires_grad_()
    y = fastgan.ops.bias_act(x, b, "lrelu", clamp=0.9, x_mul=0.7, b_mul=0.5, impl="cpu")
    assert type(y.grad_fn).__name__ == "CppFunction"
    traced = torch.ops.fastgan.bias_act(x, b, 1, 0.2, math.sqrt(2), 0.7, 0.5, 0.9, "cpu")
    torch.testing.assert_close(y, traced, rtol=0, atol=0)
    g = torch.randn_like(y).requires_grad_()
    got = torch.autograd.grad(y, (x, b), g, create_graph=True)
    want = torch.autograd.grad(traced, (x, b), g, create_graph=True)
    v = torch.randn_like(x)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(got[0], g, v)[0], torch.autograd.grad(want[0], g, v)[0],
                               rtol=0, atol=0)


def test_cpu_graph_node_guards_its_saved_output():
    """The C++ node saves y as PyTorch's own nodes save outputs: a second backward without retain_graph
    and a backward after y was modified in place both raise, never a silently wrong gradient."""
    x = randn((2, 5, 3, 4)).requires_grad_()
    b = randn((5,)).requires_grad_()
    y = fastgan.ops.bias_act(x, b, "lrelu", impl="cpu")
    assert y.grad_fn.name() == "BiasActBackward"
    y.sum().backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.sum().backward()
    y = fastgan.ops.bias_act(x, b, "lrelu", impl="cpu")
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y.sum(), x)


def test_cpu_graph_node_edges():
    """Gradients only where asked: x alone, the bias alone, a bias that needs none, no bias at all."""
    x = randn((2, 5, 3, 4)).requires_grad_()
    b = randn((5,)).requires_grad_()
    g = torch.randn(2, 5, 3, 4)
    full = torch.autograd.grad(fastgan.ops.bias_act(x, b, "lrelu", impl="cpu"), (x, b), g)
    for inputs, want in (((x,), full[:1]), ((b,), full[1:])):
        got = torch.autograd.grad(fastgan.ops.bias_act(x, b, "lrelu", impl="cpu"), inputs, g)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    (got,) = torch.autograd.grad(fastgan.ops.bias_act(x, b.detach(), "lrelu", impl="cpu"), x, g)
    torch.testing.assert_close(got, full[0], rtol=0, atol=0)
    (got,) = torch.autograd.grad(fastgan.ops.bias_act(x, None, "lrelu", impl="cpu"), x, g)
    assert got.shape == x.shape
    assert fastgan.ops.bias_act(x.detach(), b.detach(), impl="cpu").grad_fn is None
