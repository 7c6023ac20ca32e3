"""The kernel-level ops of the DCGAN generator block (SPEC 1, csrc/schemas.h), called directly:
conv_transpose_stats, bn_relu, bn_relu_, bn_relu_backward and conv_transpose_bias_relu against
plain torch (F.conv_transpose2d, torch.var_mean(unbiased=False), and the BN + ReLU backward
written out in eager and differentiated by autograd). Triton runs under the interpreter on tiny
shapes here; the gpu-marked tests run the cuda and triton kernels on a CUDA device.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from fastgan import _extensions
from fastgan.ops._dispatch import kernels
from helpers import (GPU_BACKENDS, GPU_DTYPES, TOLERANCES, assert_close, assert_conv_close, assert_sum_close,
                     conv_error_scale, keep_off_kink, randn)

# (N, C_in, H, W, C_out, kernel, stride, padding, output_padding): DCGAN-like (kernel 4, stride 2,
# padding 1; the 1x1 latent), kernels 3 and 5, stride 1 and 2 (and 3), output padding, odd sizes.
CONV_CASES = [
    (2, 5, 3, 4, 6, 4, 2, 1, 0),
    (2, 7, 1, 1, 9, 4, 1, 0, 0),
    (2, 6, 5, 3, 5, 3, 2, 1, 1),
    (1, 4, 3, 5, 3, 5, 1, 2, 0),
    (3, 3, 3, 2, 4, 5, 2, 2, 1),
    (1, 3, 4, 2, 4, 3, 3, 0, 2),
]
LAYOUTS = ["contiguous", "channels_last"]
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def conv_inputs(case, layout="contiguous", dtype=torch.float32, device="cpu"):
    n, c_in, h, w, c_out, k, s, p, op = case
    x = randn((n, c_in, h, w), layout, dtype, device)
    weight = randn((c_in, c_out, k, k), "contiguous", dtype, device)
    return x, weight, (s, s), (p, p), (op, op)


def reference_conv(x, weight, stride, padding, output_padding, bias=None):
    """The convolution in float64 from the same (rounded) inputs, its batch statistics, and the size its
    rounding errors scale with: sqrt(sum_k (x_k w_k)^2) per output, and K, the most products per output."""
    z = F.conv_transpose2d(x.double(), weight.double(), None if bias is None else bias.double(), stride, padding,
                           output_padding)
    var, mean = torch.var_mean(z, dim=(0, 2, 3), unbiased=False)
    scale = conv_error_scale(F.conv_transpose2d, x, weight, stride, padding, output_padding)
    terms = x.shape[1] * max(-(-weight.shape[2] // stride[0]), 1) * max(-(-weight.shape[3] // stride[1]), 1)
    return z, mean, var, scale, terms


def check_stats(ops, x, weight, stride, padding, output_padding):
    z, mean, var = ops.conv_transpose_stats(x, weight, stride, padding, output_padding)
    z_ref, _, _, scale, terms = reference_conv(x, weight, stride, padding, output_padding)
    assert z.dtype == x.dtype and (z.is_contiguous(memory_format=torch.channels_last) or z.is_contiguous())
    assert_conv_close(z, z_ref, scale, terms, x.dtype)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert mean.dtype == acc and var.dtype == acc
    # The statistics describe z as stored (the reference computes them from its rounded z too).
    var_z, mean_z = torch.var_mean(z.to(torch.float64), dim=(0, 2, 3), unbiased=False)
    tol = TOLERANCES[acc]
    torch.testing.assert_close(mean.to(torch.float64), mean_z, **tol)
    torch.testing.assert_close(var.to(torch.float64), var_z, **tol)
    # conv_transpose: the same z without the statistics, in the same layout.
    z_alone = ops.conv_transpose(x, weight, stride, padding, output_padding)
    assert z_alone.dtype == z.dtype and z_alone.stride() == z.stride()
    assert_conv_close(z_alone, z_ref, scale, terms, x.dtype)
    return z, mean, var


@pytest.fixture
def exact_fp32():
    """TF32 convolutions (cuDNN's flag, on by default) off: float32 compares at float32 precision.
    The triton kernels follow the same flag."""
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = allowed


# ---------------------------------------------------------------------------
# Triton under the interpreter.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_transpose_stats(case, layout, dtype):
    check_stats(kernels("triton"), *conv_inputs(case, layout, dtype))


@pytest.mark.parametrize("case", CONV_CASES[:3])
def test_conv_transpose_stats_exact_fp32(case, exact_fp32):
    """With TF32 off, float32 runs the rank-1-update path of the GEMM instead of tl.dot."""
    check_stats(kernels("triton"), *conv_inputs(case, "channels_last"))
    check_bias_relu(kernels("triton"), *conv_inputs(case))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CONV_CASES[:4])
def test_conv_transpose_bias_relu(case, layout, dtype):
    check_bias_relu(kernels("triton"), *conv_inputs(case, layout, dtype))


def check_bias_relu(ops, x, weight, stride, padding, output_padding):
    bias = randn((weight.shape[1],), dtype=x.dtype, device=x.device)
    y = ops.conv_transpose_bias_relu(x, weight, bias, stride, padding, output_padding)
    z_ref, _, _, scale, terms = reference_conv(x, weight, stride, padding, output_padding, bias)
    assert_conv_close(y, z_ref.relu(), scale, terms, x.dtype)  # ReLU does not grow an error
    # conv_transpose with the bias (eval's z): the same kernel, without the ReLU.
    z = ops.conv_transpose(x, weight, stride, padding, output_padding, bias)
    assert z.stride() == y.stride()
    assert_conv_close(z, z_ref, scale, terms, x.dtype)


@pytest.fixture
def precision_api():
    """Restores the TF32 settings a test changes through torch's fp32_precision API."""
    saved = [(h, h.fp32_precision) for h in (torch.backends.cudnn.conv, torch.backends.cudnn, torch.backends)]
    yield
    for holder, value in saved:
        holder.fp32_precision = value


def test_tf32_setting_of_the_precision_api(precision_api):
    """TF32 switched off the torch >= 2.9 way (reading the legacy allow_tf32 then raises): the
    triton convolution reads it (conv_tf32_allowed) and runs."""
    from fastgan._backend import conv_tf32_allowed

    torch.backends.cudnn.conv.fp32_precision = "ieee"
    assert not conv_tf32_allowed()
    check_stats(kernels("triton"), *conv_inputs(CONV_CASES[0], "channels_last"))
    torch.backends.cudnn.conv.fp32_precision = "none"
    torch.backends.cudnn.fp32_precision = "tf32"
    assert conv_tf32_allowed()


@pytest.mark.parametrize("stride", [1, 2])
def test_stats_accurate_with_large_offset(stride):
    """z offset by 1e4 with a spread of ~1 (every output pixel gets exactly one tap per input
    channel, and input channel 0 is a constant 1 whose weights are 1e4): the variance is as close
    to the float64 one of z as eager float32's is; E[z^2] - E[z]^2 in float32 would be off by ~1."""
    x = randn((3, 4, 5, 3))
    x[:, 0] = 1.0
    weight = randn((4, 6, stride, stride))
    weight[0] = 1e4
    z, mean, var = kernels("triton").conv_transpose_stats(x, weight, (stride, stride), (0, 0), (0, 0))
    var64, mean64 = torch.var_mean(z.double(), dim=(0, 2, 3), unbiased=False)
    var_eager, _ = torch.var_mean(z, dim=(0, 2, 3), unbiased=False)
    eager_error = (var_eager.double() - var64).abs()
    assert ((var.double() - var64).abs() <= 4 * eager_error + 1e-5 * var64).all(), (var, var64)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)
    assert (mean64 - 1e4).abs().max() < 20 and var64.min() > 0.01  # the case is what it claims


def bn_inputs(shape, layout, dtype, affine, device="cpu", off_kink=False):
    """z, its batch statistics in the accumulation dtype, gamma and beta. off_kink: no element's exact
    pre-activation within KINK_MARGIN of 0 (helpers.keep_off_kink), for the backward, whose ReLU mask
    the kernel decides from its own float32 pre-activation."""
    z = randn(shape, layout, dtype, device)
    c = shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gamma = randn((c,), dtype=acc, device=device) if affine else None
    beta = randn((c,), dtype=acc, device=device) if affine else None
    if off_kink:
        z = keep_off_kink(z, gamma, beta, 1e-5)
    var, mean = torch.var_mean(z.to(acc), dim=(0, 2, 3), unbiased=False)
    invstd = torch.rsqrt(var + 1e-5)
    return z, mean, invstd, gamma, beta


def eager_bn_relu(z, gamma, beta, eps=1e-5):
    """relu(batch_norm(z)) with the batch statistics of z, differentiable in z, gamma and beta."""
    var, mean = torch.var_mean(z, dim=(0, 2, 3), unbiased=False, keepdim=True)
    xhat = (z - mean) * torch.rsqrt(var + eps)
    if gamma is not None:
        xhat = xhat * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return xhat.relu()


BN_SHAPES = [(2, 5, 3, 7), (3, 9, 4, 4), (1, 3, 1, 1 + 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_bn_relu(shape, layout, dtype):
    check_bn_relu(kernels("triton"), shape, layout, dtype)


def check_bn_relu(ops, shape, layout, dtype, device="cpu"):
    z, mean, invstd, gamma, beta = bn_inputs(shape, layout, dtype, True, device)
    scale, shift = invstd * gamma, beta
    per_channel = lambda v: v.double().view(1, -1, 1, 1)  # noqa: E731
    want = ((z.double() - per_channel(mean)) * per_channel(scale) + per_channel(shift)).relu()
    y = ops.bn_relu(z, mean, scale, shift, 0.0)
    assert y.is_contiguous(memory_format=MEMORY_FORMATS[layout])
    assert_close(y, want, dtype)
    z_before = z.clone()
    assert ops.bn_relu_(z, mean, scale, shift, 0.0) is None
    torch.testing.assert_close(z, y, rtol=0, atol=0)
    assert not torch.equal(z, z_before)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", BN_SHAPES + [(5, 4, 3, 5)])
def test_bn_relu_backward(shape, layout, dtype, affine):
    check_bn_relu_backward(kernels("triton"), shape, layout, dtype, affine)


def check_bn_relu_backward(ops, shape, layout, dtype, affine, device="cpu"):
    """Against eager_bn_relu differentiated in float64 from the same z (kept off the ReLU's kink, so
    that both take the same side) and grad_y."""
    z, mean, invstd, gamma, beta = bn_inputs(shape, layout, dtype, affine, device, off_kink=True)
    grad_y = randn(shape, layout, dtype, device)
    grad_z, grad_gamma, grad_beta = ops.bn_relu_backward(grad_y, z, mean, invstd, gamma, beta, 0.0)
    assert grad_z.is_contiguous(memory_format=MEMORY_FORMATS[layout])

    acc = mean.dtype
    leaves = [z.detach().double().requires_grad_()]
    if affine:
        leaves += [gamma.detach().double().requires_grad_(), beta.detach().double().requires_grad_()]
    y = eager_bn_relu(leaves[0], *(leaves[1:] if affine else (None, None)))
    want = torch.autograd.grad(y, leaves, grad_y.double())
    assert_close(grad_z, want[0], dtype)
    # grad_gamma = sum(gm * xhat), grad_beta = sum(gm) (returned without affine too): sums over N*H*W
    var, mean64 = torch.var_mean(z.double(), dim=(0, 2, 3), unbiased=False, keepdim=True)
    xhat = (z.double() - mean64) * torch.rsqrt(var + 1e-5)
    u = xhat * gamma.double().view(1, -1, 1, 1) + beta.double().view(1, -1, 1, 1) if affine else xhat
    gm = grad_y.double() * (u > 0)
    want_gamma, want_beta = (want[1], want[2]) if affine else ((gm * xhat).sum((0, 2, 3)), gm.sum((0, 2, 3)))
    assert_sum_close(grad_gamma, want_gamma, (gm * xhat).abs().sum((0, 2, 3)), acc)
    assert_sum_close(grad_beta, want_beta, gm.abs().sum((0, 2, 3)), acc)


def test_backward_sums_span_several_chunks():
    """Channels-last pass 1 sums chunks of rows: enough rows for several chunks and a partial one."""
    check_bn_relu_backward(kernels("triton"), (3, 3, 5, 7), "channels_last", torch.float64, True)


def test_bad_inputs():
    ops = kernels("triton")
    x, weight, stride, padding, output_padding = conv_inputs(CONV_CASES[0])
    with pytest.raises(ValueError, match="weight"):
        ops.conv_transpose_stats(x, weight[:, :, :, :2].transpose(0, 1), stride, padding, output_padding)
    with pytest.raises(ValueError, match="weight"):
        ops.conv_transpose_stats(x, weight.double(), stride, padding, output_padding)
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.conv_transpose_stats(x[0], weight, stride, padding, output_padding)
    with pytest.raises(ValueError, match="output_padding"):
        ops.conv_transpose_stats(x, weight, stride, padding, (2, 2))
    with pytest.raises(ValueError, match="bias"):
        ops.conv_transpose_bias_relu(x, weight, torch.zeros(3), stride, padding, output_padding)
    with pytest.raises(ValueError, match="bias"):
        ops.conv_transpose(x, weight, stride, padding, output_padding, torch.zeros(weight.shape[1]).double())
    z, mean, invstd, gamma, beta = bn_inputs((2, 5, 3, 4), "contiguous", torch.float32, True)
    with pytest.raises(ValueError, match="mean"):
        ops.bn_relu(z, mean.double(), invstd, beta, 0.0)
    with pytest.raises(ValueError, match="z must be contiguous"):
        ops.bn_relu(z[..., ::2], mean, invstd, beta, 0.0)
    with pytest.raises(ValueError, match="grad_y"):  # any layout is taken, not another dtype
        ops.bn_relu_backward(z.double().contiguous(memory_format=torch.channels_last), z, mean, invstd, gamma, beta,
                             0.0)
    with pytest.raises(ValueError, match="grad_y"):
        ops.bn_relu_backward(z[:1], z, mean, invstd, gamma, beta, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        ops.bn_relu_backward(z, z, mean, invstd, gamma[:3], beta, 0.0)


KERNEL_OPS = ["conv_transpose_stats", "bn_relu", "bn_relu_", "bn_relu_backward", "batch_stats",
              "conv_transpose_bias_relu"]


def test_cuda_extension_registers_the_kernels():
    """Built and linked (no GPU needed): every op has its CUDA kernel."""
    if _extensions.load("_C_cuda") is None:
        if os.environ.get("FASTGAN_REQUIRE_CUDA_EXT") != "1":
            pytest.skip(f"CUDA extension not built: {_extensions.load_error('_C_cuda')}")
        pytest.fail(_extensions.load_error("_C_cuda"))
    for op in KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan_cuda::{op}", "CUDA"), op


# ---------------------------------------------------------------------------
# On a CUDA device: the cuda and triton kernels, in the GPU dtypes.

GPU_CONV_CASES = CONV_CASES + [
    (16, 100, 1, 1, 512, 4, 1, 0, 0),   # DCGAN first block
    (16, 512, 4, 4, 256, 4, 2, 1, 0),   # DCGAN blocks
    (8, 128, 16, 16, 64, 4, 2, 1, 0),
    (4, 37, 9, 7, 19, 3, 2, 1, 1),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_conv_transpose_stats_gpu(impl, layout, dtype, exact_fp32):
    for case in GPU_CONV_CASES:
        check_stats(kernels(impl), *conv_inputs(case, layout, dtype, "cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_conv_transpose_stats_tf32_gpu(impl):
    """PyTorch's default (TF32 convolutions allowed): z within TF32's error, and the statistics
    exactly those of the stored z."""
    assert torch.backends.cudnn.allow_tf32
    for case in GPU_CONV_CASES:
        x, weight, *sizes = conv_inputs(case, "channels_last", device="cuda")
        z, mean, var = kernels(impl).conv_transpose_stats(x, weight, *sizes)
        z_ref, _, _, scale, terms = reference_conv(x, weight, *sizes)
        assert_conv_close(z, z_ref, scale, terms, torch.float32, tf32=True)
        var_z, mean_z = torch.var_mean(z.double(), dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(mean.double(), mean_z, **TOLERANCES[torch.float32])
        torch.testing.assert_close(var.double(), var_z, **TOLERANCES[torch.float32])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_conv_transpose_bias_relu_gpu(impl, dtype, exact_fp32):
    for case in GPU_CONV_CASES:
        for layout in LAYOUTS:
            check_bias_relu(kernels(impl), *conv_inputs(case, layout, dtype, "cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_stats_accurate_with_large_offset_gpu(impl, exact_fp32):
    x = randn((64, 8, 8, 8), device="cuda")
    x[:, 0] = 1.0
    weight = randn((8, 64, 2, 2), device="cuda")
    weight[0] = 1e4
    z, mean, var = kernels(impl).conv_transpose_stats(x, weight, (2, 2), (0, 0), (0, 0))
    var64, _ = torch.var_mean(z.double(), dim=(0, 2, 3), unbiased=False)
    var_eager, _ = torch.var_mean(z, dim=(0, 2, 3), unbiased=False)
    assert ((var.double() - var64).abs() <= 4 * (var_eager.double() - var64).abs() + 1e-5 * var64).all()


GPU_BN_SHAPES = BN_SHAPES + [(64, 256, 8, 8), (33, 64, 32, 32), (7, 3, 13, 11)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_bn_relu_gpu(impl, layout, dtype):
    for shape in GPU_BN_SHAPES:
        check_bn_relu(kernels(impl), shape, layout, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", GPU_DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_bn_relu_backward_gpu(impl, layout, dtype, affine):
    for shape in GPU_BN_SHAPES:
        check_bn_relu_backward(kernels(impl), shape, layout, dtype, affine, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_deterministic_gpu(impl):
    """Fixed-order reductions: the same inputs give bitwise the same statistics and gradients."""
    ops = kernels(impl)
    x, weight, stride, padding, output_padding = conv_inputs(GPU_CONV_CASES[-2], "channels_last", device="cuda")
    first = ops.conv_transpose_stats(x, weight, stride, padding, output_padding)
    second = ops.conv_transpose_stats(x, weight, stride, padding, output_padding)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    z, mean, invstd, gamma, beta = bn_inputs((33, 64, 32, 32), "channels_last", torch.float32, True, "cuda")
    g = randn(z.shape, "channels_last", device="cuda")
    for a, b in zip(ops.bn_relu_backward(g, z, mean, invstd, gamma, beta, 0.0),
                    ops.bn_relu_backward(g, z, mean, invstd, gamma, beta, 0.0)):
        assert torch.equal(a, b)
