"""A progressive-growing fade-in with fastgan: a toy generator grows from 8x8 to 16x16.

While the new 16x16 block fades in, the generator blends its up-sampled 8x8 RGB
output into the 16x16 one (`fade_in`), the real images are blended the same way
(`blend_reals`), and every feature map is pixel-normalized (`PixelNorm`); alpha
follows the linear schedule of SPEC 6. Runs in seconds on a CPU:

    python examples/progressive_fade.py [--impl cpu|reference|triton|cuda]
"""

import argparse

import torch

import fastgan


class ToyGenerator(torch.nn.Module):
    def __init__(self, impl=None, channels=32):
        super().__init__()
        self.base = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.block = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.to_rgb_low = torch.nn.Conv2d(channels, 3, 1)
        self.to_rgb_high = torch.nn.Conv2d(channels, 3, 1)
        self.norm = fastgan.nn.PixelNorm(impl=impl)
        self.fade = fastgan.nn.FadeIn(impl=impl)

    def forward(self, z):
        x = self.norm(torch.nn.functional.leaky_relu(self.base(z), 0.2))
        up = torch.nn.functional.interpolate(x, scale_factor=2.0)
        y = self.norm(torch.nn.functional.leaky_relu(self.block(up), 0.2))
        return self.fade(self.to_rgb_low(x), self.to_rgb_high(y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default=None, help="fastgan backend (default: by device)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    gen = ToyGenerator(args.impl)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.0, 0.99))
    reals = torch.rand(64, 3, 16, 16) * 2 - 1  # stand-in data set
    batch, fade_images = 8, args.steps * 8
    for step in range(args.steps):
        alpha = fastgan.ops.fade_alpha(step * batch, fade_images)
        gen.fade.alpha = alpha
        real = fastgan.ops.blend_reals(reals[torch.randint(0, 64, (batch,))], alpha, impl=args.impl)
        fake = gen(torch.randn(batch, 32, 8, 8))
        loss = (fake.mean() - real.mean()) ** 2 + (fake.std() - real.std()) ** 2  # a toy moment-matching loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  alpha {alpha:.3f}  loss {loss.item():.5f}")


if __name__ == "__main__":
    main()
