"""to_layout, the kernel op the public ops convert their 4-D inputs with: exact copies in either
layout from any layout (odd sizes cross the CPU kernel's 16x16 tiles and 64x64 blocks), the input
itself when it is already dense in the asked layout, and a clear error for other ranks."""

import pytest
import torch

from fastgan.ops._dispatch import kernels
from helpers import CPU_BACKENDS, GPU_BACKENDS, LAYOUTS, randn

SHAPES = [(2, 3, 5, 7), (3, 37, 9, 11), (1, 70, 67, 2), (2, 130, 1, 1)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
FORMATS = {True: torch.channels_last, False: torch.contiguous_format}


def check(impl, shape, layout, dtype, channels_last, device="cpu"):
    t = randn(shape, layout, dtype, device)
    got = kernels(impl).to_layout(t, channels_last)
    fmt = FORMATS[channels_last]
    assert got.is_contiguous(memory_format=fmt)
    assert got.dtype == t.dtype and got.shape == t.shape
    assert torch.equal(got, t)
    if t.is_contiguous(memory_format=fmt):
        assert got.data_ptr() == t.data_ptr()


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_to_layout(impl, shape, layout, dtype, channels_last):
    check(impl, shape, layout, dtype, channels_last)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_to_layout_rejects_other_ranks(impl):
    with pytest.raises((RuntimeError, ValueError), match="4-D"):
        kernels(impl).to_layout(torch.randn(3, 4, 5), True)


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_to_layout_gpu(impl, layout, channels_last):
    for shape in SHAPES:
        for dtype in DTYPES:
            check(impl, shape, layout, dtype, channels_last, "cuda")
