"""bias_act_pixel_norm (SPEC 3 + 4) and its backward:

    y  = a * r,  a = lrelu(x + bias[c], slope) * gain,  r = rsqrt(mean_c(a^2) + eps)
    gx = gain * (a > 0 ? 1 : slope) * (r * g - a * r^3 * sum_c(g * a) / C)

The pixel_norm kernels' tiling (pixel_norm.py) with the bias and activation
applied on load: a is recomputed in the second pass, never stored.
"""

import math

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, check_like, compute_dtype, device_guard, fp64_scalar, layout
from .bias_act import lrelu_gain_clamp
from .pixel_norm import _LAYOUT_FLAG, CONFIGS, _autotuned, _channel_tile, _pixel_block, _rsqrt


@triton.jit
def _activation(x_ptr, b_ptr, c0, C, S, p_off, p_mask, slope, gain,
                CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr):
    """a of the [BLOCK_C, BLOCK_P] tile of channels c0 .. c0 + BLOCK_C (0 outside C), its offsets and mask."""
    offs, mask = _channel_tile(c0, C, S, p_off, p_mask, CHANNELS_LAST, BLOCK_C)
    c = c0 + tl.arange(0, BLOCK_C)
    acc_t = slope.dtype
    b = tl.load(b_ptr + c, mask=c < C, other=0.0).to(acc_t)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_t)
    a = lrelu_gain_clamp(x + b[:, None], slope, gain, -1.0)
    return tl.where(mask, a, 0.0), offs, mask


@triton.jit
def _bias_act_pixel_norm_kernel(x_ptr, b_ptr, y_ptr, C, S, slope: "fp64", gain: "fp64", eps: "fp64",
                                CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    base, p_off, p_mask = _pixel_block(C, S, CHANNELS_LAST, BLOCK_P)
    x_ptr += base
    y_ptr += base
    slope = slope.to(acc_t)
    gain = gain.to(acc_t)
    sum_aa = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    for c0 in range(0, C, BLOCK_C):
        a, offs, mask = _activation(x_ptr, b_ptr, c0, C, S, p_off, p_mask, slope, gain, CHANNELS_LAST, BLOCK_C)
        sum_aa += a * a
    r = _rsqrt(tl.sum(sum_aa, axis=0) / C + tl.cast(eps, acc_t))[None, :]
    for c0 in range(0, C, BLOCK_C):
        a, offs, mask = _activation(x_ptr, b_ptr, c0, C, S, p_off, p_mask, slope, gain, CHANNELS_LAST, BLOCK_C)
        tl.store(y_ptr + offs, (a * r).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_pixel_norm_backward_kernel(grad_ptr, x_ptr, b_ptr, out_ptr, C, S, slope: "fp64", gain: "fp64",
                                         eps: "fp64", CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr,
                                         BLOCK_P: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    base, p_off, p_mask = _pixel_block(C, S, CHANNELS_LAST, BLOCK_P)
    grad_ptr += base
    x_ptr += base
    out_ptr += base
    slope = slope.to(acc_t)
    gain = gain.to(acc_t)
    sum_aa = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    sum_ga = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    for c0 in range(0, C, BLOCK_C):
        a, offs, mask = _activation(x_ptr, b_ptr, c0, C, S, p_off, p_mask, slope, gain, CHANNELS_LAST, BLOCK_C)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_t)
        sum_aa += a * a
        sum_ga += g * a
    r = _rsqrt(tl.sum(sum_aa, axis=0) / C + tl.cast(eps, acc_t))
    coef = (r * r * r * tl.sum(sum_ga, axis=0) / C)[None, :]
    r = r[None, :]
    for c0 in range(0, C, BLOCK_C):
        a, offs, mask = _activation(x_ptr, b_ptr, c0, C, S, p_off, p_mask, slope, gain, CHANNELS_LAST, BLOCK_C)
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_t)
        m = tl.where(a > 0, gain, gain * slope)
        tl.store(out_ptr + offs, ((r * g - a * coef) * m).to(out_ptr.dtype.element_ty), mask=mask)


_forward = _autotuned(_bias_act_pixel_norm_kernel)
_backward = _autotuned(_bias_act_pixel_norm_backward_kernel)


def _launch(kernels, x, bias, tensors, slope, gain, eps):
    """Run kernel(*tensors, C, S, slope, gain, eps) over x seen as [N, C, S] in its layout."""
    if x.dim() < 2:
        raise ValueError(f"fastgan triton: x must have at least 2 dimensions, got shape {tuple(x.shape)}")
    name = layout(x, "x")
    n, c = x.shape[:2]
    if bias.shape != (c,) or not bias.is_contiguous():
        raise ValueError(f"fastgan triton: bias must be a contiguous vector of {c} values, got {tuple(bias.shape)}")
    check_like(bias, "bias", x, "nchw")
    s = math.prod(x.shape[2:])
    if s == 1:  # [N, C] rows: channels contiguous, like channels-last
        name = "channels_last"
    if name == "channels_last":
        n, s = 1, n * s
    out = torch.empty_like(x)
    if x.numel() > 0:
        with device_guard(x):
            kernels[name][lambda meta: (n * triton.cdiv(s, meta["BLOCK_P"]),)](
                *tensors, out, c, s, fp64_scalar(slope), fp64_scalar(gain), fp64_scalar(eps),
                CHANNELS_LAST=_LAYOUT_FLAG[name])
    return out


def bias_act_pixel_norm(x, bias, slope, gain, eps):
    """pixel_norm(lrelu(x + bias, slope) * gain) over dim 1, in x's layout."""
    return _launch(_forward, x, bias, (x, bias), slope, gain, eps)


def bias_act_pixel_norm_backward(grad, x, bias, slope, gain, eps):
    """The gradient of `bias_act_pixel_norm` with respect to x, in x's layout."""
    if grad.shape != x.shape:
        raise ValueError(f"fastgan triton: grad has shape {tuple(grad.shape)}, x {tuple(x.shape)}")
    check_like(grad, "grad", x, layout(x, "x"))
    return _launch(_backward, x, bias, (grad, x, bias), slope, gain, eps)


def _spec(name, fn, pointers):
    signature = {p: "*{dtype}" for p in pointers}
    signature.update({"C": "i32", "S": "i32", "slope": "fp64", "gain": "fp64", "eps": "fp64",
                      "CHANNELS_LAST": "constexpr", "BLOCK_C": "constexpr", "BLOCK_P": "constexpr"})
    return KernelSpec(name, fn, signature, tuple(
        (layout_name, {"CHANNELS_LAST": flag}, CONFIGS[layout_name]) for layout_name, flag in _LAYOUT_FLAG.items()))


KERNEL_SPECS = [
    _spec("bias_act_pixel_norm", _bias_act_pixel_norm_kernel, ("x_ptr", "b_ptr", "y_ptr")),
    _spec("bias_act_pixel_norm_backward", _bias_act_pixel_norm_backward_kernel,
          ("grad_ptr", "x_ptr", "b_ptr", "out_ptr")),
]
