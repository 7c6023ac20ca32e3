"""minibatch_stddev: cat([x, mean group stddev broadcast], dim 1), groups of 4 strided samples."""

import math

import torch

from fastgan.ops import minibatch_stddev, minibatch_stddev_reference

from . import Case


def make_inputs(shape, dtype, device):
    return [torch.randn(shape, dtype=dtype, device=device)]


def op(x, impl):
    return minibatch_stddev(x, impl=impl)


def reference(x):
    return minibatch_stddev_reference(x)


def min_bytes(shape, itemsize):
    n, c, h, w = shape
    x = math.prod(shape) * itemsize
    out = n * (c + 1) * h * w * itemsize
    return {"forward": x + out,          # read x, write out
            "backward": out + x + x}     # read grad and x, write grad_x


# ProGAN's discriminator at batch 32: the 4x4 head (512 channels), and larger feature maps.
SHAPES = [(32, 512, 4, 4), (32, 256, 8, 8), (32, 128, 32, 32)]
GPU_SHAPES = [(64, 512, 4, 4), (64, 512, 16, 16), (64, 256, 64, 64)]  # --device cuda: batch 64
CASE = Case("minibatch_stddev", SHAPES, [SHAPES[0], SHAPES[-1]], make_inputs, op, reference, min_bytes,
            modes=("forward", "backward", "forward+backward", "double backward"),
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=[(64, 512, 16, 16)])
