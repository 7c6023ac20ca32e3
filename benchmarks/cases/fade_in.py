"""fade_in: out = (1 - alpha) * upsample_nearest_2x(rgb_low) + alpha * rgb_high."""

import math

import torch

from fastgan.ops import fade_in, fade_in_reference

from . import Case

ALPHA = 0.3  # mid-fade, so neither term can be skipped


def make_inputs(shape, dtype, device):
    # `shape` is rgb_high's; rgb_low has half its height and width.
    n, c, h, w = shape
    return [torch.randn(n, c, h // 2, w // 2, dtype=dtype, device=device),
            torch.randn(n, c, h, w, dtype=dtype, device=device)]


def op(rgb_low, rgb_high, impl):
    return fade_in(rgb_low, rgb_high, ALPHA, impl=impl)


def reference(rgb_low, rgb_high):
    return fade_in_reference(rgb_low, rgb_high, ALPHA)


def min_bytes(shape, itemsize):
    high = math.prod(shape) * itemsize
    low = high // 4
    return {"forward": low + high + high,    # read rgb_low and rgb_high, write out
            "backward": high + low + high}   # read grad, write grad_low and grad_high


SHAPES = [(32, 3, 64, 64), (32, 3, 128, 128), (32, 3, 256, 256)]
GPU_SHAPES = [(64, 3, 128, 128), (32, 3, 256, 256), (32, 3, 512, 512)]  # --device cuda: rgb_high up to 512x512
CASE = Case("fade_in", SHAPES, [SHAPES[0], SHAPES[-1]], make_inputs, op, reference, min_bytes,
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_SHAPES[-1:])
