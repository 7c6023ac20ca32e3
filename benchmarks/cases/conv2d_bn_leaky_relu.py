"""conv2d_bn_leaky_relu: the DCGAN discriminator block, Conv2d (kernel 4, stride 2, padding 1) +
BatchNorm2d + LeakyReLU(0.2), in training (batch statistics, running statistics updated).

A shape is (batch, C_in, H, C_out), halving H. Inputs are what an nn.Sequential holds: x and the
weight in PyTorch's default (NCHW) layout, the BatchNorm's parameters and running statistics.
"""

import torch

from fastgan.ops import conv2d_bn_leaky_relu, conv2d_bn_leaky_relu_reference

from . import Case

KERNEL = 4


def make_inputs(shape, dtype, device):
    n, c_in, h, c_out = shape
    f = dict(dtype=dtype, device=device)
    x = torch.randn(n, c_in, h, h, **f)
    weight = torch.randn(c_out, c_in, KERNEL, KERNEL, **f) * (1.0 / (c_in * KERNEL * KERNEL)) ** 0.5
    params = [torch.randn(c_out, **f) * 0.1, torch.rand(c_out, **f) + 0.5, torch.randn(c_out, **f) * 0.1]
    stats = [torch.randn(c_out, **f) * 0.1, torch.rand(c_out, **f) + 0.5]  # running mean, var
    for t in (x, weight, *params):
        t.requires_grad_()
    return [x, weight, *params, *stats]


def call(fn, x, weight, bias, gamma, beta, running_mean, running_var, **impl):
    return fn(x, weight, bias, gamma, beta, running_mean, running_var, True, 0.1, 1e-5, 2, 1, 0.2, **impl)


def flops(shape):
    """The convolution's multiply-adds; the backward computes the gradients of x and the weight."""
    n, c_in, h, c_out = shape
    fwd = 2 * n * (h // 2) ** 2 * c_out * c_in * KERNEL * KERNEL
    return {"forward": fwd, "backward": 2 * fwd, "forward+backward": 3 * fwd}


def yardstick(shape, dtype, device):
    """A plain matrix product with the forward's FLOPs: im2col(x) [N*oH*oW, C_in*16] @ [C_in*16, C_out]."""
    n, c_in, h, c_out = shape
    a = torch.randn(n * (h // 2) ** 2, c_in * KERNEL * KERNEL, dtype=dtype, device=device)
    b = torch.randn(c_in * KERNEL * KERNEL, c_out, dtype=dtype, device=device)
    return f"matmul {a.shape[0]}x{a.shape[1]}x{c_out}", lambda: a @ b, flops(shape)["forward"]


SHAPES = [(n, c_in, h, c_out) for n in (64, 128) for c_in, h, c_out in ((64, 32, 128), (128, 16, 256), (256, 8, 512))]
QUICK_SHAPES = [(64, 64, 32, 128), (64, 256, 8, 512), (128, 256, 8, 512)]
# --device cuda: the same blocks at batch 256 (--quick: the first one).
GPU_SHAPES = [(256, c_in, h, c_out) for c_in, h, c_out in ((64, 32, 128), (128, 16, 256), (256, 8, 512))]
GPU_QUICK_SHAPES = [(256, 64, 32, 128)]

CASE = Case("conv2d_bn_leaky_relu", SHAPES, QUICK_SHAPES, make_inputs,
            lambda *inputs, impl: call(conv2d_bn_leaky_relu, *inputs, impl=impl),
            lambda *inputs: call(conv2d_bn_leaky_relu_reference, *inputs),
            flops=flops, yardstick=yardstick, gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_QUICK_SHAPES)
