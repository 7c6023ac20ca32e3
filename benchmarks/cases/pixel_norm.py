"""pixel_norm: y = x * rsqrt(mean_c(x^2) + eps), over dim 1 of [N, C, H, W] feature maps."""

import math

import torch

from fastgan.ops import pixel_norm, pixel_norm_reference

from . import Case
from .bias_act import GPU_QUICK_SHAPES, GPU_SHAPES

EPS = 1e-8


def make_inputs(shape, dtype, device):
    return [torch.randn(shape, dtype=dtype, device=device)]


def op(x, impl):
    return pixel_norm(x, EPS, impl=impl)


def reference(x):
    return pixel_norm_reference(x, EPS)


def min_bytes(shape, itemsize):
    size = math.prod(shape) * itemsize
    return {"forward": 2 * size,    # read x, write y
            "backward": 3 * size}   # read grad and x, write grad_x


SHAPES = [(32, 512, 16, 16), (32, 128, 128, 128)]
CASE = Case("pixel_norm", SHAPES, SHAPES, make_inputs, op, reference, min_bytes,
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_QUICK_SHAPES)
