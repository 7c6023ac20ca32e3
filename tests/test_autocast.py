"""The fused ops and models under torch.autocast (mixed precision), against the eager code they
replace under the same autocast.

Autocast casts a convolution's input, weight and bias to its dtype and leaves batch norm's
parameters and statistics in float32, so an eager Conv -> BatchNorm2d -> activation block returns
the autocast dtype, keeps float32 running statistics and gives float32 parameter gradients; the fused
block must do the same. Values: the eager block under autocast and the fused one are both compared
with a float64 reference computed from the same rounded inputs (x and the conv weight and bias rounded
to the autocast dtype, as autocast does; everything else float64), and the fused block may be off by
at most twice eager's error plus a hundredth of the reference's scale (as the low-precision parity
tests of the blocks): the two round at different points (eager rounds the batch-norm input and output
per op, the fused kernels once), so neither is exact, and what must hold is that the fused block is
no worse than eager in the same precision.
"""

import copy
import math

import pytest
import torch

from fastgan import unfuse
import fastgan.ops as ops
from fastgan.models import (DCGANDiscriminator, DCGANGenerator, ProGANDiscriminator, ProGANGenerator,
                            dcgan_optimizers, dcgan_step, progan_optimizers, progan_step)
from fastgan.nn import Conv2dBNLeakyReLU, ConvTransposeBNReLU2d
from helpers import CPU_BACKENDS, masked_leaky_relu, randn

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def blocks(kind, impl):
    """(eager nn.Sequential, fused block) with the same random state, nothing 0 or 1."""
    torch.manual_seed(0)
    if kind == "generator":
        seq = torch.nn.Sequential(torch.nn.ConvTranspose2d(12, 10, 4, 2, 1), torch.nn.BatchNorm2d(10), torch.nn.ReLU())
        fused = ConvTransposeBNReLU2d(12, 10, 4, 2, 1, impl=impl)
    else:
        seq = torch.nn.Sequential(torch.nn.Conv2d(12, 10, 4, 2, 1), torch.nn.BatchNorm2d(10),
                                  torch.nn.LeakyReLU(0.2))
        fused = Conv2dBNLeakyReLU(12, 10, 4, 2, 1, negative_slope=0.2, impl=impl)
    with torch.no_grad():
        seq[1].weight.uniform_(0.5, 1.5)
        seq[1].bias.normal_(0, 0.5)
        seq[1].running_mean.normal_(0, 0.3)
        seq[1].running_var.uniform_(0.5, 2.0)
    fused.load_state_dict(seq.state_dict())
    return seq, fused


def float64_reference(seq, dtype):
    """seq in float64 with the conv's parameters rounded to `dtype` first (autocast's cast)."""
    exact = copy.deepcopy(seq).double()
    with torch.no_grad():
        for p in exact[0].parameters():
            p.copy_(p.to(dtype))
    return exact


def results(module, x, y, g):
    y.backward(g.to(y.dtype))
    return [y, x.grad, *module.state_dict().values(), *[p.grad for p in module.parameters()]]


def run(module, x, g, dtype):
    """(output, x's gradient, state_dict values, parameter gradients) of one forward and backward
    under autocast to `dtype`."""
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = module(x)
    return results(module, x, y, g)


def run_reference(seq, x, g, dtype, mask, slope):
    """run's results for the float64 reference of seq, its activation taking the sides in `mask` (the
    output > 0 of the block compared with it): where the pre-activation is within the rounding of 0,
    float64 may take the other side, and that element's gradient would differ by (1 - slope) g."""
    exact = float64_reference(seq, dtype)
    exact.train(seq.training)
    x = x.to(dtype).double().requires_grad_()
    return results(exact, x, masked_leaky_relu(exact[1](exact[0](x)), mask, slope), g.to(dtype).double())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("kind", ["generator", "discriminator"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_block_under_autocast(impl, kind, dtype, training):
    seq, fused = blocks(kind, impl)
    slope = 0.0 if kind == "generator" else 0.2
    for m in (seq, fused):
        m.train(training)
    x = randn((3, 12, 8, 8))
    g = torch.randn(3, 10, 16 if kind == "generator" else 4, 16 if kind == "generator" else 4)
    reference = copy.deepcopy(seq)  # its state before the eager run updates the running statistics
    eager, got = run(seq, x, g, dtype), run(fused, x, g, dtype)
    want_eager = run_reference(copy.deepcopy(reference), x, g, dtype, eager[0] > 0, slope)
    want = run_reference(reference, x, g, dtype, got[0] > 0, slope)
    assert got[0].dtype == eager[0].dtype == dtype  # the autocast dtype out
    assert got[1].dtype == torch.float32  # x's gradient in x's dtype
    for a, b in zip(got[2:], eager[2:]):  # float32 statistics and parameter gradients, as eager's
        assert a.dtype == b.dtype
    names = ["y", "grad x", *seq.state_dict(), *[f"grad {k}" for k, _ in seq.named_parameters()]]
    for name, e, we, a, w in zip(names, eager, want_eager, got, want):
        if name == "grad 0.bias" and training:
            continue  # 0 for the fused blocks (the bias cancels), rounding noise for eager
        if w.dtype == torch.int64:  # num_batches_tracked
            assert torch.equal(a, w) and torch.equal(e, w), name
            continue
        eager_err = (e.double() - we).abs().max().item()
        err = (a.double() - w).abs().max().item()
        assert err <= 2 * eager_err + 1e-2 * (1 + w.abs().max().item()), (name, err, eager_err)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_fused_dcgan_under_autocast(dtype):
    """The fused models (minibatch discrimination included) run under autocast (they raised a dtype
    mismatch before) and return what the eager models return under it, within the same precision."""
    torch.manual_seed(0)
    gen = DCGANGenerator(nz=8, ngf=4, fused=True, impl="cpu")
    disc = DCGANDiscriminator(ndf=4, minibatch_features=6, fused=True, impl="cpu")
    eager_gen, eager_disc = unfuse(copy.deepcopy(gen)), unfuse(copy.deepcopy(disc))
    eager_disc.minibatch.impl = "reference"
    z = torch.randn(4, 8, 1, 1)
    with torch.autocast("cpu", dtype=dtype):
        img, eager_img = gen(z), eager_gen(z)
        score, eager_score = disc(img), eager_disc(eager_img)
    assert img.dtype == eager_img.dtype and score.dtype == eager_score.dtype
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    # The images pass four normalized blocks and a tanh: a few units of rounding each.
    torch.testing.assert_close(img.float(), eager_img.float(), rtol=0, atol=64 * u)
    torch.testing.assert_close(score.float(), eager_score.float(), rtol=0, atol=64 * u * (1 + score.abs().max().item()))
    score.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in disc.parameters())


def assert_no_worse_than_eager(got, eager, want, name):
    """got's error against the float64 `want` at most twice eager's plus a hundredth of want's scale
    (the same bound as the blocks')."""
    assert got.dtype == eager.dtype, name
    eager_err = (eager.double() - want).abs().max().item()
    err = (got.double() - want).abs().max().item()
    assert err <= 2 * eager_err + 1e-2 * (1 + want.abs().max().item()), (name, err, eager_err)


def check_op(fused, reference, inputs, cast, dtype):
    """An op under autocast against its reference under the same autocast, output and gradients, both
    against float64 from the inputs rounded as autocast rounds them (`cast`: which ones it casts)."""
    grads = {}
    for name, fn in (("fused", fused), ("eager", reference)):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        with torch.autocast("cpu", dtype=dtype):
            y = fn(*leaves)
        y.backward(torch.ones_like(y))
        grads[name] = [y, *[t.grad for t in leaves]]
    leaves = [(t.to(dtype) if c else t).double().detach().requires_grad_() for t, c in zip(inputs, cast)]
    y = reference(*leaves)
    y.backward(torch.ones_like(y))
    want = [y, *[t.grad for t in leaves]]
    assert grads["fused"][0].dtype == grads["eager"][0].dtype  # eager's dtype out (cat may promote)
    for i, (got, eager, w) in enumerate(zip(grads["fused"], grads["eager"], want)):
        assert_no_worse_than_eager(got, eager, w, f"output {i}" if i == 0 else f"grad {i - 1}")


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_minibatch_discrimination_under_autocast(impl, dtype):
    """x @ T runs in the autocast dtype (and the bias is added in it), as the reference's product does."""
    x, T, bias = randn((6, 4, 2, 2)), randn((16, 5, 3)) * 0.3, randn((5,))
    check_op(lambda *a: ops.minibatch_discrimination(*a, impl=impl), ops.minibatch_discrimination_reference,
             (x, T, bias), (True, True, True), dtype)


@pytest.mark.parametrize("high_float32", [False, True])
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_fade_in_from_rgb_under_autocast(impl, dtype, high_float32):
    """from_rgb's 1x1 convolution takes the image, weight and bias in the autocast dtype; x_high comes in
    it, or in float32, when eager's blend promotes to float32 (the fused op raised a dtype error before)."""
    img, weight, bias = randn((2, 3, 8, 8)), randn((6, 3, 1, 1)), randn((6,))
    x_high = randn((2, 6, 4, 4)).to(torch.float32 if high_float32 else dtype)
    check_op(lambda i, w, b, x: ops.fade_in_from_rgb(i, x, w, b, 0.3, impl=impl),
             lambda i, w, b, x: ops.fade_in_from_rgb_reference(i, x, w, b, 0.3),
             (img, weight, bias, x_high), (True, True, True, False), dtype)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_progan_under_autocast(dtype):
    """The fused ProGAN runs under autocast (its biases met half-precision activations and raised
    before) as the reference models do: the same dtypes, outputs within a few units of rounding, and a
    training step with the gradient penalty."""
    torch.manual_seed(0)
    kw = dict(fmap_base=64, fmap_max=8)
    fused = ProGANGenerator(16, 8, 3, impl="cpu", **kw), ProGANDiscriminator(16, 3, impl="cpu", **kw)
    eager = ProGANGenerator(16, 8, 3, impl="reference", **kw), ProGANDiscriminator(16, 3, impl="reference", **kw)
    for f, e in zip(fused, eager):
        e.load_state_dict(f.state_dict())
    z, img, mix = torch.randn(4, 8), torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 1, 1, 1)
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    with torch.autocast("cpu", dtype=dtype):
        for got, want in ((fused[0](z, 2, 0.5), eager[0](z, 2, 0.5)), (fused[1](img, 2, 0.5), eager[1](img, 2, 0.5))):
            assert got.dtype == want.dtype == dtype
            torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=16 * u * (1 + want.abs().max().item()))
        losses = [progan_step(*m, *progan_optimizers(*m), img, 2, 0.5, z, mix) for m in (fused, eager)]
    # loss_d comes before any update: the same within rounding; loss_g follows Adam's first step, whose
    # size does not depend on the gradients' magnitudes, so it is only checked to be finite.
    assert abs(losses[0][0] - losses[1][0]) <= 64 * u * (1 + abs(losses[1][0]))
    assert all(map(math.isfinite, losses[0]))


def dcgan_pair(minibatch_features=6):
    torch.manual_seed(0)
    gen = DCGANGenerator(nz=8, ngf=4, fused=True, impl="cpu")
    disc = DCGANDiscriminator(ndf=4, minibatch_features=minibatch_features, fused=True, impl="cpu")
    eager = unfuse(copy.deepcopy(gen)), unfuse(copy.deepcopy(disc))
    if minibatch_features:
        eager[1].minibatch.impl = "reference"
    return (gen, disc), eager


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_dcgan_step_with_amp(dtype):
    """dcgan_step(amp=..., scaler=...) (float16 with a GradScaler): D's loss, taken before any update,
    within rounding of eager's under the same autocast; the update happens (finite gradients)."""
    models = dcgan_pair()
    real, z = torch.rand(4, 3, 64, 64) * 2 - 1, torch.randn(4, 8, 1, 1)
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    losses = []
    for gen, disc in models:
        # A scale these gradients (~1) do not overflow at (the default 2**16 would: a skipped first step).
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4) if dtype == torch.float16 else None
        before = [p.detach().clone() for p in disc.parameters()]
        losses.append(dcgan_step(gen, disc, *dcgan_optimizers(gen, disc), real, z, amp=dtype, scaler=scaler))
        assert any(not torch.equal(a, p) for a, p in zip(before, disc.parameters()))  # not skipped
    assert abs(losses[0][0] - losses[1][0]) <= 64 * u * (1 + abs(losses[1][0]))


def test_grad_scaler_skips_an_overflowing_step():
    """float16 gradients that overflow (a scale of 2**40) reach the GradScaler as inf / nan in the
    fused models as in eager: it skips the optimizer steps, leaves the parameters alone and backs off."""
    real, z = torch.rand(4, 3, 64, 64) * 2 - 1, torch.randn(4, 8, 1, 1)
    for gen, disc in dcgan_pair(minibatch_features=0):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
        before = [p.detach().clone() for p in (*gen.parameters(), *disc.parameters())]
        dcgan_step(gen, disc, *dcgan_optimizers(gen, disc), real, z, amp=torch.float16, scaler=scaler)
        assert all(torch.equal(a, p) for a, p in zip(before, (*gen.parameters(), *disc.parameters())))
        assert scaler.get_scale() < 2.0 ** 40


def saved_activation_bytes(fn, x, n):
    """Bytes of the distinct storages autograd saves for backward during fn(x) of the activations:
    the saved tensors of x's batch shape (4-D, n in front), not the weights (the parameters or their
    autocast copies) nor the per-channel statistics. Storages shared by several saved tensors count once."""
    storages = {}

    def pack(t):
        if t.dim() == 4 and t.shape[0] == n:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", ["generator", "discriminator"])
@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_block_saves_half_the_activation_bytes_under_autocast(impl, kind, training):
    """Under autocast to bfloat16 a conv block keeps what it saves for backward (its input, the conv
    output, the output) in bfloat16, as eager's Conv -> BatchNorm -> activation does: half the bytes of
    the same call in float32. A float32 copy of an activation left among them would break the 2:1."""
    _, block = blocks(kind, impl)
    block.train(training)
    n = 5  # the batch, unlike any weight's first dim (10, 12): the activations only
    x = randn((n, 12, 8, 8)).requires_grad_()
    fp32 = saved_activation_bytes(block, x, n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = saved_activation_bytes(block, x, n)
    assert fp32 > 0 and 2 * amp == fp32, (amp, fp32)
