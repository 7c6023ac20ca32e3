"""SPEC 1: the fused ConvTranspose2d + BatchNorm2d + ReLU against nn.Sequential of the three
(the reference): output, running statistics, num_batches_tracked and all five gradients."""

import copy
import importlib

import pytest
import torch
import torch._inductor.config
import torch.nn.functional as F

import fastgan
from fastgan.nn import ConvTransposeBNReLU2d
from fastgan.ops import conv_transpose_bn_relu, conv_transpose_bn_relu_reference
from fastgan.ops._dispatch import kernels
from helpers import (CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, TOLERANCES, check_block_against_float64,
                     check_one_affine_parameter, randn)

ctbr_module = importlib.import_module("fastgan.ops.conv_transpose_bn_relu")  # the package exports the function

# (batch, C_in, H = W, C_out, kernel, stride, padding, output_padding)
DCGAN = (2, 8, 4, 6, 4, 2, 1, 0)
FIRST = (3, 10, 1, 8, 4, 1, 0, 0)
SHAPES = [DCGAN, FIRST, (2, 5, 5, 7, 3, 1, 1, 0), (2, 4, 3, 5, 5, 2, 2, 1), (1, 3, 3, 3, 3, 2, 0, 1)]
VARIANTS = {  # module options
    "default": {}, "no_bias": dict(bias=False), "affine_false": dict(affine=False),
    "untracked": dict(track_running_stats=False), "cumulative": dict(momentum=None),
}
ALL = ["reference"] + CPU_BACKENDS


def make_pair(shape, impl, dtype=torch.float32, device="cpu", **options):
    """nn.Sequential(ConvTranspose2d, BatchNorm2d, ReLU) and the fused block with the same state:
    random affine parameters and running statistics, so that nothing is 0 or 1."""
    _, cin, _, cout, k, s, p, op = shape
    bias = options.pop("bias", True)
    seq = torch.nn.Sequential(torch.nn.ConvTranspose2d(cin, cout, k, s, p, op, bias=bias),
                              torch.nn.BatchNorm2d(cout, **options), torch.nn.ReLU()).to(device, dtype)
    bn = seq[1]
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.5)
        if bn.track_running_stats:
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(3)
    fused = ConvTransposeBNReLU2d(cin, cout, k, s, p, op, bias=bias, impl=impl, **options).to(device, dtype)
    fused.load_state_dict(seq.state_dict())
    return seq, fused


def grads(module):
    return {k: v.grad for k, v in module.named_parameters()}


def assert_same_state(fused, seq, dtype, training_bias_grad_atol=None):
    """Running statistics, num_batches_tracked and parameter gradients of the two modules."""
    tol = TOLERANCES[dtype]
    for (k, got), (_, want) in zip(fused.state_dict().items(), seq.state_dict().items()):
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{k}: {m}")
    for (k, got), (_, want) in zip(grads(fused).items(), grads(seq).items()):
        assert (got is None) == (want is None), k
        if got is None:
            continue
        if k == "0.bias" and training_bias_grad_atol is not None:
            # Mathematically 0 in training (the bias cancels): eager gives rounding noise of a sum,
            # the fused backends exactly 0.
            torch.testing.assert_close(got, want, rtol=0, atol=training_bias_grad_atol)
        else:  # sums over the batch: absolute error relative to their size
            atol = tol["atol"] * max(1.0, want.abs().max().item())
            torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=atol, msg=lambda m: f"grad of {k}: {m}")


def run_both(seq, fused, x, training, dtype):
    """Forward and backward of both modules on copies of x; compares everything."""
    seq.train(training)
    fused.train(training)
    xs, xf = (x.detach().clone().requires_grad_() for _ in range(2))
    xf = x.detach().requires_grad_()  # keeps x's strides
    want, got = seq(xs), fused(xf)
    assert got.shape == want.shape and not got.isnan().any()
    torch.testing.assert_close(got, want, **TOLERANCES[dtype])
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    torch.testing.assert_close(xf.grad, xs.grad, **TOLERANCES[dtype])
    n = want.numel() // want.shape[1]
    g_max = g.abs().max().item() if n else 0.0  # an empty batch has no elements to take the max of
    bias_atol = 1e-5 * n * g_max if training or not seq[1].track_running_stats else None
    assert_same_state(fused, seq, dtype, bias_atol)
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


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_channels_last_weight(impl, training):
    """A channels-last weight (model.to(memory_format=torch.channels_last), what cuDNN runs without a copy)
    gives the same results, and its gradient comes back channels-last, so no layout changes per step."""
    for shape in (DCGAN, (2, 4, 8, 6, 3, 2, 1, 1)):
        seq, fused = make_pair(shape, impl)
        fused.to(memory_format=torch.channels_last)
        assert not fused.get_parameter("0.weight").is_contiguous()
        run_both(seq, fused, randn(shape[:3] + shape[2:3], "channels_last"), training, torch.float32)
        assert fused.get_parameter("0.weight").grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_layouts(impl, training, layout):
    seq, fused = make_pair(DCGAN, impl)
    run_both(seq, fused, randn((2, 8, 4, 4), layout), training, torch.float32)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_float64(impl, training):
    for shape in (DCGAN, FIRST):
        seq, fused = make_pair(shape, impl, torch.float64)
        run_both(seq, fused, randn(shape[:3] + shape[2:3], dtype=torch.float64), training, torch.float64)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 64, 8, 64, 4, 2, 1, 0), (2, 24, 9, 37, 4, 2, 1, 0), (64, 16, 1, 48, 4, 1, 0, 0)])
def test_parity_cpu_large(shape, training):
    """Vector loops over the channels with and without tails, and several statistics blocks."""
    seq, fused = make_pair(shape, "cpu")
    run_both(seq, fused, randn(shape[:3] + shape[2:3], "channels_last"), training, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_low_precision_cpu(impl, dtype, training):
    """float16 / bfloat16 blocks: output, buffers and gradients as close to the float32 reference
    as eager PyTorch in that dtype is (a small factor allowed). (triton: its bfloat16 tl.dot, which
    the interpreter gets wrong unless given float32, see _dot_operand.)"""
    shape = (2, 16, 4, 40, 4, 2, 1, 0)
    exact, fused = make_pair(shape, impl)
    low, fused = copy.deepcopy(exact).to(dtype), fused.to(dtype)
    x = randn((2, 16, 4, 4))
    g = torch.randn(2, 40, 8, 8)
    results = []
    for module, inp in ((exact, x), (low, x.to(dtype)), (fused, x.to(dtype))):
        module.train(training)
        y = module(inp)
        y.backward(g.to(dtype))
        results.append([y, *module.state_dict().values(), *grads(module).values()])
    for want, eager, got in zip(*results):
        eager_err = (eager.double() - want.double()).abs().max().item()
        err = (got.double() - want.double()).abs().max().item()
        assert err <= 2 * eager_err + 1e-2 * (1 + want.double().abs().max().item()), (err, eager_err)


@pytest.mark.parametrize("impl", ALL)
def test_batch_of_one_in_eval(impl):
    seq, fused = make_pair((1, 6, 1, 5, 1, 1, 0, 0), impl)
    run_both(seq, fused, randn((1, 6, 1, 1)), False, torch.float32)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        fused.train()(randn((1, 6, 1, 1)))


@pytest.mark.parametrize("impl", ALL)
def test_running_stats_over_steps(impl):
    """Several training steps, then eval: the buffers stay equal to eager's at every step."""
    for momentum in (0.1, None):
        seq, fused = make_pair(DCGAN, impl, momentum=momentum)
        for step in range(4):
            run_both(seq, fused, randn((2, 8, 4, 4)) * (step + 1) + step, True, torch.float32)
            seq.zero_grad()
            fused.zero_grad()
        run_both(seq, fused, randn((2, 8, 4, 4)), False, torch.float32)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", ALL)
def test_large_offset_accuracy(impl, training):
    """SPEC 1: with z offset by 1e4 (conv bias, or a mean carried by x), the block is as close to a
    float64 reference as eager float32 is (a small factor allowed)."""
    for offset_in_bias in (True, False):
        seq, fused = make_pair(DCGAN, impl)
        x = randn((2, 8, 4, 4))
        with torch.no_grad():
            if offset_in_bias:
                seq[0].bias.add_(1e4)
            else:
                x = x + 100.0
                seq[0].weight.add_(1e4 / (100.0 * 8 * 4))  # about 1e4 on every output pixel
            # running statistics near the batch's, so eval is well conditioned too
            z = seq[0](x).double()
            seq[1].running_mean.copy_(z.mean((0, 2, 3)) + 0.1)
            seq[1].running_var.copy_(z.var((0, 2, 3)) * 1.2)
        fused.load_state_dict(seq.state_dict())
        exact = copy.deepcopy(seq).double().train(training)(x.double())
        eager = seq.train(training)(x)
        got = fused.train(training)(x)
        eager_err = (eager.double() - exact).abs().max().item()
        err = (got.double() - exact).abs().max().item()
        assert err <= 4 * eager_err + 1e-5, (offset_in_bias, err, eager_err)


def gradcheck_inputs(training):
    f64 = dict(dtype=torch.float64)
    x = torch.randn(2, 3, 2, 2, **f64)
    w = torch.randn(3, 4, 3, 3, **f64)
    b, gamma, beta = torch.randn(4, **f64), torch.rand(4, **f64) + 0.5, torch.randn(4, **f64)
    stats = (None, None) if training else (torch.randn(4, **f64) * 0.1, torch.rand(4, **f64) + 0.5)
    return [t.requires_grad_() for t in (x, w, b, gamma, beta)], stats


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", ALL)
def test_gradcheck(impl, training):
    inputs, (rm, rv) = gradcheck_inputs(training)

    def fn(x, w, b, gamma, beta):
        return conv_transpose_bn_relu(x, w, b, gamma, beta, rm, rv, training, 0.1, 1e-5, 2, 1, 1, impl=impl)

    fast = impl == "triton"
    assert torch.autograd.gradcheck(fn, tuple(inputs), fast_mode=fast)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_double_backward_raises(impl):
    for training in (True, False):
        inputs, (rm, rv) = gradcheck_inputs(training)
        y = conv_transpose_bn_relu(*inputs, rm, rv, training, 0.1, 1e-5, 2, 1, 1, impl=impl)
        (gx,) = torch.autograd.grad(y.square().sum(), inputs[0], create_graph=True)
        with pytest.raises(RuntimeError, match="differentiate twice"):
            gx.sum().backward()


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl):
    x = randn((2, 3, 3, 3), "channels_last").requires_grad_()
    w = randn((3, 4, 4, 4)).requires_grad_()
    b, gamma, beta = randn((4,)).requires_grad_(), (torch.rand(4) + 0.5).requires_grad_(), randn((4,)).requires_grad_()
    sizes = ([2, 2], [1, 1], [1, 1])
    ops = torch.ops.fastgan
    torch.library.opcheck(ops.conv_transpose_bn_relu_train.default, (x, w, b, gamma, beta, 1e-5, *sizes, impl))
    torch.library.opcheck(ops.conv_transpose_bn_relu_train.default, (x, w, None, None, None, 1e-5, *sizes, impl))
    torch.library.opcheck(ops.conv_transpose_bn_relu_train_inplace.default,
                          (x.detach(), w.detach(), gamma.detach(), beta.detach(), 1e-5, *sizes, impl))
    torch.library.opcheck(ops.conv_transpose_bias_relu.default, (x, w, b, *sizes, impl))
    vectors = [t.detach() for t in (b, gamma, beta)] + [torch.randn(4), torch.rand(4) + 0.5]
    torch.library.opcheck(ops.conv_transpose_bn_relu_eval_unfolded.default,
                          (x.detach(), w.detach(), *vectors, 1e-5, *sizes, impl))
    for need in ([True, True], [True, False], [False, True]):
        for weight in (w.detach(), w.detach().contiguous(memory_format=torch.channels_last)):
            torch.library.opcheck(ops.conv_transpose_backward.default,
                                  (randn((2, 4, 7, 7), "channels_last"), x.detach(), weight, *sizes, *need, impl))
    stats = (torch.randn(4), torch.rand(4) + 0.5, torch.tensor(2), torch.randn(4), torch.rand(4), torch.randn(4))
    torch.library.opcheck(ops.bn_running_stats_update.default, (*stats, 0.1, 50, impl))
    torch.library.opcheck(ops.bn_running_stats_update.default, (*stats, -1.0, 50, impl))


class Generator(torch.nn.Module):
    """Two DCGAN blocks, for torch.compile."""

    def __init__(self, impl):
        super().__init__()
        self.a = ConvTransposeBNReLU2d(6, 5, 4, 1, 0, impl=impl)
        self.b = ConvTransposeBNReLU2d(5, 4, 4, 2, 1, momentum=None, impl=impl)

    def forward(self, x):
        return self.b(self.a(x))


def eager_generator(fused):
    seq = torch.nn.Sequential(*[torch.nn.Sequential(m._modules["0"], m._modules["1"], torch.nn.ReLU())
                                for m in (fused.a, fused.b)])
    return copy.deepcopy(seq)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
@torch._inductor.config.patch(force_disable_caches=True)  # a cached graph would keep an old fake's strides
def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    fused = Generator(impl)
    with torch.no_grad():  # loads the backend's extension or module: dynamo does not trace imports
        fused.eval()(randn((2, 6, 1, 1)))
    eager = eager_generator(fused)
    model = torch.compile(fused, fullgraph=True)
    for training in (True, True, False):
        model.train(training)
        eager.train(training)
        x = randn((2, 6, 1, 1)).requires_grad_()
        got, want = model(x), eager(x)
        torch.testing.assert_close(got, want)
        g = torch.randn_like(want)
        torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])
        for got_buf, want_buf in zip(fused.state_dict().values(), eager.state_dict().values()):
            torch.testing.assert_close(got_buf, want_buf)
    with torch.no_grad():  # the in-place training path
        model.train()
        eager.train()
        x = randn((2, 6, 1, 1))
        torch.testing.assert_close(model(x), eager(x))
        for got_buf, want_buf in zip(fused.state_dict().values(), eager.state_dict().values()):
            torch.testing.assert_close(got_buf, want_buf)


def test_reference_is_the_sequential():
    seq, _ = make_pair(DCGAN, "reference")
    for training in (True, False):
        x = randn((2, 8, 4, 4))
        mine = copy.deepcopy(seq)
        conv, bn = mine[0], mine[1]
        got = conv_transpose_bn_relu_reference(x, conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                                               bn.running_var, training, 0.1, 1e-5, 2, 1, 0, bn.num_batches_tracked)
        torch.testing.assert_close(got, seq.train(training)(x), rtol=0, atol=0)
        for a, b in zip(mine.state_dict().values(), seq.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("fold_min_saved", [0, 1 << 30])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_eval_without_grad(impl, fold_min_saved, monkeypatch):
    """Eval under no_grad: normalized in place, or folded where that saves a pass over a large output
    (_fold_pays; its threshold set so that the small shapes here take each path)."""
    monkeypatch.setattr(ctbr_module, "_FOLD_MIN_SAVED", fold_min_saved)
    for shape in (DCGAN, (2, 40, 1, 8, 4, 1, 0, 0), (4, 4, 8, 8, 4, 2, 1, 0)):  # weight/output values:
        seq, fused = make_pair(shape, impl, bias=True)                            # 768/768, 5120/256, 512/8192
        x = randn(shape[:3] + shape[2:3])
        with torch.no_grad():
            torch.testing.assert_close(fused.eval()(x), seq.eval()(x))


def test_no_grad_training_normalizes_in_place():
    seq, fused = make_pair(DCGAN, "cpu")
    x = randn((2, 8, 4, 4))
    with torch.no_grad():
        torch.testing.assert_close(fused.train()(x), seq.train()(x))
    assert_same_state(fused, seq, torch.float32)


def test_state_dict_round_trip():
    seq, _ = make_pair(DCGAN, "cpu")
    fused = ConvTransposeBNReLU2d(8, 6, 4, 2, 1)
    assert list(fused.state_dict()) == list(seq.state_dict())
    fused.load_state_dict(seq.state_dict())
    back = copy.deepcopy(seq)
    for t in back.state_dict().values():
        t.zero_()
    back.load_state_dict(fused.state_dict())
    for a, b in zip(back.state_dict().values(), seq.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_same_init_as_sequential():
    torch.manual_seed(3)
    seq = torch.nn.Sequential(torch.nn.ConvTranspose2d(8, 6, 4, 2, 1), torch.nn.BatchNorm2d(6), torch.nn.ReLU())
    torch.manual_seed(3)
    fused = ConvTransposeBNReLU2d(8, 6, 4, 2, 1)
    for a, b in zip(fused.state_dict().values(), seq.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_from_modules_shares_parameters():
    conv, bn = torch.nn.ConvTranspose2d(8, 6, 4, 2, 1), torch.nn.BatchNorm2d(6)
    fused = ConvTransposeBNReLU2d.from_modules(conv, bn, impl="cpu")
    assert fused._modules["0"].weight is conv.weight and fused._modules["1"].running_mean is bn.running_mean
    assert {id(p) for p in fused.parameters()} == {id(p) for p in (*conv.parameters(), *bn.parameters())}
    fused.train()(randn((2, 8, 4, 4)))
    assert bn.num_batches_tracked.item() == 1 and not torch.equal(bn.running_mean, torch.zeros(6))
    fused.eval()
    assert not bn.training


@pytest.mark.parametrize("conv, bn, error, words", [
    (torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), TypeError, "conv must be an nn.ConvTranspose2d"),
    (torch.nn.ConvTranspose2d(3, 4, 3), torch.nn.BatchNorm1d(4), TypeError, "bn must be an nn.BatchNorm2d"),
    (torch.nn.ConvTranspose2d(4, 4, 3, groups=2), torch.nn.BatchNorm2d(4), ValueError, "conv.groups"),
    (torch.nn.ConvTranspose2d(3, 4, 3, dilation=2), torch.nn.BatchNorm2d(4), ValueError, "conv.dilation"),
    (torch.nn.ConvTranspose2d(3, 4, 3), torch.nn.BatchNorm2d(5), ValueError, "num_features"),
])
def test_from_modules_bad(conv, bn, error, words):
    with pytest.raises(error, match=words):
        ConvTransposeBNReLU2d.from_modules(conv, bn)


def call(x=None, w=None, impl="cpu", **changes):
    args = dict(x=randn((2, 3, 4, 4)) if x is None else x, weight=randn((3, 5, 4, 4)) if w is None else w,
                bias=randn((5,)), bn_weight=randn((5,)), bn_bias=randn((5,)), running_mean=randn((5,)),
                running_var=torch.rand(5) + 0.5, training=True, stride=2, padding=1)
    args.update(changes)
    return conv_transpose_bn_relu(**args, impl=impl)


@pytest.mark.parametrize("changes, error, words", [
    (dict(x=randn((2, 3, 4))), ValueError, "x must be 4-D"),
    (dict(x=torch.ones(2, 3, 4, 4, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
    (dict(w=randn((4, 5, 4, 4))), ValueError, "weight must be .C_in, C_out, kH, kW. with C_in = 3"),
    (dict(w=randn((3, 5, 4, 4), dtype=torch.float64)), TypeError, "weight has dtype"),
    (dict(bias=randn((4,))), ValueError, r"bias must have shape \[5\]"),
    (dict(bn_weight=randn((5, 1))), ValueError, "bn_weight must be 1-D"),
    (dict(running_var=None), ValueError, "running_mean and running_var must be given together"),
    (dict(output_padding=2), ValueError, "output_padding must be smaller than stride"),
    (dict(stride=0), ValueError, "stride must be"),
    (dict(padding=(1, 1, 1)), ValueError, "padding must be"),
    (dict(eps=0.0), ValueError, "eps must be positive"),
    (dict(momentum=None), ValueError, "momentum=None .* needs num_batches_tracked"),
    (dict(x=randn((1, 3, 1, 1)), w=randn((3, 5, 1, 1)), stride=1, padding=0), ValueError,
     "Expected more than 1 value per channel when training"),
    # Only the batch may be empty (the backends' kernels disagreed on the rest), in training and eval.
    (dict(x=randn((2, 0, 4, 4)), w=randn((0, 5, 4, 4))), ValueError, "x must have channels and pixels"),
    (dict(x=randn((2, 3, 0, 4))), ValueError, "x must have channels and pixels"),
    (dict(w=randn((3, 0, 4, 4)), bias=None, bn_weight=None, bn_bias=None, running_mean=None, running_var=None,
          training=False), ValueError, "weight must not be empty"),
])
@pytest.mark.parametrize("impl", ALL)
def test_bad_input(impl, changes, error, words):
    """Every backend refuses alike, naming the argument: the checks come before the dispatch."""
    with pytest.raises(error, match=words):
        call(**changes, impl=impl)


# ---- the CPU kernels on their own: NCHW z (the op always hands channels-last) ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (3, 40, 9, 11), (2, 3, 96, 96)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_cpu_kernels_both_layouts(fmt, shape, dtype):
    k = kernels("cpu")
    c = shape[1]
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else TOLERANCES[stats]
    z = (randn(shape) * 2 + 3).to(dtype).contiguous(memory_format=fmt)
    zs = z.to(stats)
    mean, var = zs.mean((0, 2, 3)), zs.var((0, 2, 3), unbiased=False)
    gamma, beta = torch.rand(c, dtype=stats) + 0.5, torch.randn(c, dtype=stats)
    invstd = torch.rsqrt(var + 1e-5)
    scale = gamma * invstd

    def per_channel(v):
        return v[None, :, None, None]

    want = F.relu((zs - per_channel(mean)) * per_channel(scale) + per_channel(beta))
    y = k.bn_relu(z, mean, scale, beta, 0.0)
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y.to(stats), want, **tol)
    z2 = z.clone()
    k.bn_relu_(z2, mean, scale, beta, 0.0)
    assert torch.equal(z2, y)
    zz = zs.detach().requires_grad_()
    ga, be = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
    ref = F.relu(F.batch_norm(zz, None, None, ga, be, True, 0.1, 1e-5))
    g = randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    want_grads = torch.autograd.grad(ref, (zz, ga, be), g.to(stats))
    got_grads = k.bn_relu_backward(g, z, mean, invstd, gamma, beta, 0.0)
    assert got_grads[0].is_contiguous(memory_format=fmt)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got.to(stats), want, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)


# (batch, C_in, H = W, C_out, kernel, stride, padding, output_padding): the CPU's GEMM path (at
# most 16 input pixels; 1x1 with and without padding, cropped taps, odd kernels, C_out across
# several 16-channel tiles) and oneDNN's.
CONV_SHAPES = [(3, 10, 1, 8, 4, 1, 0, 0), (3, 10, 1, 8, 4, 2, 1, 0), (2, 12, 4, 9, 4, 2, 1, 0),
               (2, 5, 3, 7, 5, 2, 2, 1), (2, 6, 4, 5, 3, 1, 1, 0), (2, 6, 3, 37, 4, 2, 1, 0),
               (2, 7, 2, 20, 5, 1, 1, 0), (2, 6, 5, 5, 4, 2, 1, 0), (2, 9, 8, 4, 4, 2, 1, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_conv_transpose_kernels(impl, shape, fmt, dtype):
    """The forward (through conv_transpose_stats) and conv_transpose_backward against ATen's, in
    both layouts of x, and each gradient alone."""
    n, cin, h, cout, k, s, p, op = shape
    x = randn((n, cin, h, h), dtype=dtype).contiguous(memory_format=fmt)
    w = randn((cin, cout, k, k), dtype=dtype)
    kern = kernels(impl)
    sizes = ([s, s], [p, p], [op, op])
    z, _, _ = kern.conv_transpose_stats(x, w, *sizes)
    want_z = F.conv_transpose2d(x, w, None, s, p, op)
    torch.testing.assert_close(z, want_z, **TOLERANCES[dtype])
    # conv_transpose with the conv bias (eval's z): no ReLU, every channel shifted by its own value.
    b = randn((cout,), dtype=dtype)
    want_zb = F.conv_transpose2d(x.double(), w.double(), b.double(), s, p, op)
    torch.testing.assert_close(kern.conv_transpose(x, w, *sizes, b).double(), want_zb, **TOLERANCES[dtype])
    with pytest.raises((RuntimeError, ValueError), match="bias"):
        kern.conv_transpose(x, w, *sizes, b[:-1])
    g = randn(want_z.shape, dtype=dtype).contiguous(memory_format=fmt)
    want = torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [1, 1], True, [op, op], 1,
                                               [True, True, False])
    for need in ([True, True], [True, False], [False, True]):
        got = kern.conv_transpose_backward(g, x, w, *sizes, *need)
        for wanted, got_one, want_one, name in zip(need, got, want, ("grad_x", "grad_weight")):
            if not wanted:
                assert got_one.numel() == 0, name
                continue
            assert got_one.shape == want_one.shape and not got_one.isnan().any(), name
            atol = TOLERANCES[dtype]["atol"] * max(1.0, want_one.abs().max().item())
            torch.testing.assert_close(got_one, want_one, rtol=TOLERANCES[dtype]["rtol"], atol=atol,
                                       msg=lambda m: f"{name}: {m}")
        if need[0] and fmt == torch.channels_last and h > 1:
            assert got[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_cpu_stats_kernel(fmt):
    k = kernels("cpu")
    x = randn((3, 7, 9, 9)).contiguous(memory_format=fmt) + 50.0
    w = randn((7, 33, 4, 4)).contiguous(memory_format=fmt)
    z, mean, var = k.conv_transpose_stats(x, w, [2, 2], [1, 1], [1, 1])
    want = F.conv_transpose2d(x.double(), w.double(), None, 2, 1, 1)
    torch.testing.assert_close(z.double(), want, rtol=1e-5, atol=1e-3)
    zd = z.double()
    size = zd.abs().max().item()  # |z| ~ 400 here, while the means are ~ 1
    torch.testing.assert_close(mean.double(), zd.mean((0, 2, 3)), rtol=1e-6, atol=1e-7 * size)
    torch.testing.assert_close(var.double(), zd.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-7 * size)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, training, dtype):
    for shape in SHAPES + [(16, 64, 8, 32, 4, 2, 1, 0)]:
        seq, fused = make_pair(shape, impl, device="cuda")
        check_block_against_float64(seq, fused, randn(shape[:3] + shape[2:3], device="cuda"), training, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu_float32_backward(impl, training, variant):
    """The module options on the DCGAN block, channels-last and NCHW input."""
    for layout in ("contiguous", "channels_last"):
        seq, fused = make_pair(DCGAN, impl, device="cuda", **VARIANTS[variant])
        check_block_against_float64(seq, fused, randn((2, 8, 4, 4), layout, device="cuda"), training, torch.float32)


@pytest.mark.parametrize("given", ["bn_weight", "bn_bias"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_one_affine_parameter(impl, training, given):
    """bn_weight without bn_bias or the other way round (F.batch_norm's defaults, 1 and 0, for the
    other): the functional op against the reference in float64, output and gradients."""
    x, w = randn((3, 4, 3, 3), dtype=torch.float64), randn((4, 5, 4, 4), dtype=torch.float64)
    check_one_affine_parameter(conv_transpose_bn_relu, conv_transpose_bn_relu_reference, impl, x, w, 5, given,
                               training, stride=2, padding=1)
