"""fade_in_from_rgb: (1 - alpha) * lrelu(equalized conv1x1(avg_pool_2x2(img))) + alpha * x_high.

A shape is (N, C_img, C_out, H, W): images [N, C_img, 2H, 2W], features x_high [N, C_out, H, W].
"""

import torch

from fastgan.ops import fade_in_from_rgb, fade_in_from_rgb_reference

from . import Case

ALPHA = 0.3  # mid-fade, so neither term can be skipped


def make_inputs(shape, dtype, device):
    # img first: the double backward mode differentiates it twice, as a gradient penalty does.
    n, ci, co, h, w = shape
    return [torch.randn(n, ci, 2 * h, 2 * w, dtype=dtype, device=device),
            torch.randn(n, co, h, w, dtype=dtype, device=device),
            torch.randn(co, ci, 1, 1, dtype=dtype, device=device),
            torch.randn(co, dtype=dtype, device=device)]


def op(img, x_high, weight, bias, impl):
    return fade_in_from_rgb(img, x_high, weight, bias, ALPHA, impl=impl)


def reference(img, x_high, weight, bias):
    return fade_in_from_rgb_reference(img, x_high, weight, bias, ALPHA)


def min_bytes(shape, itemsize):
    n, ci, co, h, w = shape
    img = n * ci * 4 * h * w * itemsize
    feat = n * co * h * w * itemsize
    return {"forward": img + feat + feat,           # read img and x_high, write out
            "backward": feat + img + img + feat}    # read grad and img, write grad_img and grad_x_high


# ProGAN's discriminator at batch 32 while a resolution fades in: RGB images of twice the size.
SHAPES = [(32, 3, 512, 4, 4), (32, 3, 256, 16, 16), (32, 3, 128, 32, 32), (32, 3, 64, 64, 64)]
# --device cuda: images of 64x64 to 256x256 with the paper's channels (512, 256, 128), batch 64 then 32.
GPU_SHAPES = [(64, 3, 512, 32, 32), (64, 3, 256, 64, 64), (32, 3, 128, 128, 128)]
CASE = Case("fade_in_from_rgb", SHAPES, [SHAPES[0], SHAPES[-1]], make_inputs, op, reference, min_bytes,
            modes=("forward", "backward", "forward+backward", "double backward"),
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=[(64, 3, 256, 64, 64)])
