"""The kernels behind a backend name: `kernels("cpu").pixel_norm(x, eps)`.

cpu and cuda kernels are torch.library ops registered by the compiled extensions
(`fastgan_cpu::*`, `fastgan_cuda::*`); triton kernels are Python host functions.
Every backend exposes the same names with the same signatures, and takes inputs
already laid out by the public op (contiguous, or channels-last for 4-D tensors).
"""

import torch

from .. import _extensions


def kernels(impl):
    if impl == "cpu":
        _extensions.load("_C")
        return torch.ops.fastgan_cpu
    if impl == "cuda":
        _extensions.load("_C_cuda")
        return torch.ops.fastgan_cuda
    if impl == "triton":
        from .. import triton_kernels

        return triton_kernels
    raise ValueError(f"fastgan: backend {impl!r} has no kernels")
