"""fastgan.ops.conv2d_bn_leaky_relu / fastgan.nn.Conv2dBNLeakyReLU (the DCGAN discriminator block)
against nn.Sequential(Conv2d, BatchNorm2d, LeakyReLU): outputs, running statistics and gradients."""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fastgan.nn import Conv2dBNLeakyReLU
from fastgan.ops import conv2d_bn_leaky_relu, conv2d_bn_leaky_relu_reference
from fastgan.ops._dispatch import kernels
from helpers import (CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, TOLERANCES, check_block_against_float64,
                     check_one_affine_parameter, randn)

# (batch, C_in, H = W, C_out, kernel, stride, padding)
DCGAN = (2, 8, 8, 6, 4, 2, 1)
SHAPES = [DCGAN, (3, 5, 7, 6, 3, 1, 1), (2, 4, 9, 5, 5, 2, 2), (4, 3, 4, 7, 4, 1, 0)]
VARIANTS = {
    "default": {}, "no_bias": dict(bias=False), "affine_false": dict(affine=False),
    "untracked": dict(track_running_stats=False), "cumulative": dict(momentum=None),
}
ALL = ["reference"] + CPU_BACKENDS


def make_pair(shape, impl, dtype=torch.float32, slope=0.2, device="cpu", **options):
    """The Sequential and the fused block with the same random state (nothing 0 or 1)."""
    _, cin, _, cout, k, s, p = shape
    bias = options.pop("bias", True)
    seq = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, s, p, bias=bias), torch.nn.BatchNorm2d(cout, **options),
                              torch.nn.LeakyReLU(slope)).to(device, dtype)
    bn = seq[1]
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.5)
        if bn.track_running_stats:
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(3)
    fused = Conv2dBNLeakyReLU(cin, cout, k, s, p, bias=bias, negative_slope=slope, impl=impl,
                              **options).to(device, dtype)
    fused.load_state_dict(seq.state_dict())
    return seq, fused


def run_both(seq, fused, x, training, dtype):
    """Forward and backward of both on x; compares outputs, x's gradient, buffers and parameter
    gradients (the conv bias's in training: rounding noise of a sum that is 0, by an absolute bound)."""
    tol = TOLERANCES[dtype]
    seq.train(training)
    fused.train(training)
    xs, xf = x.detach().clone().requires_grad_(), x.detach().requires_grad_()
    want, got = seq(xs), fused(xf)
    assert got.shape == want.shape and not got.isnan().any()
    torch.testing.assert_close(got, want, **tol)
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    torch.testing.assert_close(xf.grad, xs.grad, **tol)
    for (k, a), b in zip(fused.state_dict().items(), seq.state_dict().values()):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{k}: {m}")
    n = want.numel() // want.shape[1]
    batch_stats = training or not seq[1].track_running_stats
    for (k, a), b in zip(fused.named_parameters(), seq.parameters()):
        if k == "0.bias" and batch_stats:
            g_max = g.abs().max().item() if n else 0.0  # an empty batch has no elements to take the max of
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5 * n * g_max)
        else:
            atol = tol["atol"] * max(1.0, b.grad.abs().max().item())
            torch.testing.assert_close(a.grad, b.grad, rtol=tol["rtol"], atol=atol, msg=lambda m: f"grad {k}: {m}")
    return got


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ALL)
def test_parity(impl, shape, variant, training):
    seq, fused = make_pair(shape, impl, **VARIANTS[variant])
    run_both(seq, fused, randn(shape[:3] + shape[2:3]), training, torch.float32)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", ALL)
def test_empty_batch(impl, variant, training):
    """N = 0, as nn.Sequential takes it: an empty output, zero gradients, the running statistics
    unchanged and the batch counted in num_batches_tracked (it raised in training)."""
    seq, fused = make_pair(DCGAN, impl, **VARIANTS[variant])
    got = run_both(seq, fused, randn((0,) + DCGAN[1:3] + DCGAN[2:3]), training, torch.float32)
    assert got.shape[0] == 0


@pytest.mark.parametrize("slope", [0.0, 0.01, 1.5])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_other_slopes(impl, slope):
    seq, fused = make_pair(DCGAN, impl, slope=slope)
    for training in (True, False):
        run_both(seq, fused, randn((2, 8, 8, 8)), training, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_layouts(impl, layout):
    seq, fused = make_pair(DCGAN, impl)
    for training in (True, False):
        got = run_both(seq, fused, randn((2, 8, 8, 8), layout), training, torch.float32)
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_channels_last_weight(impl):
    """A channels-last weight (model.to(memory_format=torch.channels_last), what cuDNN runs without a copy)
    gives the same results, and its gradient comes back channels-last."""
    seq, fused = make_pair(DCGAN, impl)
    fused.to(memory_format=torch.channels_last)
    assert not fused.get_parameter("0.weight").is_contiguous()
    for training in (True, False):
        fused.zero_grad(), seq.zero_grad()
        run_both(seq, fused, randn((2, 8, 8, 8), "channels_last"), training, torch.float32)
        assert fused.get_parameter("0.weight").grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_float64(impl):
    seq, fused = make_pair(DCGAN, impl, torch.float64)
    for training in (True, False):
        run_both(seq, fused, randn((2, 8, 8, 8), dtype=torch.float64), training, torch.float64)


@pytest.mark.parametrize("training", [True, False])
def test_parity_cpu_large(training):
    """Vector loops over the channels with tails, several statistics blocks."""
    seq, fused = make_pair((8, 24, 16, 37, 4, 2, 1), "cpu")
    run_both(seq, fused, randn((8, 24, 16, 16)), training, torch.float32)


@pytest.mark.parametrize("impl", ALL)
def test_running_stats_over_steps(impl):
    for momentum in (0.1, None):
        seq, fused = make_pair(DCGAN, impl, momentum=momentum)
        for step in range(4):
            run_both(seq, fused, randn((2, 8, 8, 8)) * (step + 1) + step, True, torch.float32)
            seq.zero_grad()
            fused.zero_grad()
        run_both(seq, fused, randn((2, 8, 8, 8)), False, torch.float32)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_large_offset_accuracy(impl):
    """SPEC 1's accuracy bar: z offset by 1e4 through the conv bias."""
    seq, fused = make_pair(DCGAN, impl)
    with torch.no_grad():
        seq[0].bias.add_(1e4)
    fused.load_state_dict(seq.state_dict())
    x = randn((2, 8, 8, 8))
    exact = copy.deepcopy(seq).double().train()(x.double())
    eager_err = (seq.train()(x).double() - exact).abs().max().item()
    err = (fused.train()(x).double() - exact).abs().max().item()
    assert err <= 4 * eager_err + 1e-5, (err, eager_err)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_no_grad(impl):
    seq, fused = make_pair(DCGAN, impl)
    x = randn((2, 8, 8, 8))
    with torch.no_grad():
        for training in (True, False):
            torch.testing.assert_close(fused.train(training)(x), seq.train(training)(x))
    for a, b in zip(fused.state_dict().values(), seq.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", ALL)
def test_gradcheck(impl, training):
    f64 = dict(dtype=torch.float64)
    inputs = [torch.randn(3, 3, 4, 4, **f64), torch.randn(4, 3, 3, 3, **f64), torch.randn(4, **f64),
              torch.rand(4, **f64) + 0.5, torch.randn(4, **f64)]
    rm, rv = (None, None) if training else (torch.randn(4, **f64) * 0.1, torch.rand(4, **f64) + 0.5)

    def fn(x, w, b, gamma, beta):
        return conv2d_bn_leaky_relu(x, w, b, gamma, beta, rm, rv, training, 0.1, 1e-5, 2, 1, 0.2, impl=impl)

    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in inputs), fast_mode=impl == "triton")


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_double_backward_falls_back(impl):
    """A gradient penalty through the block: the explicit eager fallback, checked by gradgradcheck
    (NCHW x, so the saved x is the kernels' channels-last copy) and against the reference."""
    f64 = dict(dtype=torch.float64)
    inputs = [torch.randn(3, 2, 4, 4, **f64), torch.randn(3, 2, 3, 3, **f64), torch.randn(3, **f64),
              torch.rand(3, **f64) + 0.5, torch.randn(3, **f64)]

    def fn(impl_):
        return lambda x, w, b, gamma, beta: conv2d_bn_leaky_relu(x, w, b, gamma, beta, None, None, True, 0.1, 1e-5,
                                                                 2, 1, 0.2, impl=impl_)

    leaves = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradgradcheck(fn(impl), leaves, fast_mode=impl == "triton")
    penalties = []
    for impl_ in (impl, "reference"):
        (gx,) = torch.autograd.grad(fn(impl_)(*leaves).square().sum(), leaves[0], create_graph=True)
        penalties.append(torch.autograd.grad(gx.square().sum(), leaves[1:]))
    for got, want in zip(*penalties):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl):
    x = randn((2, 3, 5, 5), "channels_last").requires_grad_()
    w = randn((4, 3, 4, 4)).requires_grad_()
    b, gamma, beta = randn((4,)).requires_grad_(), (torch.rand(4) + 0.5).requires_grad_(), randn((4,)).requires_grad_()
    op = torch.ops.fastgan.conv2d_bn_leaky_relu_train.default
    torch.library.opcheck(op, (x, w, b, gamma, beta, 1e-5, [2, 2], [1, 1], 0.2, impl))
    torch.library.opcheck(op, (x.detach().contiguous(), w, None, None, None, 1e-5, [1, 1], [0, 0], 0.0, impl))
    for need in ([True, True], [True, False], [False, True]):
        for weight in (w.detach(), w.detach().contiguous(memory_format=torch.channels_last)):
            torch.library.opcheck(torch.ops.fastgan.conv2d_backward.default,
                                  (randn((2, 4, 2, 2), "channels_last"), x.detach(), weight, [2, 2], [1, 1], *need,
                                   impl))


# (batch, C_in, H = W, C_out, kernel, stride, padding): the CPU's GEMM path (at most 16 output
# pixels; 1x1 outputs with and without padding, a dropped last row, odd kernels, C_in across
# several 16-channel tiles; elsewhere the weight gradient alone, up to 16 pixels) and oneDNN's.
CONV_SHAPES = [(3, 6, 4, 5, 4, 1, 0), (3, 6, 2, 5, 4, 2, 1), (2, 9, 8, 12, 4, 2, 1), (2, 7, 9, 5, 5, 2, 2),
               (2, 21, 8, 6, 4, 2, 1), (2, 5, 6, 6, 3, 1, 1), (2, 6, 10, 5, 4, 2, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_conv2d_kernels(impl, shape, fmt, dtype):
    """conv2d and conv2d_backward against ATen's, in both layouts of x, and each gradient alone."""
    n, cin, h, cout, k, s, p = shape
    x = randn((n, cin, h, h), dtype=dtype).contiguous(memory_format=fmt)
    w = randn((cout, cin, k, k), dtype=dtype)
    kern = kernels(impl)
    z = kern.conv2d(x, w, [s, s], [p, p])
    want_z = F.conv2d(x, w, None, s, p)
    assert z.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(z, want_z, **TOLERANCES[dtype])
    g = randn(want_z.shape, dtype=dtype).contiguous(memory_format=fmt)
    want = torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                               [True, True, False])
    for need in ([True, True], [True, False], [False, True]):
        got = kern.conv2d_backward(g, x, w, [s, s], [p, p], *need)
        for wanted, got_one, want_one, name in zip(need, got, want, ("grad_x", "grad_weight")):
            if not wanted:
                assert got_one.numel() == 0, name
                continue
            assert got_one.shape == want_one.shape and not got_one.isnan().any(), name
            atol = TOLERANCES[dtype]["atol"] * max(1.0, want_one.abs().max().item())
            torch.testing.assert_close(got_one, want_one, rtol=TOLERANCES[dtype]["rtol"], atol=atol,
                                       msg=lambda m: f"{name}: {m}")
        if need[0]:
            assert got[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    seq, fused = make_pair(DCGAN, impl)
    model = torch.compile(fused, fullgraph=True)
    for training in (True, True, False):
        model.train(training)
        seq.train(training)
        x = randn((2, 8, 8, 8)).requires_grad_()
        got, want = model(x), seq(x)
        torch.testing.assert_close(got, want)
        g = torch.randn_like(want)
        torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])
        for a, b in zip(fused.state_dict().values(), seq.state_dict().values()):
            torch.testing.assert_close(a, b)


def test_reference_is_the_sequential():
    seq, _ = make_pair(DCGAN, "reference")
    for training in (True, False):
        mine = copy.deepcopy(seq)
        conv, bn = mine[0], mine[1]
        x = randn((2, 8, 8, 8))
        got = conv2d_bn_leaky_relu_reference(x, conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                                             bn.running_var, training, 0.1, 1e-5, 2, 1, 0.2, bn.num_batches_tracked)
        torch.testing.assert_close(got, seq.train(training)(x), rtol=0, atol=0)
        for a, b in zip(mine.state_dict().values(), seq.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_state_dict_init_and_sharing():
    torch.manual_seed(3)
    seq = torch.nn.Sequential(torch.nn.Conv2d(8, 6, 4, 2, 1), torch.nn.BatchNorm2d(6), torch.nn.LeakyReLU(0.2))
    torch.manual_seed(3)
    fused = Conv2dBNLeakyReLU(8, 6, 4, 2, 1)
    assert list(fused.state_dict()) == list(seq.state_dict())
    for a, b in zip(fused.state_dict().values(), seq.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    shared = Conv2dBNLeakyReLU.from_modules(seq[0], seq[1], seq[2], impl="cpu")
    assert shared._modules["0"].weight is seq[0].weight and shared.negative_slope == 0.2
    shared.train()(randn((2, 8, 8, 8)))
    assert seq[1].num_batches_tracked.item() == 1


@pytest.mark.parametrize("modules, error, words", [
    ((torch.nn.ConvTranspose2d(3, 4, 3), torch.nn.BatchNorm2d(4)), TypeError, "conv must be an nn.Conv2d"),
    ((torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm1d(4)), TypeError, "bn must be an nn.BatchNorm2d"),
    ((torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()), TypeError, "act must be an nn.LeakyReLU"),
    ((torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.BatchNorm2d(4)), ValueError, "conv.groups"),
    ((torch.nn.Conv2d(3, 4, 3, padding="same"), torch.nn.BatchNorm2d(4)), ValueError, "conv.padding"),
    ((torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(5)), ValueError, "num_features"),
])
def test_from_modules_bad(modules, error, words):
    with pytest.raises(error, match=words):
        Conv2dBNLeakyReLU.from_modules(*modules)


def call(x=None, w=None, impl="cpu", **changes):
    args = dict(x=randn((2, 3, 6, 6)) if x is None else x, weight=randn((5, 3, 4, 4)) if w is None else w,
                bias=randn((5,)), bn_weight=randn((5,)), bn_bias=randn((5,)), running_mean=randn((5,)),
                running_var=torch.rand(5) + 0.5, training=True, stride=2, padding=1)
    args.update(changes)
    return conv2d_bn_leaky_relu(**args, impl=impl)


@pytest.mark.parametrize("changes, error, words", [
    (dict(x=randn((2, 3, 4))), ValueError, "x must be 4-D"),
    (dict(x=torch.ones(2, 3, 6, 6, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
    (dict(w=randn((5, 4, 4, 4))), ValueError, "weight must be .C_out, C_in, kH, kW. with C_in = 3"),
    (dict(w=randn((5, 3, 4, 4), dtype=torch.float64)), TypeError, "weight has dtype"),
    (dict(bias=randn((4,))), ValueError, r"bias must have shape \[5\]"),
    (dict(running_var=None), ValueError, "running_mean and running_var must be given together"),
    (dict(stride=0), ValueError, "stride must be"),
    (dict(eps=0.0), ValueError, "eps must be positive"),
    (dict(negative_slope="0.2"), TypeError, "negative_slope must be a number"),
    (dict(momentum=None), ValueError, "momentum=None .* needs num_batches_tracked"),
    (dict(w=randn((5, 3, 9, 9))), ValueError, "would be empty"),
    (dict(x=randn((1, 3, 4, 4)), w=randn((5, 3, 4, 4)), stride=1, padding=0), ValueError,
     "Expected more than 1 value per channel when training"),
    # Only the batch may be empty (the backends' kernels disagreed on the rest), in training and eval.
    (dict(x=randn((2, 0, 6, 6)), w=randn((5, 0, 4, 4))), ValueError, "x must have channels and pixels"),
    (dict(x=randn((2, 3, 0, 4))), ValueError, "x must have channels and pixels"),
    (dict(w=randn((0, 3, 4, 4)), bias=None, bn_weight=None, bn_bias=None, running_mean=None, running_var=None,
          training=False), ValueError, "weight must not be empty"),
])
@pytest.mark.parametrize("impl", ALL)
def test_bad_input(impl, changes, error, words):
    """Every backend refuses alike, naming the argument: the checks come before the dispatch."""
    with pytest.raises(error, match=words):
        call(**changes, impl=impl)


@pytest.mark.parametrize("max_pixels", ["0", "16"])
def test_cpu_conv2d_both_paths(max_pixels):
    """The cpu conv2d picks im2col + GEMM or oneDNN for small outputs by CPU vendor
    (csrc/cpu/convolution.cpp), read once per process: the kernel and block parity tests rerun in
    a subprocess with each path forced, so both stay tested on any machine."""
    env = dict(os.environ, FASTGAN_CPU_CONV2D_GEMM_MAX_PIXELS=max_pixels)
    select = "cpu and (conv2d_kernels or parity) and not both_paths"
    done = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-k", select],
                          env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


# ---- on a CUDA device: the cuda and triton backends against float64 (TF32 convolutions in float32) ----

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, training, dtype):
    for shape in SHAPES + [(16, 32, 16, 64, 4, 2, 1)]:
        seq, fused = make_pair(shape, impl, device="cuda")
        check_block_against_float64(seq, fused, randn(shape[:3] + shape[2:3], device="cuda"), training, dtype, 0.2)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu_variants(impl, variant):
    """The module options and both layouts of x, in float32, with slopes 0.2 and 0 (ReLU)."""
    for training in (True, False):
        for layout, slope in (("contiguous", 0.2), ("channels_last", 0.0)):
            seq, fused = make_pair(DCGAN, impl, slope=slope, device="cuda", **VARIANTS[variant])
            check_block_against_float64(seq, fused, randn((2, 8, 8, 8), layout, device="cuda"), training,
                                        torch.float32, slope)


@pytest.mark.parametrize("given", ["bn_weight", "bn_bias"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_one_affine_parameter(impl, training, given):
    """bn_weight without bn_bias or the other way round (F.batch_norm's defaults, 1 and 0, for the
    other): the functional op against the reference in float64, output and gradients."""
    x, w = randn((3, 4, 6, 6), dtype=torch.float64), randn((5, 4, 3, 3), dtype=torch.float64)
    check_one_affine_parameter(conv2d_bn_leaky_relu, conv2d_bn_leaky_relu_reference, impl, x, w, 5, given, training,
                               padding=1)
