"""The fused blocks under torch.autocast (mixed precision), against the eager modules they replace
under the same autocast.

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

import pytest
import torch

from fastgan import unfuse
from fastgan.models import DCGANDiscriminator, DCGANGenerator
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
    """The fused models run under autocast (they raised a dtype mismatch before) and return what the
    eager models return under it, within the same precision."""
    torch.manual_seed(0)
    gen = DCGANGenerator(nz=8, ngf=4, fused=True, impl="cpu")
    disc = DCGANDiscriminator(ndf=4, fused=True, impl="cpu")
    eager_gen, eager_disc = unfuse(copy.deepcopy(gen)), unfuse(copy.deepcopy(disc))
    z = torch.randn(4, 8, 1, 1)
    with torch.autocast("cpu", dtype=dtype):
        img, eager_img = gen(z), eager_gen(z)
        score, eager_score = disc(img), eager_disc(eager_img)
    assert img.dtype == eager_img.dtype and score.dtype == eager_score.dtype
    u = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    # The images pass four normalized blocks and a tanh: a few units of rounding each.
    torch.testing.assert_close(img.float(), eager_img.float(), rtol=0, atol=64 * u)
    score.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in disc.parameters())
