"""conv_transpose_bn_relu: the DCGAN generator block, ConvTranspose2d (kernel 4) + BatchNorm2d + ReLU.

A shape is (batch, C_in, H, C_out): stride 2 / padding 1 (doubling H) for H > 1, and stride 1 /
padding 0 for the first block from a 1x1 latent (4x4 out). Inputs are what an nn.Sequential holds:
x and the weight in PyTorch's default (NCHW) layout, the BatchNorm's parameters and its running
statistics (buffers: no gradient). Two cases: training (batch statistics, running statistics
updated) in every mode, and eval (running statistics, folded by fastgan) forward under no_grad.
"""

import torch

from fastgan.ops import conv_transpose_bn_relu, conv_transpose_bn_relu_reference

from . import Case

KERNEL = 4


def geometry(h):
    """(stride, padding) of a DCGAN block on an h x h input."""
    return (1, 0) if h == 1 else (2, 1)


def make_inputs(shape, dtype, device):
    n, c_in, h, c_out = shape
    f = dict(dtype=dtype, device=device)
    x = torch.randn(n, c_in, h, h, **f)
    weight = torch.randn(c_in, c_out, KERNEL, KERNEL, **f) * (1.0 / (c_in * KERNEL)) ** 0.5
    params = [torch.randn(c_out, **f) * 0.1, torch.rand(c_out, **f) + 0.5, torch.randn(c_out, **f) * 0.1]
    stats = [torch.randn(c_out, **f) * 0.1, torch.rand(c_out, **f) + 0.5]  # running mean, var
    for t in (x, weight, *params):
        t.requires_grad_()
    return [x, weight, *params, *stats]


def call(fn, training, x, weight, bias, gamma, beta, running_mean, running_var, **impl):
    stride, padding = geometry(x.shape[2])
    return fn(x, weight, bias, gamma, beta, running_mean, running_var, training, 0.1, 1e-5, stride, padding, 0,
              **impl)


def out_pixels(shape):
    n, _, h, _ = shape
    return n * (KERNEL * KERNEL if h == 1 else 4 * h * h)


def flops(shape):
    """The transposed convolution's multiply-adds (the BN and ReLU add O(output), left out);
    the backward computes the gradients of x and of the weight, twice the forward."""
    n, c_in, h, c_out = shape
    fwd = 2 * n * h * h * c_in * c_out * KERNEL * KERNEL
    return {"forward": fwd, "backward": 2 * fwd, "forward+backward": 3 * fwd}


def yardstick(shape, dtype, device):
    """A plain matrix product with the forward's FLOPs: [N*H*W, C_in] @ [C_in, C_out*kH*kW] (the
    GEMM of a transposed convolution before its col2im scatter)."""
    n, c_in, h, c_out = shape
    a = torch.randn(n * h * h, c_in, dtype=dtype, device=device)
    b = torch.randn(c_in, c_out * KERNEL * KERNEL, dtype=dtype, device=device)
    return f"matmul {a.shape[0]}x{c_in}x{b.shape[1]}", lambda: a @ b, flops(shape)["forward"]


SHAPES = [(n, c_in, h, c_out) for n in (64, 128)
          for c_in, h, c_out in ((100, 1, 512), (512, 4, 256), (256, 8, 128), (128, 16, 64))]
QUICK_SHAPES = [(64, 100, 1, 512), (64, 512, 4, 256), (64, 128, 16, 64), (128, 128, 16, 64)]
# --device cuda: the same blocks at batch 256 (--quick: the last one).
GPU_SHAPES = [(256, 100, 1, 512), (256, 512, 4, 256), (256, 256, 8, 128), (256, 128, 16, 64)]
GPU_QUICK_SHAPES = [(256, 128, 16, 64)]

TRAIN = Case("conv_transpose_bn_relu", SHAPES, QUICK_SHAPES, make_inputs,
             lambda *inputs, impl: call(conv_transpose_bn_relu, True, *inputs, impl=impl),
             lambda *inputs: call(conv_transpose_bn_relu_reference, True, *inputs),
             flops=flops, yardstick=yardstick, gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_QUICK_SHAPES)
EVAL = Case("conv_transpose_bn_relu_eval", SHAPES, QUICK_SHAPES, make_inputs,
            lambda *inputs, impl: call(conv_transpose_bn_relu, False, *inputs, impl=impl),
            lambda *inputs: call(conv_transpose_bn_relu_reference, False, *inputs),
            inference=True, flops=flops, yardstick=yardstick, gpu_shapes=GPU_SHAPES, gpu_quick_shapes=GPU_QUICK_SHAPES)
