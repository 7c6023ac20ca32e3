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


@pytest.mark.parametrize("fused", [True, False])
def test_dcgan_generator_step_leaves_the_discriminators_gradients(fused):
    """The generator's step differentiates its own parameters only: D's gradients after a step are
    those of D's loss (the generator's loss would add to them, only to be zeroed by D's next step)."""
    gen, disc = small_dcgan(fused)
    real, z = torch.rand(6, 3, 64, 64) * 2 - 1, torch.randn(6, 8, 1, 1)
    g0, d0 = copy.deepcopy(gen), copy.deepcopy(disc)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    fake = g0(z).detach()
    loss_d = bce(d0(real), torch.ones(6)) + bce(d0(fake), torch.zeros(6))
    want = torch.autograd.grad(loss_d, list(d0.parameters()))
    dcgan_step(gen, disc, *dcgan_optimizers(gen, disc), real, z)
    for (name, p), w in zip(disc.named_parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6, msg=name)
    assert all(p.grad is not None for p in gen.parameters())


def test_progan_generator_step_leaves_the_discriminators_gradients():
    gen, disc = small_progan("cpu")
    real, z, mix = torch.randn(4, 3, 8, 8), torch.randn(4, 8), torch.rand(4, 1, 1, 1)
    g0, d0 = copy.deepcopy(gen), copy.deepcopy(disc)
    fake = g0(z, 1, 0.5).detach()
    d_real = d0(real, 1, 0.5)
    loss_d = (d0(fake, 1, 0.5).mean() - d_real.mean() + 10.0 * gradient_penalty(d0, real, fake, 1, 0.5, mix)
              + 1e-3 * d_real.square().mean())
    want = torch.autograd.grad(loss_d, list(d0.parameters()), allow_unused=True)  # other levels' from_rgb
    progan_step(gen, disc, *progan_optimizers(gen, disc), real, 1, 0.5, z, mix)
    for (name, p), w in zip(disc.named_parameters(), want):
        if w is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6, msg=name)


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


# --- Against an independent implementation (tests/progan_reference.py) ---------------------------------
# The tests above compare fastgan's models with themselves (impl="reference", or unfused), so the model code
# both sides share (the weight scale folded into the bias and eps, lr_mul, the fused fade-ins, the layers'
# order and sizes) is never checked. These compare each model, on every CPU backend, with the papers'
# networks written in plain PyTorch and run in float64 from the same parameters and inputs.

# Error allowed, relative to the largest magnitude of the compared tensor (gradient entries that cancel to ~0
# are judged on the tensor's scale): float32 rounds each layer's sums (<= 512 terms) at ~6e-8 relative, over
# ~10 layers, and parameter gradients sum up to 16384 terms: ~1e-6 in all; float64's unit roundoff is 2^-29
# times float32's. About 20x headroom over those estimates.
MODEL_TOL = {torch.float64: 5e-14, torch.float32: 2e-5}
# A pre-activation within this distance of the (leaky) ReLU kink, relative to its layer's RMS, could take the
# other branch under the fast model's rounding: its derivative would differ by 0.8 (lrelu) or 1 (relu). The
# independent ProGANs below, run in float32, moved their pre-activations by at most 2.6e-6 of the RMS, 4x
# less than the float32 margin. Inputs are drawn again until every pre-activation is farther than that.
KINK_MARGIN = {torch.float64: 1e-12, torch.float32: 1e-5}
DTYPES = [torch.float64, torch.float32]


def assert_matches(got, want, dtype, what, scale=None):
    """got within MODEL_TOL of want, relative to `scale` (default: want's largest magnitude)."""
    assert got is not None and not got.isnan().any(), f"{what}: missing, or NaN (an element never written)"
    tol = MODEL_TOL[dtype]
    scale = want.abs().max().item() if scale is None else scale
    torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def assert_grad_matches(got, want, dtype, what, scale):
    """A gradient that autograd left unconnected (None) on one side is zero: the layers of other levels, or
    a bias that the penalty reaches only through a leaky ReLU's mask (zero curvature)."""
    if want is None:
        assert got is None or not got.any(), what
    else:
        assert_matches(torch.zeros_like(want) if got is None else got, want, dtype, what, scale)


def largest(tensors):
    """The scale of a set of gradients: entries that theory makes 0 (a bias the penalty reaches only through
    the minibatch-stddev map, say) come out as rounding noise of the set's larger terms."""
    return max(t.abs().max().item() for t in tensors if t is not None)


def draw_off_kink(draw, paper, dtype, tries=50):
    """x = draw() (in dtype), its float64 copy x64 (a leaf) and paper(x64, kinks), for the first x whose
    pre-activations in the independent model all keep KINK_MARGIN from the kink."""
    for _ in range(tries):
        x = draw()
        x64 = x.double().requires_grad_()
        kinks = []
        want = paper(x64, kinks)
        if all((z.abs().min() / z.square().mean().sqrt()).item() > KINK_MARGIN[dtype] for z in kinks):
            return x.requires_grad_(), x64, want
    raise AssertionError(f"no input off the kinks in {tries} draws")


def check_against_independent(model, params, to_paper_names, fast, paper, draw, dtype, what):
    """fast(x) (fastgan's model) against paper(x64, kinks) (the independent model, float64, parameters
    `params`): the output, and the gradients of a random projection of it with respect to the input and
    every parameter. Returns (x, x64) for further checks."""
    x, x64, want = draw_off_kink(draw, paper, dtype)
    got = fast(x)
    assert got.shape == want.shape, what
    assert_matches(got, want, dtype, what)
    proj = torch.randn_like(want)
    names = list(to_paper_names(dict(model.named_parameters())))  # not the running statistics
    want_grads = torch.autograd.grad((want * proj).sum(), [x64] + [params[n] for n in names], allow_unused=True)
    got_grads = torch.autograd.grad((got * proj.to(dtype)).sum(), [x] + list(model.parameters()), allow_unused=True)
    assert_matches(got_grads[0], want_grads[0], dtype, f"{what}: input gradient")
    got_named = to_paper_names(dict(zip([n for n, _ in model.named_parameters()], got_grads[1:])))
    scale = largest(want_grads[1:])
    for n, w in zip(names, want_grads[1:]):
        assert_grad_matches(got_named[n], w, dtype, f"{what}: gradient of {n}", scale)
    return x, x64


def random_biases(model):
    """fastgan initializes biases to 0, which would hide any error in how the models scale or fold them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)


def set_lr_mul(model, lr_mul):
    """Every equalized layer as if built with lr_mul (the models build them with 1): w_mul = gain / sqrt(fan_in)
    * lr_mul, bias_mul = lr_mul (fastgan/nn/equalized.py); the parameters are loaded, so their init is moot."""
    from fastgan.nn.equalized import _Equalized
    for m in model.modules():
        if isinstance(m, _Equalized):
            m.w_mul, m.bias_mul = m.w_mul * lr_mul, lr_mul


def paper_params(state, to_paper_names):
    return {k: v.detach().double().requires_grad_() for k, v in to_paper_names(state).items()}


# fastgan's feature maps 8, 8, 4 at 4x4, 8x8, 16x16 (the independent networks take theirs from the parameters).
PROGAN_KW = dict(fmap_base=32, fmap_max=8)
# (level, alpha): each resolution once stable, and both fade-ins at an alpha in (0, 1). The Triton interpreter
# takes ~30 s for the 16x16 stages (a program per few pixels): triton runs up to 8x8 (its first fade-in
# included; the fade-in kernels do not depend on the level), and with lr_mul != 1 only (the general fold).
PROGAN_STAGES = [(0, 1.0), (1, 0.3), (1, 1.0), (2, 0.6), (2, 1.0)]
PROGAN_CASES = [("reference", 1.0), ("reference", 0.25), ("cpu", 1.0), ("cpu", 0.25), ("triton", 0.25)]


def progan_model(model, lr_mul, dtype):
    """`model` with random biases and every equalized layer at lr_mul, in dtype."""
    random_biases(model)
    set_lr_mul(model, lr_mul)
    return model.to(dtype)


def progan_stages(impl):
    return PROGAN_STAGES[:3] if impl == "triton" else PROGAN_STAGES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl, lr_mul", PROGAN_CASES)
def test_progan_generator_matches_paper(impl, lr_mul, dtype):
    from progan_reference import progan_generator, progan_params
    gen = progan_model(ProGANGenerator(16, 8, 3, **PROGAN_KW, impl=impl), lr_mul, dtype)
    names = lambda state: progan_params(state, "G", gen.levels)  # noqa: E731
    params = paper_params(gen.state_dict(), names)
    for level, alpha in progan_stages(impl):
        check_against_independent(
            gen, params, names, lambda z: gen(z, level, alpha),
            lambda z, kinks: progan_generator(params, z, level, alpha, lr_mul, kinks),
            lambda: torch.randn(2, 8, dtype=dtype), dtype, f"{impl} level {level} alpha {alpha}")


def penalty(scores, x):
    """WGAN-GP's (||d sum(D(x)) / dx|| - 1)^2, averaged: second derivatives of D."""
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl, lr_mul", PROGAN_CASES)
def test_progan_discriminator_matches_paper(impl, lr_mul, dtype):
    """Scores and first derivatives, and the gradient penalty's parameter gradients (second derivatives)."""
    from progan_reference import progan_discriminator, progan_params
    disc = progan_model(ProGANDiscriminator(16, 3, **PROGAN_KW, impl=impl), lr_mul, dtype)
    names = lambda state: progan_params(state, "D", disc.levels)  # noqa: E731
    params = paper_params(disc.state_dict(), names)
    for level, alpha in progan_stages(impl):
        what = f"{impl} level {level} alpha {alpha}"
        paper = lambda img, kinks: progan_discriminator(params, img, level, alpha, lr_mul, kinks)  # noqa: E731
        size = 4 * 2 ** level
        img, img64 = check_against_independent(  # batch 8: two minibatch-stddev groups
            disc, params, names, lambda img: disc(img, level, alpha), paper,
            lambda: torch.randn(8, 3, size, size, dtype=dtype), dtype, what)
        if impl == "triton" and alpha == 1:  # the interpreter's double backward is slow: the fade-in stage only
            continue
        got = penalty(disc(img, level, alpha), img)
        want = penalty(paper(img64, None), img64)
        assert_matches(got, want, dtype, f"{what}: penalty")
        want_grads = torch.autograd.grad(want, list(params.values()), allow_unused=True)
        got_grads = names(dict(zip([n for n, _ in disc.named_parameters()],
                                   torch.autograd.grad(got, list(disc.parameters()), allow_unused=True))))
        scale = largest(want_grads)
        for n, w in zip(params, want_grads):
            assert_grad_matches(got_grads[n], w, dtype, f"{what}: penalty gradient of {n}", scale)


def test_progan_channels_follow_the_paper():
    """nf(log2(res) - 1) = min(fmap_base / 2^(log2(res) - 1), fmap_max): 512, 512, 512, 512, 256 feature maps
    from 4x4 to 64x64 at the defaults (Karras et al. 2018, table 2)."""
    from fastgan.models.progan import channels
    from progan_reference import progan_channels
    got = [channels(level, 8192, 512) for level in range(5)]
    want = [progan_channels(4 * 2 ** level, 8192, 512) for level in range(5)]
    assert want == [512, 512, 512, 512, 256]
    assert got == want


# DCGAN: fused=False is the model as plain torch.nn modules, which checks the architecture itself. Under the
# Triton interpreter one case takes ~2 minutes (64x64 convolutions): triton runs the float32 one with minibatch
# discrimination only.
DCGAN_CASES = [(fused, impl, dtype, minibatch) for fused, impl in ((False, "reference"), (True, "cpu"))
               for dtype in DTYPES for minibatch in (0, 6)] + [(True, "triton", torch.float32, 6)]


@pytest.mark.parametrize("fused, impl, dtype, minibatch", DCGAN_CASES)
def test_dcgan_matches_paper(fused, impl, dtype, minibatch):
    """Both networks in training mode: outputs, gradients, and the running statistics they update."""
    from progan_reference import dcgan_discriminator, dcgan_generator, dcgan_params
    gen = DCGANGenerator(nz=8, ngf=4, nc=3, fused=fused, impl=impl)
    disc = DCGANDiscriminator(ndf=4, nc=3, minibatch_features=minibatch, fused=fused, impl=impl)
    for model in (gen, disc):
        random_biases(model)  # BatchNorm's beta (and minibatch discrimination's bias, the head's)
        with torch.no_grad():
            for name, b in model.named_buffers():  # running statistics that the update must keep a share of
                if name.endswith("running_mean"):
                    b.normal_()
                elif name.endswith("running_var"):
                    b.uniform_(0.5, 2.0)
    gen, disc = gen.to(dtype), disc.to(dtype)
    for model, kind, paper, draw in (
            (gen, "G", lambda p, z, kinks, bn: dcgan_generator(p, z, kinks, bn),
             lambda: torch.randn(4, 8, dtype=dtype)),
            (disc, "D", lambda p, x, kinks, bn: dcgan_discriminator(p, x, minibatch > 0, kinks, bn),
             lambda: torch.rand(4, 3, 64, 64, dtype=dtype) * 2 - 1)):
        names = lambda state: dcgan_params(state, kind)  # noqa: E731
        params = paper_params(model.state_dict(), names)
        bn_state = {}  # the independent model's running statistics after the (last) draw, the one used
        check_against_independent(model, params, names, model,
                                  lambda x, kinks: paper(params, x, kinks, bn_state), draw, dtype, f"{kind}")
        got = names(model.state_dict())
        for n, want in bn_state.items():
            assert_matches(got[n], want, dtype, f"{kind}: {n}")
