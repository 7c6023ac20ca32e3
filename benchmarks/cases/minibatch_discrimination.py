"""minibatch_discrimination: cat([x, o], 1) with o the pairwise exp(-L1) features of SPEC 2, on a
512x4x4 discriminator feature map (A = 8192) with the paper's B = 100 kernels of C = 5.

Shapes are (N, 512, 4, 4, B, C). The eager reference materializes the [N, N, B, C] differences,
about 3 * N^2 * B * C elements at its peak (forward and backward): at N = 4096 that is ~100 GB
in float32, reported as out of memory. The fused backends need O(N * B * C) on top of the GEMMs.
"""

import torch

from fastgan.ops import minibatch_discrimination, minibatch_discrimination_reference

from . import Case


def _sizes(shape):
    n, *feature, b, c = shape
    a = 1
    for s in feature:
        a *= s
    return n, a, b, c


def make_inputs(shape, dtype, device):
    n, a, b, c = _sizes(shape)
    x = torch.randn(shape[:-2], dtype=dtype, device=device).requires_grad_()
    T = (0.05 * torch.randn(a, b, c, device=device)).to(dtype).requires_grad_()  # the official init
    bias = torch.full((b,), -1.0, dtype=dtype, device=device).requires_grad_()
    return [x, T, bias]


def op(x, T, bias, impl):
    return minibatch_discrimination(x, T, bias, impl=impl)


def reference(x, T, bias):
    return minibatch_discrimination_reference(x, T, bias)


def flops(shape):
    """The GEMMs (x @ T forward; dM @ T^T and x^T @ dM backward) and the pairwise work over all
    ordered pairs: per pair and kernel, C differences, absolute values and sums, one exp and a sum
    forward; twice that and the signed products backward."""
    n, a, b, c = _sizes(shape)
    gemm, pairs = 2 * n * a * b * c, n * n * b
    return {"forward": gemm + pairs * (3 * c + 2), "backward": 2 * gemm + pairs * (6 * c + 4)}


def yardstick(shape, dtype, device):
    """The forward's GEMM alone, M = x_flat @ T_flat: what any implementation must pay."""
    n, a, b, c = _sizes(shape)
    x = torch.randn(n, a, dtype=dtype, device=device)
    t = torch.randn(a, b * c, dtype=dtype, device=device)
    return "GEMM x @ T", lambda: torch.mm(x, t), 2 * n * a * b * c


def eager_bytes(shape, itemsize):
    n, _, b, c = _sizes(shape)
    return 3 * n * n * b * c * max(itemsize, 4)  # the pairwise tensors, in float32 or float64, at the peak


SHAPES = [(n, 512, 4, 4, 100, 5) for n in (64, 256, 1024, 4096)]
# --device cuda: eager at N = 4096 needs ~100 GB, run only where that much is free (eager_bytes).
GPU_SHAPES = SHAPES[1:]
CASE = Case("minibatch_discrimination", SHAPES, SHAPES[:2], make_inputs, op, reference,
            flops=flops, yardstick=yardstick, eager_bytes=eager_bytes,
            gpu_shapes=GPU_SHAPES, gpu_quick_shapes=[(1024, 512, 4, 4, 100, 5)])
