import math

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.nn import EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear
from helpers import CPU_BACKENDS, GPU_BACKENDS, randn

IMPLS = ["reference"] + CPU_BACKENDS
ACT = {"linear": lambda v: v, "relu": F.relu, "lrelu": lambda v: F.leaky_relu(v, 0.2)}


def eager(layer, x):
    """The layer as plain eager code with a scaled copy of the weight (SPEC 3, written out)."""
    w = layer.weight * layer.w_mul
    b = None if layer.bias is None else layer.bias * layer.bias_mul
    if isinstance(layer, EqualizedLinear):
        z = F.linear(x, w, b)
    elif isinstance(layer, EqualizedConv2d):
        z = F.conv2d(x, w, b, layer.stride, layer.padding)
    else:
        z = F.conv_transpose2d(x, w, b, layer.stride, layer.padding, layer.output_padding)
    y = ACT[layer.activation](z) * layer.act_gain
    return y if layer.clamp is None else y.clamp(-layer.clamp, layer.clamp)


def tolerance(want, dtype):
    rtol = 1e-5 if dtype == torch.float32 else 1e-10
    return dict(rtol=rtol, atol=rtol * want.abs().max().item())


def check_layer(layer, x):
    """Output and gradients (input, weight, bias) of the layer against `eager`."""
    x = x.requires_grad_()
    params = [p for p in layer.parameters()]
    got, want = layer(x), eager(layer, x)
    torch.testing.assert_close(got, want, **tolerance(want, x.dtype))
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, [x, *params], g), torch.autograd.grad(want, [x, *params], g)):
        torch.testing.assert_close(a, b, **tolerance(b, x.dtype))


LAYERS = {
    "linear": lambda impl, dtype: (
        EqualizedLinear(13, 7, activation="lrelu", lr_mul=0.01, bias_init=0.3, impl=impl), randn((5, 13), dtype=dtype)),
    "linear_3d_stylegan": lambda impl, dtype: (
        EqualizedLinear(6, 5, activation="lrelu", act_gain=math.sqrt(2), clamp=0.9, impl=impl),
        randn((2, 3, 6), dtype=dtype)),
    "conv": lambda impl, dtype: (
        EqualizedConv2d(5, 6, 3, padding=1, activation="lrelu", impl=impl), randn((2, 5, 6, 7), dtype=dtype)),
    "conv_channels_last": lambda impl, dtype: (
        EqualizedConv2d(5, 6, 3, padding=1, activation="lrelu", impl=impl),
        randn((2, 5, 6, 7), "channels_last", dtype)),
    "conv_torgb": lambda impl, dtype: (
        EqualizedConv2d(6, 3, 1, gain=1.0, bias=False, impl=impl), randn((2, 6, 5, 4), dtype=dtype)),
    "conv_strided_relu": lambda impl, dtype: (
        EqualizedConv2d(4, 3, 4, stride=2, padding=1, activation="relu", bias_mul=2.0, bias_init=0.1, impl=impl),
        randn((2, 4, 8, 6), dtype=dtype)),
    "conv_transpose": lambda impl, dtype: (
        EqualizedConvTranspose2d(6, 4, 4, stride=2, padding=1, activation="lrelu", impl=impl),
        randn((2, 6, 3, 5), dtype=dtype)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("impl", IMPLS)
def test_layer_matches_eager_scaled_weight(impl, layer, dtype):
    module, x = LAYERS[layer](impl, dtype)
    with torch.no_grad():
        if module.bias is not None:
            module.bias.add_(0.1 * torch.randn_like(module.bias))  # fresh values, not the init constant
    check_layer(module.to(dtype), x)


def test_init_and_scales():
    layer = EqualizedConv2d(64, 32, 3, lr_mul=0.1, bias_init=0.5)
    assert layer.w_mul == pytest.approx(math.sqrt(2) / math.sqrt(64 * 9) * 0.1)
    assert layer.weight.std().item() == pytest.approx(10.0, rel=0.05)  # N(0, 1) / lr_mul
    assert layer.bias_mul == 0.1 and torch.all(layer.bias == 0.5)       # StyleGAN2: bias_mul = lr_mul
    first = EqualizedLinear(512, 8192, gain=math.sqrt(2) / 4)           # ProGAN G's first dense layer
    assert first.w_mul == pytest.approx(math.sqrt(2) / 4 / math.sqrt(512))
    up = EqualizedConvTranspose2d(8, 4, 4)
    assert tuple(up.weight.shape) == (8, 4, 4, 4) and up.w_mul == pytest.approx(math.sqrt(2) / math.sqrt(8 * 16))
    assert "w_mul" in repr(layer)


def test_no_scaled_weight_copy():
    """The weight the conv sees is the stored parameter itself."""
    layer = EqualizedConv2d(3, 4, 3, impl="cpu")
    seen = []
    orig = F.conv2d

    def spy(x, w, *args):
        seen.append(w)
        return orig(x, w, *args)

    F.conv2d = spy
    try:
        layer(randn((1, 3, 5, 5)))
    finally:
        F.conv2d = orig
    assert seen and seen[0] is layer.weight


class Discriminator(torch.nn.Module):
    """A small ProGAN-style discriminator of equalized layers: from-RGB, a 3x3 conv, pooling, dense."""

    def __init__(self, impl):
        super().__init__()
        self.from_rgb = EqualizedConv2d(3, 8, 1, activation="lrelu", impl=impl)
        self.conv = EqualizedConv2d(8, 8, 3, padding=1, activation="lrelu", impl=impl)
        self.dense = EqualizedLinear(8 * 2 * 2, 8, activation="lrelu", impl=impl)
        self.out = EqualizedLinear(8, 1, gain=1.0, impl=impl)  # the last layer: gain 1

    def forward(self, x, layer=lambda m, x: m(x)):
        x = layer(self.conv, layer(self.from_rgb, x))
        x = F.avg_pool2d(x, 2).flatten(1)
        return layer(self.out, layer(self.dense, x))


def gradient_penalty_step(d, real, fake, eps, layer=lambda m, x: m(x)):
    """WGAN-GP (lambda 10): the penalty and its gradients with respect to D's parameters."""
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
    (g,) = torch.autograd.grad(d(x_hat, layer).sum(), x_hat, create_graph=True)
    penalty = 10 * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
    # The input gradient of a piecewise-linear network does not depend on its biases: their
    # gradients are zero, or None where autograd sees them unused.
    params = list(d.parameters())
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    return penalty, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", IMPLS)
def test_wgan_gp_matches_eager(impl, dtype, device="cpu"):
    d = Discriminator(impl).to(device, dtype)
    with torch.no_grad():
        for p in d.parameters():
            if p.dim() == 1:
                p.copy_(0.2 * torch.randn_like(p))
    real, fake = randn((4, 3, 4, 4), dtype=dtype, device=device), randn((4, 3, 4, 4), dtype=dtype, device=device)
    eps = torch.rand(4, 1, 1, 1, dtype=dtype, device=device)
    got, got_grads = gradient_penalty_step(d, real, fake, eps)
    want, want_grads = gradient_penalty_step(d, real, fake, eps, layer=eager)
    assert got.item() == pytest.approx(want.item(), rel=1e-5 if dtype == torch.float32 else 1e-10)
    for p, a, b in zip(d.parameters(), got_grads, want_grads):
        assert p.dim() == 1 or a.abs().max() > 0  # the weights get real gradients
        torch.testing.assert_close(a, b, **tolerance(b, dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_wgan_gp_matches_eager_gpu(impl):
    test_wgan_gp_matches_eager(impl, torch.float64, "cuda")


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    d = Discriminator(impl)
    compiled = torch.compile(d, fullgraph=True)
    x = randn((2, 3, 4, 4), "channels_last").requires_grad_()
    out, want = compiled(x), d(x, eager)
    torch.testing.assert_close(out, want)
    params = [x, *d.parameters()]
    for a, b in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(want.sum(), params)):
        torch.testing.assert_close(a, b, **tolerance(b, torch.float32))


@pytest.mark.parametrize("make, error, words", [
    (lambda: EqualizedLinear(3, 4, activation="gelu"), ValueError, "act must be one of"),
    (lambda: EqualizedConv2d(3, 4, 3, lr_mul=0.0), ValueError, "lr_mul must be positive"),
    (lambda: EqualizedConv2d(3, 4, 3, act_gain=-1.0), ValueError, "gain must be positive"),
    (lambda: EqualizedConvTranspose2d(3, 4, 3, clamp=-1.0), ValueError, "clamp"),
])
def test_bad_arguments(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        fastgan.ops.bias_act(torch.ones(2, 3, dtype=torch.int64), None)
