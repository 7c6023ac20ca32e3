import math

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.ops.fade_in_from_rgb import (_fade_in_from_rgb, _fade_in_from_rgb_backward, _scales,
                                          fade_in_from_rgb_reference)
from fastgan.ops._dispatch import kernels
from helpers import (CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, LAYOUTS, assert_close, assert_sum_close,
                     check_forward_backward, gemm_tolerance, KINK_MARGIN, TOLERANCES, gradchecks, randn)

F64 = torch.float64
# (N, C_img, C_out, H, W) at the low resolution: RGB, odd sizes, vector tails, grey and RGBA images.
SHAPES = [(2, 3, 5, 3, 4), (1, 3, 19, 5, 3), (2, 1, 4, 2, 5), (1, 4, 7, 3, 3)]


def make(shape, layout="contiguous", dtype=torch.float32, device="cpu"):
    n, ci, co, h, w = shape
    return [randn((n, ci, 2 * h, 2 * w), layout, dtype, device), randn((n, co, h, w), layout, dtype, device),
            randn((co, ci, 1, 1), dtype=dtype, device=device), randn((co,), dtype=dtype, device=device)]


def off_kink(inputs, gain=math.sqrt(2), lr_mul=1.0, margin=KINK_MARGIN):
    """make's inputs with no exact pre-activation z = w_mul * W avg_pool(img) + b_mul * bias within
    `margin` of LeakyReLU's kink (helpers' note on the kink): the kernels decide the side from their
    float32 z, a few roundings (~1e-7 of its terms) off the exact one, so a float64 reference can take
    the other at a handful of the millions of elements of the GPU shapes, and that element's
    gradients differ by 0.8 of the gradient. Every 2x2 block of img whose pooled pixel puts some
    output channel within `margin` is redrawn until none is left (~1e-3 of the blocks per channel)."""
    img, x_high, weight, bias = inputs
    img = img.clone()
    w_mul, b_mul = _scales(img.shape[1], gain, lr_mul)
    for _ in range(30):
        z = F.conv2d(F.avg_pool2d(img.double(), 2), weight.double() * w_mul, bias.double() * b_mul)
        near = (z.abs() < margin).any(1, keepdim=True)  # [N, 1, H, W] low-resolution pixels
        if not near.any():
            return [img, x_high, weight, bias]
        block = near.repeat_interleave(2, 2).repeat_interleave(2, 3).expand(img.shape)
        img[block] = torch.randn(int(block.sum()), dtype=img.dtype, device=img.device)
    raise AssertionError("could not move img off the activation's kink")


def check(inputs, impl, dtype, alpha=0.3, gain=math.sqrt(2), lr_mul=1.0, tol=None):
    inputs = off_kink(inputs, gain, lr_mul)

    def op(img, x_high, weight, bias, impl):
        return fastgan.ops.fade_in_from_rgb(img, x_high, weight, bias, alpha, gain, lr_mul, impl=impl)

    def ref(img, x_high, weight, bias):
        return fade_in_from_rgb_reference(img, x_high, weight, bias, alpha, gain, lr_mul)

    return check_forward_backward(op, ref, inputs, impl, dtype, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity(impl, shape, layout, dtype):
    check(make(shape, layout, dtype), impl, dtype)


@pytest.mark.parametrize("alpha, gain, lr_mul", [(0.0, 1.0, 1.0), (1.0, math.sqrt(2), 0.01), (0.7, 2.0, 3.0)])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_scales(impl, alpha, gain, lr_mul):
    check(make((2, 3, 6, 2, 3)), impl, torch.float32, alpha, gain, lr_mul)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 3, 64, 32, 32), (2, 3, 128, 16, 16), (1, 3, 37, 9, 35), (1, 5, 70, 4, 20)])
def test_parity_cpu_large(shape, layout, dtype):
    """Vector loops and tails of both layouts, more than 4 colours, several blocks of weight partials.
    The weight and bias gradients sum thousands of terms: compared with the float64 reference, to
    the dtype's tolerance relative to their largest entry (float32 sums cancel to small entries)."""
    inputs = off_kink(make(shape, layout, dtype))
    exact = [t.detach().double().requires_grad_() for t in inputs]
    mine = [t.detach().requires_grad_() for t in inputs]
    want = fade_in_from_rgb_reference(*exact, 0.3)
    got = fastgan.ops.fade_in_from_rgb(*mine, 0.3, impl="cpu")
    assert_close(got, want, dtype)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, exact, grad)
    got_grads = torch.autograd.grad(got, mine, grad.to(dtype))
    for g, w in zip(got_grads[:2], want_grads[:2]):
        assert_close(g, w, dtype)
    tol = TOLERANCES[dtype]
    for g, w in zip(got_grads[2:], want_grads[2:]):
        torch.testing.assert_close(g.double(), w, rtol=tol["rtol"], atol=tol["atol"] * w.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, layout, dtype):
    """As test_parity_cpu_large: the weight and bias gradients sum N*H*W (up to 131072) terms, so
    theirs is the tolerance of such sums (relative to their largest entry); the rest elementwise."""
    sums = gemm_tolerance(dtype)

    def tol(want):
        return sums(want) if want.dim() == 1 or want.shape[-2:] == (1, 1) else TOLERANCES[dtype]

    for shape in SHAPES + [(32, 3, 64, 64, 64), (32, 3, 128, 32, 32)]:
        check(make(shape, layout, dtype, "cuda"), impl, dtype, tol=tol)


@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_gradcheck(impl):
    inputs = tuple(t.requires_grad_() for t in make((2, 3, 4, 2, 3), dtype=F64))
    gradchecks(lambda *ts: fastgan.ops.fade_in_from_rgb(*ts, 0.3, impl=impl), inputs, impl)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_custom_op_gradcheck(impl):
    """The traced path (the custom ops themselves), to the second order."""
    img, x_high, weight, bias = (t.requires_grad_() for t in make((1, 3, 4, 2, 3), dtype=F64))
    scalars = (0.3, 0.8, 1.0, 0.2, impl)
    gradchecks(lambda *ts: _fade_in_from_rgb.op(*ts, *scalars), (img, x_high, weight, bias), impl)
    grad = randn(x_high.shape, dtype=F64).requires_grad_()
    gradchecks(lambda *ts: _fade_in_from_rgb_backward.op(*ts, *scalars), (grad, img, weight, bias), impl)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl, layout):
    img, x_high, weight, bias = (t.requires_grad_() for t in make((2, 3, 4, 2, 3), layout))
    grad = randn(x_high.shape, layout).requires_grad_()
    scalars = (0.3, 0.8, 1.0, 0.2, impl)
    torch.library.opcheck(torch.ops.fastgan.fade_in_from_rgb.default, (img, x_high, weight, bias, *scalars))
    torch.library.opcheck(torch.ops.fastgan.fade_in_from_rgb_backward.default, (grad, img, weight, bias, *scalars))


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    layer = fastgan.nn.FadeInFromRGB(3, 4, impl=impl)
    model = torch.compile(lambda img, x: layer(img, x, 0.4).square().sum(), fullgraph=True)
    img, x_high = randn((2, 3, 4, 6)).requires_grad_(), randn((2, 4, 2, 3), "channels_last").requires_grad_()
    got = model(img, x_high)
    want = fade_in_from_rgb_reference(img, x_high, layer.weight, layer.bias, 0.4).square().sum()
    torch.testing.assert_close(got, want)
    params = (img, x_high, layer.weight, layer.bias)
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(a, b)


class TinyDiscriminator(torch.nn.Module):
    """The last stages of a ProGAN discriminator while 8x8 fades in: from-RGB at 8x8, a conv, 2x2
    pooling, the fade-in blend from the pooled image, minibatch stddev, a 3x3 conv and a dense head."""

    def __init__(self, impl, c=6):
        super().__init__()
        self.impl = impl
        self.rgb_high = torch.nn.Conv2d(3, c, 1)
        self.conv_high = torch.nn.Conv2d(c, c, 3, padding=1)
        self.fade = fastgan.nn.FadeInFromRGB(3, c, impl=impl)
        with torch.no_grad():
            self.fade.bias.normal_()
        self.conv = torch.nn.Conv2d(c + 1, c, 3, padding=1)
        self.head = torch.nn.Linear(c * 16, 1)

    def forward(self, img, alpha):
        x = F.leaky_relu(self.conv_high(F.leaky_relu(self.rgb_high(img), 0.2)), 0.2)
        x = self.fade(img, F.avg_pool2d(x, 2), alpha)
        x = fastgan.ops.minibatch_stddev(x, 4, impl=self.impl)
        x = F.leaky_relu(self.conv(x), 0.2)
        return self.head(x.flatten(1))


def gradient_penalty_grads(disc, real, fake, alpha):
    """WGAN-GP: the gradients of the penalty (||dD/dx|| - 1)^2 with respect to D's parameters."""
    eps = torch.rand(real.shape[0], 1, 1, 1)
    mix = (eps * real + (1 - eps) * fake).requires_grad_()
    (g,) = torch.autograd.grad(disc(mix, alpha).sum(), mix, create_graph=True)
    penalty = 10.0 * (g.flatten(1).norm(dim=1) - 1).square().mean()
    # The head's bias does not move the gradient: its penalty gradient is None.
    return torch.autograd.grad(penalty, list(disc.parameters()), allow_unused=True)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_gradient_penalty_matches_eager(impl):
    real, fake = randn((8, 3, 8, 8)), randn((8, 3, 8, 8))
    fused = TinyDiscriminator(impl)
    eager = TinyDiscriminator("reference")
    eager.load_state_dict(fused.state_dict())
    state = torch.random.get_rng_state()
    want = gradient_penalty_grads(eager, real, fake, 0.6)
    torch.random.set_rng_state(state)
    got = gradient_penalty_grads(fused, real, fake, 0.6)
    assert sum(g is not None for g in got) == len(got) - 1
    for a, b in zip(got, want):
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_module():
    m = fastgan.nn.FadeInFromRGB(3, 8, gain=1.0, lr_mul=0.5, impl="cpu")
    assert m.weight.shape == (8, 3, 1, 1) and m.bias.shape == (8,) and not m.bias.any()
    assert m.weight.std().item() > 1.0  # N(0, 1) / lr_mul
    img, x_high = randn((2, 3, 8, 6)), randn((2, 8, 4, 3))
    assert_close(m(img, x_high, 0.25), fade_in_from_rgb_reference(img, x_high, m.weight, m.bias, 0.25, 1.0, 0.5))
    assert "3, 8" in repr(m)


def test_weight_is_never_scaled_in_place():
    img, x_high, weight, bias = make((1, 3, 4, 2, 2))
    before = weight.clone()
    fastgan.ops.fade_in_from_rgb(img, x_high, weight, bias, 0.5, impl="cpu")
    assert torch.equal(weight, before)


@pytest.mark.parametrize("index, bad, error, words", [
    (0, torch.ones(2, 3, 4, 6, dtype=torch.int32), TypeError, "img must be a floating tensor"),
    (0, torch.ones(2, 3, 5, 6), ValueError, "x_high must be"),
    (1, torch.ones(2, 4, 2, 3, 1), ValueError, "x_high must be 4-D"),
    (1, torch.ones(2, 4, 2, 3, device="meta"), ValueError, "x_high is on meta but img is on cpu"),
    (2, torch.ones(4, 3, 1, 1, dtype=F64), TypeError, "weight has dtype"),  # eager's conv2d rejects it too
    (2, torch.ones(4, 3, 3, 3), ValueError, r"weight must have shape \(4, 3, 1, 1\)"),
    (3, torch.ones(5), ValueError, r"bias must have shape \(4,\)"),
    (3, [0.0] * 4, TypeError, "bias must be a torch.Tensor"),
])
def test_bad_input(index, bad, error, words):
    inputs = make((2, 3, 4, 2, 3))
    inputs[index] = bad
    with pytest.raises(error, match=words):
        fastgan.ops.fade_in_from_rgb(*inputs, 0.5, impl="cpu")


def test_bad_alpha():
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        fastgan.ops.fade_in_from_rgb(*make((2, 3, 4, 2, 3)), 1.5, impl="cpu")



@pytest.mark.parametrize("given", [(True, False, False, False), (True, True, False, False), (False, False, True, False),
                                   (False, False, False, True), (True, True, True, True)], ids=str)
def test_double_backward_skips_absent_gradients(given):
    """The backward's own backward with some incoming gradients None (what a gradient penalty through img
    sends: gg_img and gg_x_high): the same as with those gradients zero, which it no longer computes."""
    img, x_high = randn((2, 3, 6, 4), dtype=torch.float64), randn((2, 5, 3, 2), dtype=torch.float64)
    weight, bias = randn((5, 3, 1, 1), dtype=torch.float64), randn((5,), dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (img, x_high, weight, bias)]
    out = fastgan.ops.fade_in_from_rgb(*inputs, 0.3, impl="cpu")
    grad = randn(out.shape, dtype=torch.float64).requires_grad_()
    firsts = torch.autograd.grad(out, inputs, grad, create_graph=True)
    ggs = [randn(t.shape, dtype=torch.float64) for t in firsts]
    wrt = [grad, img, weight, bias]
    picked = [(f, g) for f, g, keep in zip(firsts, ggs, given) if keep]
    got = torch.autograd.grad([f for f, _ in picked], wrt, [g for _, g in picked], retain_graph=True,
                              allow_unused=True, materialize_grads=True)
    zeros = [g if keep else torch.zeros_like(g) for g, keep in zip(ggs, given)]
    want = torch.autograd.grad(firsts, wrt, zeros, allow_unused=True, materialize_grads=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---- the double backward's kernel (the gradient penalty's terms)

def lattice(shape, layout, dtype, device, denominator):
    """Random multiples of 1 / denominator in [-2, 2]: exact in every dtype, and so are the pooling and
    the 1x1 conv of such images and weights, in any order: the kernels' z is exact."""
    return randn(shape, layout, torch.float64, device).mul(denominator).round().clamp(
        -2 * denominator, 2 * denominator).div(denominator).to(dtype)


def penalty_inputs(shape, layout, dtype, device):
    """(grad, img, gg_img, weight, bias) whose z = W avg_pool_2x2(img) + bias (w_mul = b_mul = 1) is an
    odd multiple of 1/512, never 0: W p is a multiple of 1/256 (1/8 * 1/32), bias an odd multiple of
    1/512. No element is at the lrelu's kink, by design."""
    n, ci, co, h, w = shape
    img = lattice((n, ci, 2 * h, 2 * w), layout, dtype, device, 8)
    weight = lattice((co, ci, 1, 1), "contiguous", dtype, device, 8)
    bias = ((2 * torch.randint(-8, 8, (co,), device=device) + 1) / 512).to(dtype)
    return randn((n, co, h, w), layout, dtype, device), img, randn(img.shape, layout, dtype, device), weight, bias


def penalty_terms(grad, img, gg_img, weight, bias, alpha, slope):
    """(d_grad, d_weight, the sum of |terms| of d_weight) in float64 from the definition: the gradients of
    <grad_img, gg_img> with respect to grad and weight, grad_img the backward of
    (1 - alpha) * lrelu(W avg_pool_2x2(img) + bias)."""
    grad, img, weight = (t.detach().double().requires_grad_() for t in (grad, img, weight))
    z = F.conv2d(F.avg_pool2d(img, 2), weight, bias.double())
    (grad_img,) = torch.autograd.grad(F.leaky_relu(z, slope) * (1 - alpha), img, grad, create_graph=True)
    d_grad, d_weight = torch.autograd.grad((grad_img * gg_img.double()).sum(), (grad, weight))
    m_grad = torch.where(z > 0, 1.0, slope) * grad
    terms = torch.einsum("nohw,nihw->oi", m_grad.abs(), F.avg_pool2d(gg_img.double(), 2).abs()) * (1 - alpha)
    return d_grad, d_weight, terms.reshape(d_weight.shape).detach()


def check_penalty_kernel(impl, shape, layout, dtype, need, device="cpu", gg_format=None):
    grad, img, gg_img, weight, bias = penalty_inputs(shape, layout, dtype, device)
    if gg_format is not None:  # the same layout, other strides where a size is 1 (a grey image's channel)
        gg_img = gg_img.contiguous(memory_format=gg_format)
    alpha, slope = 0.3, 0.2
    want_grad, want_weight, terms = penalty_terms(grad, img, gg_img, weight, bias, alpha, slope)
    got_grad, got_weight = kernels(impl).fade_in_from_rgb_double_backward(grad, img, gg_img, weight, bias, alpha, 1.0,
                                                                         1.0, slope, *need)
    if need[0]:
        assert_close(got_grad, want_grad, dtype)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert got_grad.is_contiguous(memory_format=fmt), "d_grad must be in grad's layout"
    else:
        assert got_grad.numel() == 0
    if need[1]:
        assert got_weight.dtype == dtype
        assert_sum_close(got_weight, want_weight, terms, dtype)
    else:
        assert got_weight.numel() == 0


NEEDS = [(True, True), (True, False), (False, True)]


@pytest.mark.parametrize("need", NEEDS, ids=["both", "grad", "weight"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_penalty_kernel(impl, shape, layout, dtype, need):
    """The double backward's kernel (the terms of gg_img) against float64 autograd of the definition."""
    check_penalty_kernel(impl, shape, layout, dtype, need)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 3, 64, 32, 32), (1, 3, 37, 9, 35), (1, 5, 70, 4, 20)])
def test_penalty_kernel_cpu_large(shape, layout, dtype):
    """Vector loops and tails of both layouts, more than 4 colours, several blocks of weight partials."""
    check_penalty_kernel("cpu", shape, layout, dtype, (True, True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_penalty_kernel_gpu(impl, layout, dtype):
    for shape in SHAPES + [(32, 3, 64, 64, 64), (2, 3, 128, 16, 16)]:
        for need in NEEDS:
            check_penalty_kernel(impl, shape, layout, dtype, need, "cuda")


GREY = [(2, 1, 4, 3, 5), (1, 1, 3, 4, 4)]


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_penalty_kernel_grey_image_strides(impl):
    """Ci = 1: an NCHW img and a gg_img allocated channels-last hold their values in the same order,
    with other strides on the channel dimension only (a penalty's gradient often comes so)."""
    for shape in GREY:
        check_penalty_kernel(impl, shape, "contiguous", torch.float32, (True, True), gg_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_penalty_kernel_grey_image_strides_gpu(impl):
    for shape in GREY:
        check_penalty_kernel(impl, shape, "contiguous", torch.float32, (True, True), "cuda",
                             gg_format=torch.channels_last)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_penalty_kernel_empty(impl):
    grad, img, gg_img, weight, bias = penalty_inputs((0, 3, 4, 2, 3), "contiguous", torch.float32, "cpu")
    d_grad, d_weight = kernels(impl).fade_in_from_rgb_double_backward(grad, img, gg_img, weight, bias, 0.3, 1.0, 1.0,
                                                                     0.2, True, True)
    assert d_grad.shape == grad.shape
    assert torch.equal(d_weight, torch.zeros_like(weight))


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_penalty_kernel_bad_gg_img(impl):
    grad, img, gg_img, weight, bias = penalty_inputs((2, 3, 4, 2, 3), "contiguous", torch.float32, "cpu")
    with pytest.raises((RuntimeError, ValueError), match="gg_img"):
        kernels(impl).fade_in_from_rgb_double_backward(grad, img, gg_img[:, :, :-2], weight, bias, 0.3, 1.0, 1.0,
                                                       0.2, True, True)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_gradient_penalty_uses_the_kernel(impl, monkeypatch):
    """A gradient penalty through img (gg_img alone) runs the kernel, and no eager convolution; its
    gradients match float64 autograd of the reference (float64 inputs: no kink within rounding)."""
    img, x_high, weight, bias = (t.requires_grad_() for t in make((2, 3, 4, 2, 3), dtype=F64))
    out = fastgan.ops.fade_in_from_rgb(img, x_high, weight, bias, 0.3, impl=impl)
    (grad_img,) = torch.autograd.grad(out.square().sum(), img, create_graph=True)
    calls = []
    k = kernels(impl)
    original = k.fade_in_from_rgb_double_backward
    monkeypatch.setattr(k, "fade_in_from_rgb_double_backward", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(F, "conv2d", None)  # the eager formula would fail
    grads = torch.autograd.grad(grad_img.square().sum(), (img, x_high, weight, bias), allow_unused=True)
    assert calls == [1]
    monkeypatch.undo()
    want = torch.autograd.grad(
        torch.autograd.grad(fade_in_from_rgb_reference(img, x_high, weight, bias, 0.3).square().sum(), img,
                            create_graph=True)[0].square().sum(), (img, x_high, weight, bias), allow_unused=True)
    for g, w in zip(grads, want):
        if w is None or g is None:
            assert g is None or not g.any()
            continue
        torch.testing.assert_close(g, w, **TOLERANCES[F64])
