"""Data sets the examples make themselves, so that they need no download.

- `shapes`: 64x64 RGB images of one to three soft-edged disks and squares of random colours and
  sizes on a two-colour gradient background, drawn from a seed. Simple enough for a small GAN to
  learn in minutes on a CPU, varied enough that mode dropping shows in the sample grids.
- `ring_of_gaussians`: the 2-D mixture of 8 Gaussians on a circle used to show mode collapse
  (Metz et al. 2017).
"""

import math

import torch


def shapes(n, size=64, seed=0):
    """[n, 3, size, size] images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    # Background: a vertical blend between two dim colours.
    top, bottom = rand(n, 3, 1, 1) * 0.4, rand(n, 3, 1, 1) * 0.4
    img = top + (bottom - top) * ys
    count = torch.randint(1, 4, (n,), generator=g)
    for k in range(3):
        on = (count > k).float().view(n, 1, 1, 1)
        cx, cy = rand(n, 1, 1) * 0.6 + 0.2, rand(n, 1, 1) * 0.6 + 0.2
        r = rand(n, 1, 1) * 0.15 + 0.08
        square = rand(n, 1, 1) < 0.5
        dist = torch.where(square, torch.maximum((xs - cx).abs(), (ys - cy).abs()),
                           ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt())
        alpha = torch.sigmoid((r - dist) * size).unsqueeze(1) * on  # soft edge, ~1 pixel wide
        colour = rand(n, 3, 1, 1) * 0.7 + 0.3
        img = img * (1 - alpha) + colour * alpha
    return img * 2 - 1


def ring_of_gaussians(n, modes=8, radius=2.0, std=0.02, seed=None):
    """[n, 2] samples of `modes` Gaussians (std `std`) evenly spaced on a circle of `radius`."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    k = torch.randint(0, modes, (n,), generator=g)
    angle = 2 * math.pi * k.float() / modes
    centers = torch.stack([angle.cos(), angle.sin()], 1) * radius
    return centers + std * torch.randn(n, 2, generator=g)


def ring_centers(modes=8, radius=2.0):
    angle = 2 * math.pi * torch.arange(modes).float() / modes
    return torch.stack([angle.cos(), angle.sin()], 1) * radius
