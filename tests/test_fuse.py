"""fastgan.fuse on hand-written DCGAN generators: same outputs, gradients, running statistics and
state_dict keys as the plain model, parameters shared, checkpoints loading both ways."""

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan
from fastgan.fusion import FusedSequential, format_report

from helpers import assert_close


class Generator(nn.Module):
    def forward(self, z):
        return self.main(z)  # looked up per call: a fused main runs its FusedSequential.forward


def handwritten_generator(bias, nz=6, ngf=4, nc=3):
    """The PyTorch examples' DCGAN generator, small: main = Sequential(ConvT, BN, ReLU, ..., Tanh)."""
    torch.manual_seed(1)
    g = Generator()
    g.main = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=bias), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=bias), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=bias), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=bias), nn.Tanh())
    for m in g.modules():  # BN weights away from 1, so a wrong gamma shows
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
    return g


def run(model, z):
    z = z.detach().requires_grad_()
    out = model(z)
    # The same values whatever out's layout (randn_like fills memory in order: a channels-last out
    # would get them permuted).
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    out.backward(grad)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out.detach(), z.grad, grads


def assert_grads_close(fused, got_grads, want_grads, training):
    """The fused model's parameter gradients against the plain one's."""
    # A conv bias before training-mode batch norm cancels: exactly zero fused, the rounding noise of
    # a zero sum in eager (ops/_batch_norm.py cancelled_bias_grad).
    cancelled = set()
    for seq in fused.modules():
        if training and isinstance(seq, FusedSequential):
            cancelled |= {id(block[0]._modules["0"].bias) for block in seq._fastgan_blocks.values()}
    for (name, p), g, w in zip(fused.named_parameters(), got_grads, want_grads):
        if id(p) in cancelled:
            assert torch.equal(g, torch.zeros_like(g)), name
            continue
        # A weight gradient sums over batch and pixels in float32: its rounding scales with the
        # largest entries, not with each one (small entries of a 1e2-sized gradient are off by ~1e-5).
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * w.abs().max().item(), msg=name)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_fuse_matches_plain_model(bias, training):
    plain = handwritten_generator(bias)
    fused = copy.deepcopy(plain)
    params_before = list(fused.parameters())
    report = fastgan.fuse(fused, impl="cpu")
    assert [r.start for r in report] == [0, 3, 6]
    assert [r.modules for r in report] == [("0", "1", "2"), ("3", "4", "5"), ("6", "7", "8")]
    assert type(fused.main) is FusedSequential
    assert all(a is b for a, b in zip(params_before, fused.parameters()))  # shared, not copied
    plain.train(training)
    fused.train(training)
    for step in range(3):  # running statistics follow eager's over several steps
        z = torch.randn(5, 6, 1, 1)
        want, want_dz, want_grads = run(plain, z)
        got, got_dz, got_grads = run(fused, z)
        assert_close(got, want)
        assert_close(got_dz, want_dz)
        assert_grads_close(fused, got_grads, want_grads, training)
        for (name, b), (_, bw) in zip(fused.named_buffers(), plain.named_buffers()):
            torch.testing.assert_close(b, bw, rtol=1e-5, atol=1e-6, msg=name)


def test_state_dict_round_trip():
    plain = handwritten_generator(False)
    fused = handwritten_generator(False)
    fastgan.fuse(fused)
    assert list(fused.state_dict()) == list(plain.state_dict())
    for p in plain.parameters():
        p.data.normal_()
    fused.load_state_dict(plain.state_dict())  # plain checkpoint -> fused model
    for (k, a), b in zip(fused.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
    other = handwritten_generator(False)
    other.load_state_dict(fused.state_dict())  # fused checkpoint -> plain model
    z = torch.randn(4, 6, 1, 1)
    fused.eval()
    other.eval()
    # N(0, 1) weights make pre-activations in the tens: both float32 models are off from float64 by
    # more than a unit-scale tolerance; the fused one must be off by no more than a few times eager's.
    exact = copy.deepcopy(other).double()(z.double())
    err_fused, err_eager = ((m(z).double() - exact).abs().max().item() for m in (fused, other))
    assert err_fused <= 4 * err_eager + 1e-6, (err_fused, err_eager)


def test_unfuse_and_untouched_patterns():
    model = nn.Sequential(
        nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2),  # not ReLU: left alone
        nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=2), nn.BatchNorm2d(4), nn.ReLU()),  # groups
        nn.Sequential(nn.ConvTranspose2d(4, 2, 3), nn.BatchNorm2d(2), nn.ReLU()))
    report = fastgan.fuse(model)
    assert [(r.path, r.start) for r in report] == [("4", 0)]
    assert type(model) is nn.Sequential and type(model[3]) is nn.Sequential
    assert "1 run(s) fused" in format_report(report) and "4[0, 1, 2]" in format_report(report)
    x = torch.randn(2, 3, 5, 5)
    fused_out = model(x)
    fastgan.unfuse(model)
    assert type(model[4]) is nn.Sequential
    for m in model.modules():  # the fused pass updated them: start the unfused pass from the same state
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    assert_close(model(x), fused_out, torch.float32)


def test_fused_model_moves_and_keeps_sharing():
    model = handwritten_generator(True)
    fastgan.fuse(model)
    model.double()  # buffers are replaced by .double(): the fused runs must read the new ones
    out = model(torch.randn(3, 6, 1, 1, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert model.main[1].num_batches_tracked.item() == 1


def handwritten_discriminator(bias, nc=3, ndf=4):
    """The PyTorch examples' DCGAN discriminator, small, one LeakyReLU with another slope."""
    torch.manual_seed(2)
    d = nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=bias), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=bias), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=bias), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=bias), nn.Sigmoid())
    for m in d.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
    return d


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_fuse_discriminator_matches_plain_model(bias, training):
    plain = handwritten_discriminator(bias)
    fused = copy.deepcopy(plain)
    report = fastgan.fuse(fused, impl="cpu")
    assert [(r.start, r.pattern) for r in report] == [(2, "Conv2d -> BatchNorm2d -> LeakyReLU"),
                                                      (5, "Conv2d -> BatchNorm2d -> LeakyReLU")]
    assert fused._fastgan_blocks[5][0].negative_slope == 0.1
    plain.train(training)
    fused.train(training)
    for step in range(3):
        x = torch.randn(5, 3, 32, 32)  # NCHW: the fused Sequential goes channels-last itself
        want, want_dx, want_grads = run(plain, x)
        got, got_dx, got_grads = run(fused, x)
        assert_close(got, want)
        assert_close(got_dx, want_dx)
        assert_grads_close(fused, got_grads, want_grads, training)
        for (name, b), (_, bw) in zip(fused.named_buffers(), plain.named_buffers()):
            torch.testing.assert_close(b, bw, rtol=1e-5, atol=1e-6, msg=name)


class CountCopies(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.copies += func.overloadpacket is torch.ops.aten.copy_
        return func(*args, **(kwargs or {}))


def test_fused_conv_weights_run_channels_last():
    """fuse lays the convolution weights of a FusedSequential out channels-last, as its activations (the same
    Parameter objects): a training step copies no weight and no gradient into another layout; unfuse puts
    them back. (Eval mode folds the statistics into the weight with eager ops, whose conv-bias gradient
    AccumulateGrad copies: not counted here.)"""
    model = handwritten_discriminator(True)
    params = list(model.parameters())
    fastgan.fuse(model, impl="cpu")
    assert all(a is b for a, b in zip(params, model.parameters()))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.randn(5, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with CountCopies() as counter:
        model(x).sum().backward()
    assert counter.copies == 0
    assert all(c.weight.grad.stride() == c.weight.stride() for c in convs)
    fastgan.unfuse(model)
    assert all(c.weight.is_contiguous() for c in convs)
