"""ProGAN (SPEC 7; Karras et al. 2018): networks that grow from 4x4 to a target resolution.

Both networks hold every resolution's layers from the start; `level` selects how far they run
(0 = 4x4, 1 = 8x8, ...) and `alpha` blends in the newest level while it fades in (SPEC 6).
Layers are fastgan's: equalized convolutions with the bias, leaky ReLU and pixel norm fused into
one pass after each generator conv; the generator's fade-in never materializes the up-sampled
low-resolution image; the discriminator's from-RGB fade-in fuses pooling, the 1x1 conv, leaky
ReLU and the blend; a minibatch-stddev layer precedes its last 3x3 conv. All twice
differentiable, for the WGAN-GP penalty of `progan_step`.

On a fastgan backend (impl not "reference") both networks run channels-last from their first
feature map on, their convolution weights included (no per-step conversion of a weight or of its
gradient): oneDNN's convolutions, which are most of a step, ran faster so here, and every fastgan
op takes both layouts. With impl="reference" they are plain NCHW PyTorch models.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..fusion import conv_weights_to
from ..nn import EqualizedConv2d, EqualizedLinear, MinibatchStdDev
from ..ops._autocast import lower
from ..ops.pixel_norm import default_eps
from .amp import autocast, backward_and_step, generator_inputs

SLOPE = 0.2


def _layout(x, impl):
    """x channels-last on a fastgan backend (see the module docstring), as it is otherwise."""
    return x if impl == "reference" else x.contiguous(memory_format=torch.channels_last)


def _channels_last_weights(model, impl):
    if impl != "reference":
        conv_weights_to(model, torch.channels_last)


def channels(level, fmap_base, fmap_max):
    """Feature maps at a level (resolution 4 * 2^level), ProGAN's nf(stage) = fmap_base / 2^stage capped at
    fmap_max, with stage = log2(resolution) - 1 = level + 1."""
    return min(fmap_base // 2 ** (level + 1), fmap_max)


class _ConvPixelNorm(nn.Module):
    """pixel_norm(lrelu(equalized_conv3x3(x) + bias)): the conv, then one fused pass."""

    def __init__(self, cin, cout, impl):
        super().__init__()
        self.conv = EqualizedConv2d(cin, cout, 3, padding=1, bias=True, impl=impl)
        self.impl = impl

    def forward(self, x):
        c = self.conv
        z = F.conv2d(x, c.weight, None, 1, 1)
        # lrelu(s z + b) = s lrelu(z + b / s) and pixel_norm(s v, eps) = pixel_norm(v, eps / s^2) for
        # s > 0: the weight scale s folds into the bias and eps, exactly, with no scaled weight.
        s = c.w_mul
        (bias,) = lower(z.device.type, c.bias * (c.bias_mul / s))  # with z under torch.autocast, as a conv's bias
        return ops.bias_act_pixel_norm(z, bias, SLOPE, 1.0,
                                       eps=default_eps(z.dtype) / s ** 2, impl=self.impl)


class ProGANGenerator(nn.Module):
    """z [N, latent] -> images [N, img_channels, 4 * 2^level, 4 * 2^level]."""

    def __init__(self, resolution=64, latent_dim=512, img_channels=3, fmap_base=8192, fmap_max=512, impl=None):
        super().__init__()
        self.levels = int(math.log2(resolution)) - 1
        if 4 * 2 ** (self.levels - 1) != resolution:
            raise ValueError(f"fastgan: resolution must be a power of two >= 4, got {resolution}")
        self.latent_dim, self.impl = latent_dim, impl
        nf = [channels(i, fmap_base, fmap_max) for i in range(self.levels)]
        self.dense = EqualizedLinear(latent_dim, nf[0] * 16, gain=math.sqrt(2) / 4, activation="lrelu", impl=impl)
        self.blocks = nn.ModuleList([nn.ModuleList([_ConvPixelNorm(nf[0], nf[0], impl)])])
        for i in range(1, self.levels):
            self.blocks.append(nn.ModuleList([_ConvPixelNorm(nf[i - 1], nf[i], impl),
                                              _ConvPixelNorm(nf[i], nf[i], impl)]))
        self.to_rgb = nn.ModuleList([EqualizedConv2d(nf[i], img_channels, 1, gain=1.0, impl=impl)
                                     for i in range(self.levels)])
        _channels_last_weights(self, impl)

    def forward(self, z, level=None, alpha=1.0):
        level = self.levels - 1 if level is None else level
        x = ops.pixel_norm(z, impl=self.impl)
        x = _layout(ops.pixel_norm(self.dense(x).view(z.shape[0], -1, 4, 4), impl=self.impl), self.impl)
        prev = None
        for i in range(level + 1):
            if i > 0:
                prev = x
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            for layer in self.blocks[i]:
                x = layer(x)
        rgb = self.to_rgb[level](x)
        if level > 0 and alpha < 1.0:
            rgb = ops.fade_in(self.to_rgb[level - 1](prev), rgb, alpha, impl=self.impl)
        return rgb


class ProGANDiscriminator(nn.Module):
    """images [N, img_channels, 4 * 2^level, ...] -> scores [N] (WGAN critic)."""

    def __init__(self, resolution=64, img_channels=3, fmap_base=8192, fmap_max=512, group_size=4, impl=None):
        super().__init__()
        self.levels = int(math.log2(resolution)) - 1
        self.impl = impl
        nf = [channels(i, fmap_base, fmap_max) for i in range(self.levels)]
        lrelu = dict(activation="lrelu", alpha=SLOPE, impl=impl)
        self.from_rgb = nn.ModuleList([EqualizedConv2d(img_channels, nf[i], 1, **lrelu) for i in range(self.levels)])
        self.blocks = nn.ModuleList([None])  # level 0 is the final block below
        for i in range(1, self.levels):
            self.blocks.append(nn.Sequential(EqualizedConv2d(nf[i], nf[i], 3, padding=1, **lrelu),
                                             EqualizedConv2d(nf[i], nf[i - 1], 3, padding=1, **lrelu)))
        self.stddev = MinibatchStdDev(group_size, impl=impl)
        self.conv = EqualizedConv2d(nf[0] + 1, nf[0], 3, padding=1, **lrelu)
        self.dense = EqualizedLinear(nf[0] * 16, nf[0], **lrelu)
        self.out = EqualizedLinear(nf[0], 1, gain=1.0, impl=impl)
        _channels_last_weights(self, impl)

    def forward(self, img, level=None, alpha=1.0):
        level = self.levels - 1 if level is None else level
        img = _layout(img, self.impl)
        x = self.from_rgb[level](img)
        for i in range(level, 0, -1):
            x = F.avg_pool2d(self.blocks[i](x), 2)
            if i == level and alpha < 1.0:  # (1 - alpha) * from_rgb(avg_pool(img)) + alpha * x, fused
                low = self.from_rgb[level - 1]
                x = ops.fade_in_from_rgb(img, x, low.weight, low.bias, alpha, gain=math.sqrt(2),
                                         lr_mul=low.bias_mul, impl=self.impl)
        x = self.conv(self.stddev(x))
        return self.out(self.dense(x.flatten(1))).flatten()


def progan_optimizers(generator, discriminator, capturable=False):
    """SPEC 7: Adam, lr 1e-3, betas (0, 0.99) (capturable: for CUDA graphs)."""
    return (torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.0, 0.99), capturable=capturable),
            torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.0, 0.99), capturable=capturable))


def gradient_penalty(discriminator, real, fake, level, alpha, weight=None, scaler=None):
    """WGAN-GP: mean over the batch of (||d D(x_hat) / d x_hat|| - 1)^2 at random interpolates. With
    a GradScaler the inner gradient is taken of the scaled output and unscaled (torch.amp's recipe for
    gradient penalties; get_scale() reads the scale on the host)."""
    if weight is None:
        weight = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (weight * real + (1 - weight) * fake).requires_grad_()
    out = discriminator(x_hat, level, alpha).sum()
    (grad,) = torch.autograd.grad(out if scaler is None else scaler.scale(out), x_hat, create_graph=True)
    if scaler is not None:
        grad = grad / scaler.get_scale()
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def progan_step(generator, discriminator, opt_g, opt_d, real, level, alpha, z=None, mix=None,
                gp_lambda=10.0, drift=1e-3, item=True, amp=None, scaler=None):
    """One ProGAN step (SPEC 7): D with the WGAN-GP loss (lambda 10) plus drift 0.001 * D(real)^2,
    then G with -D(G(z)). `real` is already at the level's resolution (and blended while fading
    in, see fastgan.ops.blend_reals). Returns (loss_d, loss_g) as floats, or as tensors with item=False
    (no host sync: the step can be captured in a CUDA graph, see models.graphs). amp: the forward
    passes under torch.autocast to that dtype; scaler: a GradScaler for float16 (models.amp)."""
    n = real.shape[0]
    if z is None:
        z = torch.randn(n, generator.latent_dim, device=real.device, dtype=real.dtype)
    with autocast(real.device, amp):
        fake = generator(z, level, alpha)
        d_real = discriminator(real, level, alpha)
        d_fake = discriminator(fake.detach(), level, alpha)
        gp = gradient_penalty(discriminator, real, fake.detach(), level, alpha, mix, scaler)
        loss_d = d_fake.mean() - d_real.mean() + gp_lambda * gp + drift * d_real.square().mean()
    opt_d.zero_grad(set_to_none=True)
    backward_and_step(loss_d, opt_d, scaler)

    with autocast(real.device, amp):
        loss_g = -discriminator(fake, level, alpha).mean()
    opt_g.zero_grad(set_to_none=True)
    backward_and_step(loss_g, opt_g, scaler, generator_inputs(opt_g, discriminator))
    if scaler is not None:
        scaler.update()
    if not item:  # no host sync (CUDA graphs)
        return loss_d.detach(), loss_g.detach()
    return loss_d.item(), loss_g.item()
