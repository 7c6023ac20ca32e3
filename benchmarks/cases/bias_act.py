"""bias_act: y = lrelu(x + bias, 0.2), ProGAN's epilogue (act_gain 1) over [N, C, H, W] feature maps."""

import math

import torch
import torch.nn.functional as F

from fastgan.ops import bias_act

from . import Case

# ProGAN's feature maps at batch 32, 4x4 to 128x128.
PROGAN_SHAPES = [(32, 512, 4, 4), (32, 512, 16, 16), (32, 256, 32, 32), (32, 128, 64, 64), (32, 64, 128, 128)]
QUICK_SHAPES = [(32, 512, 16, 16), (32, 64, 128, 128)]
# --device cuda: ProGAN's feature maps at 32x32 to 256x256 (the paper's 512 to 64 channels), batch 64 then 32.
GPU_SHAPES = [(64, 512, 32, 32), (64, 256, 64, 64), (32, 128, 128, 128), (32, 64, 256, 256)]
GPU_QUICK_SHAPES = [(64, 512, 32, 32)]
MODES = ("forward", "backward", "forward+backward", "double backward")


def make_inputs(shape, dtype, device):
    return [torch.randn(shape, dtype=dtype, device=device), torch.randn(shape[1], dtype=dtype, device=device)]


def op(x, b, impl):
    return bias_act(x, b, "lrelu", 0.2, 1.0, impl=impl)


def reference(x, b):
    return F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2)


def min_bytes(shape, itemsize):
    size = math.prod(shape) * itemsize
    return {"forward": 2 * size,    # read x, write y
            "backward": 3 * size}   # read grad and y, write grad_x (the bias sum not counted)


CASE = Case("bias_act", PROGAN_SHAPES, QUICK_SHAPES, make_inputs, op, reference, min_bytes, modes=MODES,
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_QUICK_SHAPES)
