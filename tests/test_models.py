"""fastgan.models: shapes, keys, and a few training steps on fastgan matching eager."""

import copy

import pytest
import torch

from fastgan.models import (DCGANDiscriminator, DCGANGenerator, ProGANDiscriminator, ProGANGenerator,
                            dcgan_optimizers, dcgan_step, gradient_penalty, progan_optimizers, progan_step)


def small_dcgan(fused, minibatch_features=0):
    torch.manual_seed(0)
    gen = DCGANGenerator(nz=8, ngf=4, nc=3, fused=fused, impl="cpu" if fused else None)
    disc = DCGANDiscriminator(ndf=4, nc=3, minibatch_features=minibatch_features, fused=fused,
                              impl="cpu" if fused else "reference")
    return gen, disc


def test_dcgan_shapes_and_keys():
    gen, disc = small_dcgan(fused=True, minibatch_features=6)
    plain, _ = small_dcgan(fused=False)
    assert len(gen.fusions) == 4  # the four ConvT -> BN -> ReLU blocks
    assert len(disc.fusions) == 3  # the three Conv -> BN -> LeakyReLU blocks
    assert list(gen.state_dict()) == list(plain.state_dict())
    assert list(gen.state_dict())[:3] == ["main.0.weight", "main.1.weight", "main.1.bias"]
    img = gen(torch.randn(5, 8))
    assert img.shape == (5, 3, 64, 64) and img.abs().max() <= 1
    assert disc(img).shape == (5,)


@pytest.mark.parametrize("minibatch_features", [0, 6])
def test_dcgan_training_steps_match_eager(minibatch_features):
    fast_g, fast_d = small_dcgan(True, minibatch_features)
    eager_g, eager_d = small_dcgan(False, minibatch_features)
    eager_g.load_state_dict(fast_g.state_dict())
    eager_d.load_state_dict(fast_d.state_dict())
    opts_fast, opts_eager = dcgan_optimizers(fast_g, fast_d), dcgan_optimizers(eager_g, eager_d)
    for step in range(3):
        real = torch.rand(6, 3, 64, 64) * 2 - 1
        z = torch.randn(6, 8, 1, 1)
        got = dcgan_step(fast_g, fast_d, *opts_fast, real, z)
        want = dcgan_step(eager_g, eager_d, *opts_eager, real, z)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(fast_g.state_dict().items(), eager_g.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(fast_d.state_dict().items(), eager_d.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_generator_eval_folds_and_matches():
    fast_g, _ = small_dcgan(True)
    eager_g = copy.deepcopy(fast_g)
    from fastgan import unfuse
    unfuse(eager_g)
    for m in fast_g.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    eager_g.load_state_dict(fast_g.state_dict())
    fast_g.eval()
    eager_g.eval()
    z = torch.randn(3, 8, 1, 1)
    torch.testing.assert_close(fast_g(z), eager_g(z), rtol=1e-5, atol=1e-5)


def small_progan(impl):
    torch.manual_seed(0)
    kw = dict(fmap_base=64, fmap_max=8, impl=impl)
    return ProGANGenerator(16, 8, 3, **kw), ProGANDiscriminator(16, 3, **kw)


@pytest.mark.parametrize("level,alpha", [(0, 1.0), (1, 0.3), (2, 0.6), (2, 1.0)])
def test_progan_shapes_and_levels(level, alpha):
    gen, disc = small_progan("cpu")
    img = gen(torch.randn(4, 8), level, alpha)
    assert img.shape == (4, 3, 4 * 2 ** level, 4 * 2 ** level)
    assert disc(img, level, alpha).shape == (4,)


def test_progan_gradient_penalty_matches_eager():
    gen_f, disc_f = small_progan("cpu")
    gen_e, disc_e = small_progan("reference")
    disc_e.load_state_dict(disc_f.state_dict())
    real, fake = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    mix = torch.rand(4, 1, 1, 1)
    got = gradient_penalty(disc_f, real, fake, 2, 0.4, mix)
    want = gradient_penalty(disc_e, real, fake, 2, 0.4, mix)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got_grads = torch.autograd.grad(got, list(disc_f.parameters()), materialize_grads=True)
    want_grads = torch.autograd.grad(want, list(disc_e.parameters()), materialize_grads=True)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_progan_training_steps_match_eager():
    fast, eager = small_progan("cpu"), small_progan("reference")
    for f, e in zip(fast, eager):
        e.load_state_dict(f.state_dict())
    opts_fast, opts_eager = progan_optimizers(*fast), progan_optimizers(*eager)
    for step in range(3):
        real = torch.randn(4, 3, 8, 8)
        z, mix = torch.randn(4, 8), torch.rand(4, 1, 1, 1)
        got = progan_step(*fast, *opts_fast, real, 1, 0.5, z, mix)
        want = progan_step(*eager, *opts_eager, real, 1, 0.5, z, mix)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    for f, e in zip(fast, eager):
        for (name, a), b in zip(f.state_dict().items(), e.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
