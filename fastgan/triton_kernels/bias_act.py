"""bias_act (SPEC 3) and its backward, elementwise:

    y  = clamp(lrelu(x * x_mul + bias[c] * b_mul, slope) * gain, -clamp, clamp)
    gx = grad * x_mul * gain * (y > 0 ? 1 : slope) * (clamp < 0 or |y| < clamp)

(slope 1: linear, 0: relu; clamp < 0: none). A program takes BLOCK consecutive
elements of the dense tensor; the bias index is (offset // INNER) % C, with INNER
the product of the sizes after the biased dim (1 in channels-last, where the
channels are innermost).
"""

import math

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, autotune, check_like, compute_dtype, device_guard, fp64_scalar, layout

# 4 to 16 elements a thread (8 a thread with 4 warps spilled a few bytes on sm_80 in float16).
CONFIGS = [triton.Config({"BLOCK": 512}, num_warps=4), triton.Config({"BLOCK": 2048}, num_warps=8),
           triton.Config({"BLOCK": 4096}, num_warps=8)]
_INTERPRETER_CONFIG = triton.Config({"BLOCK": 64})


@triton.jit
def lrelu_gain_clamp(v, slope, gain, clamp):
    """The activation of bias_act on v = x * x_mul + bias * b_mul (in the compute type)."""
    y = tl.where(v > 0, v, v * slope) * gain
    return tl.where(clamp >= 0, tl.minimum(tl.maximum(y, -clamp), clamp), y)


@triton.jit
def grad_factor(y, slope, gain, x_mul, clamp):
    """The factor of grad in grad_x, from the output y."""
    f = tl.where(y > 0, x_mul * gain, x_mul * gain * slope)
    return tl.where(clamp < 0, f, tl.where(tl.abs(y) < clamp, f, 0.0))


@triton.jit
def _bias_act_kernel(x_ptr, b_ptr, y_ptr, numel, C, INNER, slope: "fp64", gain: "fp64", x_mul: "fp64",
                     b_mul: "fp64", clamp: "fp64", HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_t) * x_mul.to(acc_t)
    if HAS_BIAS:
        c = (offs // INNER) % C
        v += tl.load(b_ptr + c, mask=mask, other=0.0).to(acc_t) * b_mul.to(acc_t)
    y = lrelu_gain_clamp(v, slope.to(acc_t), gain.to(acc_t), clamp.to(acc_t))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_backward_kernel(grad_ptr, y_ptr, out_ptr, numel, slope: "fp64", gain: "fp64", x_mul: "fp64",
                              clamp: "fp64", BLOCK: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(y_ptr.dtype.element_ty)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_t)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(acc_t)
    f = grad_factor(y, slope.to(acc_t), gain.to(acc_t), x_mul.to(acc_t), clamp.to(acc_t))
    tl.store(out_ptr + offs, (g * f).to(out_ptr.dtype.element_ty), mask=mask)


_bias_act = autotune(CONFIGS, _INTERPRETER_CONFIG, key=["numel"])(_bias_act_kernel)
_bias_act_backward = autotune(CONFIGS, _INTERPRETER_CONFIG, key=["numel"])(_bias_act_backward_kernel)


def _grid(numel):
    return lambda meta: (triton.cdiv(numel, meta["BLOCK"]),)


def bias_act(x, bias, dim, slope, gain, x_mul, b_mul, clamp):
    """clamp(lrelu(x * x_mul + bias * b_mul) * gain) with the bias along dim, in x's layout."""
    if not 0 <= dim < x.dim():
        raise ValueError(f"fastgan triton: dim {dim} is out of range for x of shape {tuple(x.shape)}")
    name = layout(x, "x")
    if name == "channels_last" and dim != 1:
        raise ValueError(f"fastgan triton: a channels-last x takes its bias along dim 1, got dim {dim}")
    if bias is not None:
        if bias.shape != (x.shape[dim],) or not bias.is_contiguous():
            raise ValueError(f"fastgan triton: bias must be a contiguous vector of {x.shape[dim]} values, "
                             f"got shape {tuple(bias.shape)}")
        check_like(bias, "bias", x, "nchw")
    inner = 1 if name == "channels_last" else math.prod(x.shape[dim + 1:])
    y = torch.empty_like(x)
    if x.numel() > 0:
        with device_guard(x):
            _bias_act[_grid(x.numel())](
                x, x if bias is None else bias, y, x.numel(), x.shape[dim], inner, fp64_scalar(slope),
                fp64_scalar(gain), fp64_scalar(x_mul), fp64_scalar(b_mul), fp64_scalar(clamp),
                HAS_BIAS=bias is not None)
    return y


def bias_act_backward(grad, y, slope, gain, x_mul, clamp):
    """grad * x_mul * gain * act'(y) (zero where clamped), in y's layout."""
    if grad.shape != y.shape:
        raise ValueError(f"fastgan triton: grad has shape {tuple(grad.shape)}, y {tuple(y.shape)}")
    check_like(grad, "grad", y, layout(y, "y"))
    out = torch.empty_like(y)
    if y.numel() > 0:
        with device_guard(y):
            _bias_act_backward[_grid(y.numel())](grad, y, out, y.numel(), fp64_scalar(slope), fp64_scalar(gain),
                                                 fp64_scalar(x_mul), fp64_scalar(clamp))
    return out


def bias_act_backward_bias(grad, y, dim, slope, gain, x_mul, b_scale, clamp):
    """(grad_x, b_scale * its sum over all dims but dim): the elementwise kernel, then PyTorch's
    reduction in float32 (float64 for float64), rounded once, as the other backends."""
    from ..ops.bias_act import sum_except  # fastgan.ops loads this module: import when called

    grad_x = bias_act_backward(grad, y, slope, gain, x_mul, clamp)
    return grad_x, sum_except(grad_x, dim, b_scale)


_SCALARS = {"slope": "fp64", "gain": "fp64", "x_mul": "fp64"}
KERNEL_SPECS = [
    KernelSpec("bias_act", _bias_act_kernel,
               {"x_ptr": "*{dtype}", "b_ptr": "*{dtype}", "y_ptr": "*{dtype}", "numel": "i32", "C": "i32",
                "INNER": "i32", **_SCALARS, "b_mul": "fp64", "clamp": "fp64", "HAS_BIAS": "constexpr",
                "BLOCK": "constexpr"},
               (("bias", {"HAS_BIAS": True}, CONFIGS), ("no_bias", {"HAS_BIAS": False}, CONFIGS))),
    KernelSpec("bias_act_backward", _bias_act_backward_kernel,
               {"grad_ptr": "*{dtype}", "y_ptr": "*{dtype}", "out_ptr": "*{dtype}", "numel": "i32", **_SCALARS,
                "clamp": "fp64", "BLOCK": "constexpr"},
               (("any", {}, CONFIGS),)),
]
