"""The equalized 3x3 conv layer as a whole (SPEC 3): conv on the raw weight, then the fused
bias_act epilogue with the weight scale as its input multiplier, against eager
lrelu(conv2d(x, w * w_mul, b)) that scales the weight every call."""

import math

import torch
import torch.nn.functional as F

from fastgan.ops import bias_act
from fastgan.ops._autocast import lower

from . import Case
from .bias_act import GPU_QUICK_SHAPES, GPU_SHAPES, MODES, PROGAN_SHAPES

QUICK_SHAPES = [(32, 512, 4, 4), (32, 64, 32, 32)]  # the conv dominates: keep the quick run short


def w_mul(c):
    return math.sqrt(2) / math.sqrt(c * 9)


def make_inputs(shape, dtype, device):
    c = shape[1]
    return [torch.randn(shape, dtype=dtype, device=device), torch.randn(c, c, 3, 3, dtype=dtype, device=device),
            torch.randn(c, dtype=dtype, device=device)]


def op(x, w, b, impl):
    (b,) = lower(x.device.type, b)  # as EqualizedConv2d under torch.autocast (--amp), as the conv's bias in eager
    return bias_act(F.conv2d(x, w, padding=1), b, "lrelu", 0.2, 1.0, x_mul=w_mul(x.shape[1]), impl=impl)


def reference(x, w, b):
    return F.leaky_relu(F.conv2d(x, w * w_mul(x.shape[1]), b, padding=1), 0.2)


def flops(shape):
    n, c, h, w = shape
    conv = 2 * n * c * h * w * c * 9
    return {"forward": conv, "backward": 2 * conv, "forward+backward": 3 * conv}


CASE = Case("equalized_conv", PROGAN_SHAPES, QUICK_SHAPES, make_inputs, op, reference, modes=MODES, flops=flops,
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_QUICK_SHAPES)
