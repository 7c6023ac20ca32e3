"""DCGAN at 64x64 (SPEC 7; Radford et al. 2015, as in the PyTorch examples).

Both networks are plain `nn.Sequential`s under `main`, with the PyTorch DCGAN example's module
order, so their state_dicts have its keys. The generator's ConvTranspose2d -> BatchNorm2d -> ReLU
blocks and the discriminator's Conv2d -> BatchNorm2d -> LeakyReLU blocks run fused
(`fastgan.fuse`, channels-last) unless `fused=False`. The discriminator can end in minibatch
discrimination (Salimans et al. 2016): the 512x4x4 features, flattened, get B = 100 distance
features (kernel dimension 5) and a linear layer reads both.

Salimans et al. 2016's other techniques (issue 18): the generator can normalize with virtual batch
normalization (`vbn_ref_size`: a fixed reference batch of latents goes through with every batch),
and `dcgan_step` has one-sided label smoothing and feature matching.
"""

import torch
from torch import nn

from ..distributed import unwrapped
from ..fusion import fuse
from ..nn import VirtualBatchNorm2d
from .amp import autocast, backward_and_step, generator_inputs


def dcgan_init(module):
    """SPEC 7: N(0, 0.02) for conv weights, N(1, 0.02) for BatchNorm weights, 0 for their biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm2d, VirtualBatchNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z [N, nz, 1, 1] (or [N, nz]) -> images [N, nc, 64, 64] in [-1, 1].

    vbn_ref_size > 0: virtual batch normalization (SPEC 10) instead of BatchNorm2d. A reference batch
    of that many latents, drawn once here (the `reference_z` buffer, so checkpoints keep it), is put
    in front of every batch and its images dropped from the output: each image then depends on its
    own latent and R alone, not on its batch-mates, in training and eval alike."""

    def __init__(self, nz=100, ngf=64, nc=3, fused=True, impl=None, vbn_ref_size=0):
        super().__init__()
        self.nz = nz
        self.vbn_ref_size = vbn_ref_size
        if vbn_ref_size:
            self.register_buffer("reference_z", torch.randn(vbn_ref_size, nz, 1, 1))
        layers = []
        chans = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            stride, padding = (1, 0) if i == 0 else (2, 1)
            norm = VirtualBatchNorm2d(cout, vbn_ref_size) if vbn_ref_size else nn.BatchNorm2d(cout)
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False), norm, nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        dcgan_init(self)
        self.fusions = fuse(self, impl=impl) if fused else []

    def forward(self, z):
        z = z.view(z.shape[0], self.nz, 1, 1)
        if not self.vbn_ref_size:
            return self.main(z)
        m = self.vbn_ref_size
        return self.main(torch.cat([self.reference_z.to(z.dtype), z]))[m:]


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

    def forward(self, x, return_features=False):
        """Logits [N]; with return_features, also the features feature matching compares: the
        input of the last layer (the minibatch layer or the final conv), flattened."""
        if self.minibatch is not None:
            f = self.main(x).flatten(1)
            out = self.head(self.minibatch(f)).flatten()
            return (out, f) if return_features else out
        if not return_features:
            return self.main(x).flatten()
        captured = []  # the last conv's input, whether main runs fused or not
        handle = self.main[-1].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            out = self.main(x).flatten()
        finally:
            handle.remove()
        return out, captured[0].flatten(1)


def dcgan_optimizers(generator, discriminator, capturable=False):
    """SPEC 7: Adam, lr 2e-4, betas (0.5, 0.999), one per network (capturable: for CUDA graphs)."""
    return (torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999), capturable=capturable),
            torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999), capturable=capturable))


def dcgan_step(generator, discriminator, opt_g, opt_d, real, z=None, item=True, amp=None, scaler=None,
               label_smoothing=0.0, feature_matching=False):
    """One DCGAN training step (the PyTorch example's): D on real and fake with BCE, then G with
    the non-saturating loss. Returns (loss_d, loss_g) as floats, or as tensors with item=False
    (no host sync: the step can be captured in a CUDA graph, see models.graphs). amp: the forward
    passes under torch.autocast to that dtype; scaler: a GradScaler for float16 (models.amp).

    Salimans et al. 2016: label_smoothing = alpha gives D's real targets 1 - alpha (one-sided: fake
    targets stay 0, G's targets 1); feature_matching makes G's loss the mean squared difference
    between the batch means of D's features (DCGANDiscriminator's return_features) on real and on
    fake images, as the paper's code; the real features come from D's own step (detached)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"fastgan: label_smoothing must be in [0, 1), got {label_smoothing}")
    n = real.shape[0]
    if z is None:
        z = torch.randn(n, unwrapped(generator).nz, 1, 1, device=real.device, dtype=real.dtype)
    bce = nn.functional.binary_cross_entropy_with_logits
    ones = torch.ones(n, device=real.device, dtype=real.dtype)
    zeros = torch.zeros_like(ones)

    with autocast(real.device, amp):
        fake = generator(z)
        if feature_matching:
            logits_real, features_real = discriminator(real, return_features=True)
        else:
            logits_real = discriminator(real)
        real_targets = ones - label_smoothing if label_smoothing else ones  # (a launch less without smoothing)
        loss_d = bce(logits_real, real_targets) + bce(discriminator(fake.detach()), zeros)
    opt_d.zero_grad(set_to_none=True)
    backward_and_step(loss_d, opt_d, scaler)

    with autocast(real.device, amp):
        if feature_matching:
            _, features_fake = discriminator(fake, return_features=True)
            loss_g = (features_real.detach().float().mean(0) - features_fake.float().mean(0)).square().mean()
        else:
            loss_g = bce(discriminator(fake), ones)
    opt_g.zero_grad(set_to_none=True)
    backward_and_step(loss_g, opt_g, scaler, generator_inputs(opt_g, discriminator))
    if scaler is not None:
        scaler.update()
    if not item:  # no host sync (CUDA graphs)
        return loss_d.detach(), loss_g.detach()
    return loss_d.item(), loss_g.item()
