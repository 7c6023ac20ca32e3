"""virtual_batch_norm (issue 18): VBN alone (+ ReLU), and the DCGAN blocks with VBN: the generator's
ConvTranspose2d (kernel 4, stride 2, padding 1) -> VirtualBatchNorm2d -> ReLU and the discriminator's
Conv2d (kernel 4, stride 2, padding 1) -> VirtualBatchNorm2d -> LeakyReLU(0.2), against the eager
module chain (fastgan's reference: the definition in torch ops) and torch.compile of it.

VBN shape: (batch incl. R, C, H, ref_size); block shape: (batch incl. R, C_in, H, C_out, ref_size),
doubling H (generator) or halving it (discriminator). Inputs are NCHW as an nn.Sequential holds
them. Every backend (on a GPU at batch 256 + R).
"""

import torch

from fastgan.ops import (conv2d_vbn_leaky_relu, conv2d_vbn_leaky_relu_reference, conv_transpose_vbn_relu,
                         conv_transpose_vbn_relu_reference, virtual_batch_norm, virtual_batch_norm_reference)

from . import Case

KERNEL = 4


def vbn_inputs(shape, dtype, device):
    n, c, h, _ = shape
    f = dict(dtype=dtype, device=device)
    return [torch.randn(n, c, h, h, **f).requires_grad_(), (torch.rand(c, **f) + 0.5).requires_grad_(),
            (torch.randn(c, **f) * 0.1).requires_grad_()]


def block_inputs(shape, dtype, device, transposed=True):
    n, c_in, h, c_out, _ = shape
    f = dict(dtype=dtype, device=device)
    x = torch.randn(n, c_in, h, h, **f)
    w_shape = (c_in, c_out, KERNEL, KERNEL) if transposed else (c_out, c_in, KERNEL, KERNEL)
    weight = torch.randn(w_shape, **f) * (1.0 / (c_in * KERNEL * KERNEL)) ** 0.5
    params = [torch.rand(c_out, **f) + 0.5, torch.randn(c_out, **f) * 0.1]
    return [t.requires_grad_() for t in (x, weight, *params)]


def vbn_bytes(shape, itemsize):
    """z read and y written; the backward reads grad_y and z and writes grad_z."""
    n, c, h, _ = shape
    size = n * c * h * h * itemsize
    return {"forward": 2 * size, "backward": 3 * size}


VBN_SHAPES = [(n + 16, c, h, 16) for n in (64, 128) for c, h in ((256, 8), (128, 16), (64, 32))]
VBN = Case("virtual_batch_norm", VBN_SHAPES, [(80, 128, 16, 16)], vbn_inputs,
           lambda z, g, b, impl: virtual_batch_norm(z, 16, g, b, negative_slope=0.0, impl=impl),
           lambda z, g, b: virtual_batch_norm_reference(z, 16, g, b, negative_slope=0.0),
           min_bytes=vbn_bytes,
           gpu_shapes=[(272, c, h, 16) for c, h in ((256, 8), (128, 16))], gpu_quick_shapes=[(272, 128, 16, 16)])

BLOCK_SHAPES = [(n + 16, c_in, h, c_out, 16) for n in (64, 128)
                for c_in, h, c_out in ((512, 4, 256), (256, 8, 128), (128, 16, 64))]
BLOCK = Case("conv_transpose_vbn_relu", BLOCK_SHAPES, [(80, 256, 8, 128, 16)], block_inputs,
             lambda x, w, g, b, impl: conv_transpose_vbn_relu(x, w, None, g, b, 16, 1e-5, 2, 1, impl=impl),
             lambda x, w, g, b: conv_transpose_vbn_relu_reference(x, w, None, g, b, 16, 1e-5, 2, 1),
             gpu_shapes=[(272, 256, 8, 128, 16)], gpu_quick_shapes=[(272, 256, 8, 128, 16)])

# The discriminator's block: the conv2d_bn_leaky_relu case's channels (64 -> 128 at 32x32, ...).
DISC_SHAPES = [(n + 16, c_in, h, c_out, 16) for n in (64, 128)
               for c_in, h, c_out in ((64, 32, 128), (128, 16, 256), (256, 8, 512))]
DISC = Case("conv2d_vbn_leaky_relu", DISC_SHAPES, [(80, 128, 16, 256, 16)],
            lambda shape, dtype, device: block_inputs(shape, dtype, device, transposed=False),
            lambda x, w, g, b, impl: conv2d_vbn_leaky_relu(x, w, None, g, b, 16, 1e-5, 2, 1, 0.2, impl=impl),
            lambda x, w, g, b: conv2d_vbn_leaky_relu_reference(x, w, None, g, b, 16, 1e-5, 2, 1, 0.2),
            gpu_shapes=[(272, 128, 16, 256, 16)], gpu_quick_shapes=[(272, 128, 16, 256, 16)])
