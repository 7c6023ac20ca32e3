import functools
import importlib

import pytest
import torch

import fastgan
from fastgan.ops.minibatch_stddev import _minibatch_stddev, _minibatch_stddev_backward, minibatch_stddev_reference
from helpers import (CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, TOLERANCES, assert_close,
                     check_forward_backward, gradchecks, randn)

# (shape, group_size, num_channels): G = 4, G < group_size (= N), G = 1, several channel groups.
CASES = [((8, 6, 3, 5), 4, 1), ((8, 6, 3, 5), 2, 3), ((6, 4, 2, 2), 3, 2), ((3, 5, 1, 3), 4, 1),
         ((5, 2, 3, 3), 1, 1), ((4, 17, 2, 1), 4, 17)]
F64 = torch.float64


def check(x, group_size, num_channels, impl, dtype):
    op = functools.partial(fastgan.ops.minibatch_stddev, group_size=group_size, num_channels=num_channels)
    ref = functools.partial(minibatch_stddev_reference, group_size=group_size, num_channels=num_channels)
    return check_forward_backward(op, ref, [x], impl, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity(impl, case, layout, dtype):
    shape, group_size, num_channels = case
    check(randn(shape, layout, dtype), group_size, num_channels, impl, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [((32, 512, 4, 4), 4, 1), ((8, 64, 16, 16), 4, 2), ((4, 7, 33, 9), 2, 7)])
def test_parity_cpu_large(case, layout, dtype):
    """Vector loops and tails, several spans of values per group (csrc/cpu/minibatch_stddev.cpp)."""
    shape, group_size, num_channels = case
    check(randn(shape, layout, dtype), group_size, num_channels, "cpu", dtype)


@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_groups_are_strided(impl):
    """Sample n belongs to group n mod (N / G): identical samples 0, 2, 4, 6 give s = sqrt(1e-8)."""
    x = randn((8, 3, 2, 2))
    x[0::2] = x[0]
    out = fastgan.ops.minibatch_stddev(x, 4, impl=impl)
    torch.testing.assert_close(out[0::2, 3], torch.full((4, 2, 2), 1e-4))
    assert (out[1::2, 3] > 0.1).all()
    torch.testing.assert_close(out[:, :3], x, rtol=0, atol=0)


def test_statistics_are_centered():
    """A large common offset does not swamp the variance (two-pass, not E[x^2] - E[x]^2)."""
    x = randn((4, 8, 3, 3))
    for impl in CPU_BACKENDS:
        got = fastgan.ops.minibatch_stddev(x + 1e4, impl=impl)[:, 8]
        torch.testing.assert_close(got, minibatch_stddev_reference(x.double())[:, 8].float(), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, layout, dtype):
    for shape, group_size, num_channels in CASES + [((32, 512, 4, 4), 4, 1), ((32, 128, 32, 32), 4, 1)]:
        check(randn(shape, layout, dtype, "cuda"), group_size, num_channels, impl, dtype)


@pytest.mark.parametrize("case", [((4, 4, 2, 3), 2, 2), ((3, 2, 2, 2), 4, 1)])
@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_gradcheck(impl, case):
    shape, group_size, num_channels = case
    x = randn(shape, dtype=F64).requires_grad_()
    gradchecks(lambda x: fastgan.ops.minibatch_stddev(x, group_size, num_channels, impl=impl), (x,), impl)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_custom_op_gradcheck(impl):
    """The traced path (the custom ops themselves), to the second order."""
    x = randn((4, 4, 2, 3), dtype=F64).requires_grad_()
    gradchecks(lambda x: _minibatch_stddev.op(x, 2, 2, impl), (x,), impl)
    g = randn((4, 6, 2, 3), dtype=F64).requires_grad_()
    gradchecks(lambda g, x: _minibatch_stddev_backward.op(g, x, 2, 2, impl), (g, x), impl)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl, layout):
    x = randn((4, 6, 3, 2), layout).requires_grad_()
    g = randn((4, 8, 3, 2), layout).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.minibatch_stddev.default, (x, 2, 2, impl))
    torch.library.opcheck(torch.ops.fastgan.minibatch_stddev_backward.default, (g, x, 2, 2, impl))


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    layer = fastgan.nn.MinibatchStdDev(4, 1, impl=impl)
    model = torch.compile(lambda x: layer(x).square().sum(), fullgraph=True)
    x = randn((8, 5, 3, 3)).requires_grad_()
    got = model(x)
    want = minibatch_stddev_reference(x).square().sum()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_double_backward_matches_eager(impl):
    """A WGAN-GP style penalty: the gradient of ||d out / d x|| with respect to x."""
    x = randn((8, 6, 3, 3))
    w = randn((8, 7, 3, 3))

    def penalty_grad(fn):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad((fn(xi) * w).sum(), xi, create_graph=True)
        return torch.autograd.grad(g.square().sum(), xi)[0]

    want = penalty_grad(lambda t: minibatch_stddev_reference(t, 4, 1))
    got = penalty_grad(lambda t: fastgan.ops.minibatch_stddev(t, 4, 1, impl=impl))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def double_backward_reference(gg, grad, x, group_size, num_channels):
    """(d_grad, d_x): autograd's second derivatives of the reference op, in float64 from the same inputs."""
    x64, g64 = x.double().requires_grad_(), grad.double().requires_grad_()
    (gx,) = torch.autograd.grad(minibatch_stddev_reference(x64, group_size, num_channels), x64, g64, create_graph=True)
    return torch.autograd.grad(gx, (g64, x64), gg.double())


def spread_groups(x, group_size):
    """x with the G samples of each group spread 1 apart (sample n is the (n // M)-th of its group), so
    that s >= ~0.3: d_x's terms scale with 1 / s^2 and, where two samples nearly coincide, its error in
    the kernel's float32 with them (ill-conditioned inputs, by design not drawn here)."""
    offsets = torch.arange(x.shape[0], device=x.device) // (x.shape[0] // group_size) - (group_size - 1) / 2
    fmt = torch.channels_last if not x.is_contiguous() else torch.contiguous_format
    return (x * 0.25 + offsets.to(x.dtype).view(-1, 1, 1, 1)).contiguous(memory_format=fmt)


def check_double_backward(kern, x, group_size, num_channels, dtype):
    fmt = torch.channels_last if not x.is_contiguous() else torch.contiguous_format
    x = spread_groups(x, group_size)
    n, c, h, w = x.shape
    grad = randn((n, c + num_channels, h, w), dtype=dtype, device=x.device).contiguous(memory_format=fmt)
    gg = randn(x.shape, dtype=dtype, device=x.device).contiguous(memory_format=fmt)
    want_grad, want_x = double_backward_reference(gg, grad, x, group_size, num_channels)
    tol = TOLERANCES[dtype]
    for need in ((True, True), (True, False), (False, True)):
        d_grad, d_x = kern.minibatch_stddev_double_backward(gg, grad, x, group_size, num_channels, *need)
        for got, want, needed, name in ((d_grad, want_grad, need[0], "d_grad"), (d_x, want_x, need[1], "d_x")):
            if not needed:
                assert got.numel() == 0, name
                continue
            assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous(memory_format=fmt), name
            assert not got.isnan().any(), f"{name}: an element was never written"
            atol = tol["atol"] * max(1.0, want.abs().max().item())  # d_x's terms cancel at their scale
            torch.testing.assert_close(got.double(), want, rtol=tol["rtol"], atol=atol, msg=lambda m: f"{name}: {m}")
        if need[0]:
            assert torch.equal(d_grad[:, :c], gg), "d_grad's first C channels are gg"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])  # a kernel op takes dense tensors
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_double_backward_kernel(impl, case, layout, dtype):
    """minibatch_stddev_double_backward against autograd's second derivatives of the reference."""
    shape, group_size, num_channels = case
    check_double_backward(fastgan.ops._dispatch.kernels(impl), randn(shape, layout, dtype), min(group_size, shape[0]),
                          num_channels, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", [((32, 512, 4, 4), 4, 1), ((8, 64, 16, 16), 4, 2), ((4, 7, 33, 9), 2, 7)])
def test_double_backward_kernel_cpu_large(case, layout, dtype):
    """Vector loops and tails, several spans per group (csrc/cpu/minibatch_stddev.cpp)."""
    shape, group_size, num_channels = case
    check_double_backward(fastgan.ops._dispatch.kernels("cpu"), randn(shape, layout, dtype), group_size, num_channels,
                          dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_double_backward_kernel_gpu(impl, layout, dtype):
    for shape, group_size, num_channels in CASES + [((32, 512, 4, 4), 4, 1), ((32, 128, 32, 32), 4, 1)]:
        check_double_backward(fastgan.ops._dispatch.kernels(impl), randn(shape, layout, dtype, "cuda"),
                              min(group_size, shape[0]), num_channels, dtype)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_penalty_runs_the_double_backward_kernel(impl, monkeypatch):
    """A gradient penalty's second backward goes through the kernel op, not the eager formula."""
    calls = []
    kern = fastgan.ops._dispatch.kernels(impl)
    original = kern.minibatch_stddev_double_backward
    monkeypatch.setattr(kern, "minibatch_stddev_double_backward", lambda *a: calls.append(a) or original(*a))
    x = randn((8, 6, 3, 3)).requires_grad_()
    (g,) = torch.autograd.grad((fastgan.ops.minibatch_stddev(x, 4, 1, impl=impl) * randn((8, 7, 3, 3))).sum(), x,
                               create_graph=True)
    g.square().sum().backward()
    assert len(calls) == 1


def test_double_backward_kernel_bad_input():
    kern = fastgan.ops._dispatch.kernels("cpu")
    x, grad = randn((4, 6, 2, 2)), randn((4, 7, 2, 2))
    with pytest.raises(RuntimeError, match="gg"):
        kern.minibatch_stddev_double_backward(x[:2], grad, x, 2, 1, True, True)
    with pytest.raises(RuntimeError, match="grad"):
        kern.minibatch_stddev_double_backward(x, grad[:, :6], x, 2, 1, True, True)
    with pytest.raises(RuntimeError, match="gg"):
        kern.minibatch_stddev_double_backward(x.double(), grad, x, 2, 1, True, True)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_kernel_ops_refuse_no_channels(impl):
    """Called directly (as traced code does), the kernel ops refuse x without channels too: they once
    returned the F new channels unwritten."""
    kern = fastgan.ops._dispatch.kernels(impl)
    x, grad = torch.ones(4, 0, 2, 2), torch.ones(4, 1, 2, 2)
    error = ValueError if impl == "triton" else RuntimeError
    for call in (lambda: kern.minibatch_stddev(x, 2, 1), lambda: kern.minibatch_stddev_backward(grad, x, 2, 1),
                 lambda: kern.minibatch_stddev_double_backward(x, grad, x, 2, 1, True, True)):
        with pytest.raises(error, match="channels"):
            call()


def test_module():
    x = randn((8, 6, 2, 2))
    m = fastgan.nn.MinibatchStdDev(group_size=2, num_channels=3, impl="cpu")
    assert_close(m(x), minibatch_stddev_reference(x, 2, 3))
    assert "group_size=2, num_channels=3" in repr(m)


@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_batch_not_divisible_by_group_size(impl):
    with pytest.raises(ValueError, match=r"batch \(6\) must be divisible by group_size \(4"):
        fastgan.ops.minibatch_stddev(randn((6, 3, 2, 2)), group_size=4, impl=impl)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x=torch.ones(4, 3, 2, 2, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
    (dict(x=torch.ones(4, 3, 2)), ValueError, "x must be 4-D"),
    (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.ones(4, 3, 2, 2), num_channels=2), ValueError, r"channels \(3\) must be divisible by num_channels"),
    (dict(x=torch.ones(4, 3, 2, 2), group_size=0), ValueError, "group_size must be a positive int"),
    (dict(x=torch.ones(4, 3, 2, 2), num_channels=1.5), ValueError, "num_channels must be a positive int"),
    (dict(x=torch.ones(4, 0, 2, 2)), ValueError, "x must have channels"),  # its F new channels: nothing to fill them
])
def test_bad_input(kwargs, error, words):
    with pytest.raises(error, match=words):
        fastgan.ops.minibatch_stddev(**kwargs, impl="cpu")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_partials_do_not_depend_on_block(layout):
    """Triton's autotuner runs every config of `_stats` on the same buffers before the chosen one, so each
    config alone must write every partial sum (one per CHUNK values), equal to the float64 sum of s over
    its chunk: a slot left unwritten keeps another config's value (here: NaN poison)."""
    mod = importlib.import_module("fastgan.triton_kernels.minibatch_stddev")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = randn((8, 37, 5, 7), layout, F64, device)  # K = 1295: a partial last chunk and last block
    geo, fmt = mod._geometry(x, 4, 1)
    m, k, chunk = geo["M"], geo["K"], mod._CHUNK
    chunks = -(-k // chunk)
    s = (x.reshape(4, m, *x.shape[1:]).var(0, unbiased=False) + 1e-8).sqrt()
    s = (s if fmt == "nchw" else s.permute(0, 2, 3, 1)).reshape(m, k)  # in the kernel's order of values
    want = torch.nn.functional.pad(s, (0, chunks * chunk - k)).reshape(m, chunks, chunk).sum(-1).flatten()
    for config in mod.CONFIGS:
        block = config.kwargs["BLOCK"]
        out = torch.empty((8, 38, 5, 7), dtype=F64, device=device)
        partial = torch.full((m * chunks,), float("nan"), dtype=F64, device=device)
        mod._stats.fn[mod._program_grid(geo)({"BLOCK": block})](
            x, out, partial, **geo, CHUNKS=chunks, CHANNELS_LAST=fmt == "channels_last", BLOCK=block, CHUNK=chunk)
        assert_close(partial, want)
