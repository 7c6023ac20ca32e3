"""fastgan.fuse on hand-written DCGAN generators: same outputs, gradients, running statistics and
state_dict keys as the plain model, parameters shared, checkpoints loading both ways."""

import copy

import pytest
import torch
from torch import nn

import fastgan
from fastgan.fusion import FusedSequential, format_report

from helpers import assert_close


def handwritten_generator(bias, nz=6, ngf=4, nc=3):
    """The PyTorch examples' DCGAN generator, small: main = Sequential(ConvT, BN, ReLU, ..., Tanh)."""
    torch.manual_seed(1)
    g = nn.Module()
    g.main = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=bias), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=bias), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=bias), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=bias), nn.Tanh())
    g.forward = g.main.forward
    for m in g.modules():  # BN weights away from 1, so a wrong gamma shows
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
    return g


def run(model, z):
    z = z.detach().requires_grad_()
    out = model(z)
    grad = torch.randn_like(out, generator=torch.Generator().manual_seed(3))
    out.backward(grad)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out.detach(), z.grad, grads


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
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
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
    assert_close(fused(z), other(z))


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
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
        for (name, b), (_, bw) in zip(fused.named_buffers(), plain.named_buffers()):
            torch.testing.assert_close(b, bw, rtol=1e-5, atol=1e-6, msg=name)
