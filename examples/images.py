"""Saving what the examples produce: image grids and loss curves as PNG (matplotlib)."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save_grid(images, path, nrow=None, pad=2):
    """images [N, C, H, W] in [-1, 1] -> one PNG grid."""
    images = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    img = grid.permute(1, 2, 0).numpy()
    plt.imsave(path, img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None)


def save_curves(curves, path, title="losses", xlabel="step"):
    """curves: {label: list of values} -> a line plot."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in curves.items():
        ax.plot(values, label=label, lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
