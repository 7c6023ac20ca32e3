"""The cpu backend's convolution kernel ops in bfloat16 (csrc/cpu/convolution.cpp), every path: GEMMs
(oneDNN's bf16 matmul) where no col2im sums taps, the NCHW detour of small outputs, oneDNN's
convolutions elsewhere; forward and both gradients against float64 from the same rounded inputs."""

import pytest
import torch
import torch.nn.functional as F

from fastgan.ops._dispatch import kernels
from helpers import assert_conv_close, randn

BF16, F64 = torch.bfloat16, torch.float64
CL = torch.channels_last

# name: (transposed, n, c_in, h, c_out, k, stride, padding)
CASES = {
    "transposed 1x1, all GEMM (cols is z)": (True, 3, 20, 1, 24, 4, 1, 0),
    "transposed 4x4, weight gradient GEMM, grad_x NCHW": (True, 3, 20, 4, 12, 4, 2, 1),
    "transposed 8x8, weight gradient GEMM": (True, 2, 8, 8, 6, 4, 2, 1),
    "transposed 16x16, oneDNN": (True, 2, 5, 16, 6, 4, 2, 1),
    "direct 8x8 -> 4x4, forward NCHW, weight gradient GEMM": (False, 3, 12, 8, 20, 4, 2, 1),
    "direct 16x16 -> 8x8, weight gradient GEMM": (False, 2, 6, 16, 8, 4, 2, 1),
    "direct 32x32 -> 16x16, oneDNN": (False, 2, 5, 32, 6, 4, 2, 1),
}


def _sqrt_of(products):
    return products.clamp_min(0).sqrt()


@pytest.mark.parametrize("case", CASES)
def test_bfloat16_convolutions(case):
    transposed, n, c_in, h, c_out, k, s, p = CASES[case]
    x = randn((n, c_in, h, h), "channels_last", BF16)
    w = randn((c_in, c_out, k, k) if transposed else (c_out, c_in, k, k), dtype=BF16)
    kern, sp = kernels("cpu"), ([s, s], [p, p])
    conv = F.conv_transpose2d if transposed else F.conv2d
    z = kern.conv_transpose(x, w, *sp, [0, 0]) if transposed else kern.conv2d(x, w, *sp)
    want = conv(x.double(), w.double(), None, s, p)
    assert z.dtype == BF16 and (z.is_contiguous(memory_format=CL) or transposed and h == 1)
    taps = k * k if not transposed else (-(-k // s)) ** 2  # the most taps an output gets
    assert_conv_close(z, want, conv(x.double().square(), w.double().square(), None, s, p).sqrt(), c_in * taps, BF16)

    g = randn(want.shape, dtype=BF16).contiguous(memory_format=CL if want.shape[2] * want.shape[3] > 1 else
                                                 torch.contiguous_format)
    args = (sp[0], sp[1], [1, 1], transposed, [0, 0], 1, [True, True, False])
    want_x, want_w, _ = torch.ops.aten.convolution_backward(g.double(), x.double(), w.double(), None, *args)
    # Each gradient's error scale: the root sum of squares of its products, from the squared operands.
    scale_x = _sqrt_of(torch.ops.aten.convolution_backward(g.double().square(), x.double(), w.double().square(), None,
                                                           *args)[0])
    scale_w = _sqrt_of(torch.ops.aten.convolution_backward(g.double().square(), x.double().square(), w.double(), None,
                                                           *args)[1])
    if transposed:
        got_x, got_w = kern.conv_transpose_backward(g, x, w, *sp, [0, 0], True, True)
    else:
        got_x, got_w = kern.conv2d_backward(g, x, w, *sp, True, True)
    assert got_x.dtype == got_w.dtype == BF16 and got_x.is_contiguous(memory_format=CL) and got_w.is_contiguous()
    assert_conv_close(got_x, want_x, scale_x, c_out * k * k, BF16)
    assert_conv_close(got_w, want_w, scale_w, n * want.shape[2] * want.shape[3], BF16)
