"""Pixelwise feature normalization (SPEC 4) and its backward.

    y  = x * r,  r = rsqrt(mean_c(x^2) + eps)
    gx = r * g - x * r^3 * sum_c(g * x) / C

x of rank >= 2 is seen as [N, C, S] (S = the product of the trailing sizes). A
program owns BLOCK_P pixels and walks the channels in [BLOCK_C, BLOCK_P] tiles
twice: once to reduce over C, once to scale and store (the second read of a
program's pixels mostly hits L2).

Layouts: NCHW ("nchw": pixels contiguous, channel stride S) or channels-last
("channels_last": channels contiguous, pixel stride C). Channels-last 4-D
tensors, and tensors with S == 1 such as [N, C] latents, are one run of N * S
pixels of C channels: they run as the channels-last case with N = 1.
"""

import math

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, autotune, check_like, compute_dtype, device_guard, fp64_scalar, layout

# [BLOCK_C, BLOCK_P] tiles, long along the contiguous axis, 8 elements a thread.
# Channels-last takes 8 warps: with 4, ptxas spills a few bytes for some dtypes.
CONFIGS = {
    "nchw": [
        triton.Config({"BLOCK_C": 4, "BLOCK_P": 256}, num_warps=4),
        triton.Config({"BLOCK_C": 8, "BLOCK_P": 128}, num_warps=4),
        triton.Config({"BLOCK_C": 16, "BLOCK_P": 64}, num_warps=4),
        triton.Config({"BLOCK_C": 64, "BLOCK_P": 16}, num_warps=4),
    ],
    "channels_last": [
        triton.Config({"BLOCK_C": 16, "BLOCK_P": 128}, num_warps=8),
        triton.Config({"BLOCK_C": 32, "BLOCK_P": 64}, num_warps=8),
        triton.Config({"BLOCK_C": 64, "BLOCK_P": 32}, num_warps=8),
    ],
}
_INTERPRETER_CONFIG = triton.Config({"BLOCK_C": 4, "BLOCK_P": 8})
_LAYOUT_FLAG = {"nchw": False, "channels_last": True}


@triton.jit
def _rsqrt(v):
    # tl.math.rsqrt is approximate in float64 too (rsqrt.approx.f64): round correctly there.
    if v.dtype == tl.float64:
        r = 1.0 / tl.sqrt(v)
    else:
        r = tl.math.rsqrt(v)
    return r


@triton.jit
def _pixel_block(C, S, CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr):
    """The offset of this program's sample, and the offsets and mask of its pixels."""
    pid = tl.program_id(0)
    p_blocks = tl.cdiv(S, BLOCK_P)
    p = (pid % p_blocks).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    if CHANNELS_LAST:
        p_off = p * C
    else:
        p_off = p
    return (pid // p_blocks).to(tl.int64) * C * S, p_off, p < S


@triton.jit
def _channel_tile(c0, C, S, p_off, p_mask, CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets and mask of the [BLOCK_C, BLOCK_P] tile of channels c0 .. c0 + BLOCK_C."""
    c = c0 + tl.arange(0, BLOCK_C)
    if CHANNELS_LAST:
        c_off = c.to(tl.int64)
    else:
        c_off = c.to(tl.int64) * S
    return c_off[:, None] + p_off[None, :], (c < C)[:, None] & p_mask[None, :]


@triton.jit
def _pixel_norm_kernel(x_ptr, y_ptr, C, S, eps: "fp64",
                       CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    base, p_off, p_mask = _pixel_block(C, S, CHANNELS_LAST, BLOCK_P)
    x_ptr += base
    y_ptr += base
    # Per-lane partial sums; one cross-lane reduction after the loop.
    sum_xx = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    for c0 in range(0, C, BLOCK_C):
        offs, mask = _channel_tile(c0, C, S, p_off, p_mask, CHANNELS_LAST, BLOCK_C)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_t)
        sum_xx += x * x
    r = _rsqrt(tl.sum(sum_xx, axis=0) / C + tl.cast(eps, acc_t))[None, :]
    for c0 in range(0, C, BLOCK_C):
        offs, mask = _channel_tile(c0, C, S, p_off, p_mask, CHANNELS_LAST, BLOCK_C)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_t)
        tl.store(y_ptr + offs, (x * r).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pixel_norm_backward_kernel(grad_ptr, x_ptr, out_ptr, C, S, eps: "fp64",
                                CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    base, p_off, p_mask = _pixel_block(C, S, CHANNELS_LAST, BLOCK_P)
    grad_ptr += base
    x_ptr += base
    out_ptr += base
    sum_xx = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    sum_gx = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    for c0 in range(0, C, BLOCK_C):
        offs, mask = _channel_tile(c0, C, S, p_off, p_mask, CHANNELS_LAST, BLOCK_C)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_t)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_t)
        sum_xx += x * x
        sum_gx += g * x
    r = _rsqrt(tl.sum(sum_xx, axis=0) / C + tl.cast(eps, acc_t))
    coef = (r * r * r * tl.sum(sum_gx, axis=0) / C)[None, :]
    r = r[None, :]
    for c0 in range(0, C, BLOCK_C):
        offs, mask = _channel_tile(c0, C, S, p_off, p_mask, CHANNELS_LAST, BLOCK_C)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_t)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_t)
        tl.store(out_ptr + offs, (r * g - x * coef).to(out_ptr.dtype.element_ty), mask=mask)


def _autotuned(kernel):
    """{layout: `kernel` autotuned over that layout's tiles}."""
    return {name: autotune(configs, _INTERPRETER_CONFIG, key=["C", "S"])(kernel) for name, configs in CONFIGS.items()}


_pixel_norm = _autotuned(_pixel_norm_kernel)
_pixel_norm_backward = _autotuned(_pixel_norm_backward_kernel)


def _launch(kernels, x, tensors, eps):
    """Run kernel(*tensors, C, S, eps) over x seen as [N, C, S] in its layout."""
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    name = layout(x, "x")
    if s == 1:  # [N, C] rows: channels contiguous, like channels-last
        name = "channels_last"
    if name == "channels_last":
        n, s = 1, n * s
    with device_guard(x):
        kernels[name][lambda meta: (n * triton.cdiv(s, meta["BLOCK_P"]),)](
            *tensors, c, s, fp64_scalar(eps), CHANNELS_LAST=_LAYOUT_FLAG[name])


def _check_rank(x):
    if x.dim() < 2:
        raise ValueError(f"fastgan triton: x must have at least 2 dimensions, got shape {tuple(x.shape)}")


def pixel_norm(x, eps):
    """x * rsqrt(mean over dim 1 of x^2 + eps), in x's layout."""
    _check_rank(x)
    y = torch.empty_like(x)
    if x.numel() > 0:
        _launch(_pixel_norm, x, (x, y), eps)
    return y


def pixel_norm_backward(grad, x, eps):
    """The gradient of `pixel_norm` with respect to x, in x's layout."""
    _check_rank(x)
    if grad.shape != x.shape:
        raise ValueError(f"fastgan triton: grad has shape {tuple(grad.shape)}, x {tuple(x.shape)}")
    check_like(grad, "grad", x, layout(x, "x"))
    out = torch.empty_like(x)
    if x.numel() > 0:
        _launch(_pixel_norm_backward, x, (grad, x, out), eps)
    return out


def _spec(name, fn, pointers):
    """The KernelSpec of a kernel launched by `_launch`."""
    signature = {p: "*{dtype}" for p in pointers}
    signature.update({"C": "i32", "S": "i32", "eps": "fp64",
                      "CHANNELS_LAST": "constexpr", "BLOCK_C": "constexpr", "BLOCK_P": "constexpr"})
    return KernelSpec(name, fn, signature, tuple(
        (layout_name, {"CHANNELS_LAST": flag}, CONFIGS[layout_name]) for layout_name, flag in _LAYOUT_FLAG.items()))


KERNEL_SPECS = [
    _spec("pixel_norm", _pixel_norm_kernel, ("x_ptr", "y_ptr")),
    _spec("pixel_norm_backward", _pixel_norm_backward_kernel, ("grad_ptr", "x_ptr", "out_ptr")),
]
