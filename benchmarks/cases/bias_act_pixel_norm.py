"""bias_act_pixel_norm: pixel_norm(lrelu(x + bias, 0.2)), the ProGAN generator's epilogue."""

import torch
import torch.nn.functional as F

from fastgan.ops import bias_act_pixel_norm

from . import Case
from .bias_act import GPU_QUICK_SHAPES, GPU_SHAPES, MODES, PROGAN_SHAPES, QUICK_SHAPES, make_inputs, min_bytes

EPS = 1e-8


def op(x, b, impl):
    return bias_act_pixel_norm(x, b, 0.2, 1.0, EPS, impl=impl)


def reference(x, b):
    a = F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2)
    return a * torch.rsqrt(a.square().mean(dim=1, keepdim=True) + EPS)


CASE = Case("bias_act_pixel_norm", PROGAN_SHAPES, QUICK_SHAPES, make_inputs, op, reference, min_bytes, modes=MODES,
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_QUICK_SHAPES)
