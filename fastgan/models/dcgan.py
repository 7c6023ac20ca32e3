"""DCGAN at 64x64 (SPEC 7; Radford et al. 2015, as in the PyTorch examples).

Both networks are plain `nn.Sequential`s under `main`, with the PyTorch DCGAN example's module
order, so their state_dicts have its keys. The generator's ConvTranspose2d -> BatchNorm2d -> ReLU
blocks and the discriminator's Conv2d -> BatchNorm2d -> LeakyReLU blocks run fused
(`fastgan.fuse`, channels-last) unless `fused=False`. The discriminator can end in minibatch
discrimination (Salimans et al. 2016): the 512x4x4 features, flattened, get B = 100 distance
features (kernel dimension 5) and a linear layer reads both.
"""

import torch
from torch import nn

from ..distributed import unwrapped
from ..fusion import fuse
from .amp import autocast, backward_and_step


def dcgan_init(module):
    """SPEC 7: N(0, 0.02) for conv weights, N(1, 0.02) for BatchNorm weights, 0 for their biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z [N, nz, 1, 1] (or [N, nz]) -> images [N, nc, 64, 64] in [-1, 1]."""

    def __init__(self, nz=100, ngf=64, nc=3, fused=True, impl=None):
        super().__init__()
        self.nz = nz
        layers = []
        chans = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            stride, padding = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        dcgan_init(self)
        self.fusions = fuse(self, impl=impl) if fused else []

    def forward(self, z):
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


class DCGANDiscriminator(nn.Module):
    """images [N, nc, 64, 64] -> logits [N] (use BCEWithLogits). `minibatch_features` > 0 adds
    minibatch discrimination with that many kernels before the output layer."""

    def __init__(self, ndf=64, nc=3, minibatch_features=0, kernel_dim=5, fused=True, impl=None):
        super().__init__()
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for mult in (1, 2, 4):
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult * 2), nn.LeakyReLU(0.2, inplace=True)]
        features = ndf * 8 * 4 * 4
        if minibatch_features:
            from ..nn import MinibatchDiscrimination

            self.main = nn.Sequential(*layers)
            self.minibatch = MinibatchDiscrimination(features, minibatch_features, kernel_dim, impl=impl)
            self.head = nn.Linear(features + minibatch_features, 1)
        else:
            self.main = nn.Sequential(*layers, nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))
            self.minibatch = self.head = None
        dcgan_init(self)
        self.fusions = fuse(self, impl=impl) if fused else []

    def forward(self, x):
        h = self.main(x)
        if self.minibatch is not None:
            h = self.head(self.minibatch(h.flatten(1)))
        return h.flatten()


def dcgan_optimizers(generator, discriminator, capturable=False):
    """SPEC 7: Adam, lr 2e-4, betas (0.5, 0.999), one per network (capturable: for CUDA graphs)."""
    return (torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999), capturable=capturable),
            torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999), capturable=capturable))


def dcgan_step(generator, discriminator, opt_g, opt_d, real, z=None, item=True, amp=None, scaler=None):
    """One DCGAN training step (the PyTorch example's): D on real and fake with BCE, then G with
    the non-saturating loss. Returns (loss_d, loss_g) as floats, or as tensors with item=False
    (no host sync: the step can be captured in a CUDA graph, see models.graphs). amp: the forward
    passes under torch.autocast to that dtype; scaler: a GradScaler for float16 (models.amp)."""
    n = real.shape[0]
    if z is None:
        z = torch.randn(n, unwrapped(generator).nz, 1, 1, device=real.device, dtype=real.dtype)
    bce = nn.functional.binary_cross_entropy_with_logits
    ones = torch.ones(n, device=real.device, dtype=real.dtype)
    zeros = torch.zeros_like(ones)

    with autocast(real.device, amp):
        fake = generator(z)
        loss_d = bce(discriminator(real), ones) + bce(discriminator(fake.detach()), zeros)
    opt_d.zero_grad(set_to_none=True)
    backward_and_step(loss_d, opt_d, scaler)

    with autocast(real.device, amp):
        loss_g = bce(discriminator(fake), ones)
    opt_g.zero_grad(set_to_none=True)
    backward_and_step(loss_g, opt_g, scaler)
    if scaler is not None:
        scaler.update()
    if not item:  # no host sync (CUDA graphs)
        return loss_d.detach(), loss_g.detach()
    return loss_d.item(), loss_g.item()
