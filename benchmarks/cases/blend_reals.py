"""blend_reals: out = (1 - alpha) * upsample_nearest_2x(avg_pool_2x2(x)) + alpha * x."""

import math

import torch

from fastgan.ops import blend_reals, blend_reals_reference

from . import Case

ALPHA = 0.3  # mid-fade, so neither term can be skipped


def make_inputs(shape, dtype, device):
    # Reals require grad here, as under a gradient penalty, so that backward exists.
    return [torch.randn(shape, dtype=dtype, device=device)]


def op(x, impl):
    return blend_reals(x, ALPHA, impl=impl)


def reference(x):
    return blend_reals_reference(x, ALPHA)


def min_bytes(shape, itemsize):
    size = math.prod(shape) * itemsize
    return {"forward": 2 * size,    # read x, write out
            "backward": 2 * size}   # read grad, write grad_x


SHAPES = [(32, 3, 64, 64), (32, 3, 128, 128), (32, 3, 256, 256)]
GPU_SHAPES = [(64, 3, 128, 128), (32, 3, 256, 256), (32, 3, 512, 512)]  # --device cuda: reals up to 512x512
CASE = Case("blend_reals", SHAPES, [SHAPES[0], SHAPES[-1]], make_inputs, op, reference, min_bytes,
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_SHAPES[-1:])
