"""Fused bias + activation + gain + clamp (SPEC 3), StyleGAN2's `bias_act`:

    y = clamp(act(x * x_mul + bias * b_mul) * gain, -clamp, clamp)

with the bias broadcast along `dim`. act is linear, relu or lrelu: all three are a
leaky ReLU of slope 1, 0 or alpha, which is what the kernels take. `x_mul` and
`b_mul` carry the runtime scales of the equalized layers (fastgan.nn.equalized):
the layer runs its conv/GEMM on the raw weight and this one pass applies the
weight scale, the bias scale, the activation and its gain.

Gain: the default is StyleGAN2's (1 for linear, sqrt(2) for relu and lrelu);
ProGAN applies no gain after the activation (SPEC 3), so the equalized modules
always pass theirs (act_gain, default 1).

Plain calls on the cpu and cuda backends go straight to the extensions' kernel op, whose autograd
is registered in C++ (csrc/autograd.h: one dispatch and a C++ graph node per call); the triton
backend and traced code use the custom ops below, with the same formulas.

Derivatives: the backward is the fused op `bias_act_backward(grad, y)`, which
reads the output y (its signs are those of the pre-activation, gain > 0 and
slope >= 0). It is linear in grad and piecewise constant in y, so its own
backward is the same op applied to the incoming gradient: every order fused.
grad_bias is torch.sum of grad_x (times b_mul / x_mul), in float32 (sum_except).
"""

import math

import torch
import torch.nn.functional as F

from .._backend import resolve
from .._checks import as_layout, check_device, check_tensor, empty, memory_format
from ._batch_norm import call
from ._dispatch import _traced, fused_op, kernels

ACTIVATIONS = ("linear", "relu", "lrelu")
DEFAULT_ALPHA = 0.2  # lrelu slope
DEFAULT_GAIN = {"linear": 1.0, "relu": math.sqrt(2), "lrelu": math.sqrt(2)}  # StyleGAN2's def_gain


def act_params(act, alpha=None, gain=None, clamp=None):
    """Checked (slope, gain, clamp) of an activation: clamp -1 means none."""
    if act not in ACTIVATIONS:
        raise ValueError(f"fastgan: act must be one of {ACTIVATIONS}, got {act!r}")
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    if not alpha >= 0.0:
        raise ValueError(f"fastgan: alpha (the lrelu slope) must be >= 0, got {alpha}")
    slope = {"linear": 1.0, "relu": 0.0, "lrelu": alpha}[act]
    gain = DEFAULT_GAIN[act] if gain is None else float(gain)
    if not gain > 0.0:
        raise ValueError(f"fastgan: gain must be positive, got {gain}")
    if clamp is not None and not float(clamp) >= 0.0:
        raise ValueError(f"fastgan: clamp must be None or >= 0, got {clamp}")
    return slope, gain, -1.0 if clamp is None else float(clamp)


def bias_shape(x, dim):
    """The shape that broadcasts a [x.shape[dim]] bias along dim."""
    return [-1 if i == dim else 1 for i in range(x.dim())]


def sum_except(t, dim, scale=1.0):
    """The sum of t over all dims but `dim`, times scale (a copy of t when it is 1-D: sum([]) would
    sum everything). Accumulated and scaled in float32 (float64 for float64), rounded to t's dtype
    once: a float16 / bfloat16 sum rounded before the scale would be rounded twice."""
    dims = [i for i in range(t.dim()) if i != dim]
    acc_t = torch.float64 if t.dtype == torch.float64 else torch.float32
    s = t.sum(dims, dtype=acc_t) if dims else t.to(acc_t, copy=True)
    return (s * scale if scale != 1 else s).to(t.dtype)


def bias_act_reference(x, bias=None, act="linear", alpha=None, gain=None, clamp=None, dim=1, x_mul=1.0, b_mul=1.0):
    """Eager PyTorch in float32 (float64 for float64 inputs), as StyleGAN2's reference. Out in x's
    dtype promoted with the bias's, as eager's x + bias (a bfloat16 x with a float32 bias: float32)."""
    slope, gain, clamp = act_params(act, alpha, gain, clamp)
    out_dtype = x.dtype if bias is None else torch.promote_types(x.dtype, bias.dtype)
    xf = x.to(torch.float64 if out_dtype == torch.float64 else torch.float32)
    v = xf * x_mul if x_mul != 1 else xf
    if bias is not None:
        v = v + (bias.to(xf.dtype) * b_mul).reshape(bias_shape(x, dim % x.dim()))
    if act == "relu":
        v = F.relu(v)
    elif act == "lrelu":
        v = F.leaky_relu(v, slope)
    v = v * gain if gain != 1 else v
    if clamp >= 0:
        v = v.clamp(-clamp, clamp)
    return v.to(out_dtype)


def bias_act(x, bias=None, act="linear", alpha=None, gain=None, clamp=None, dim=1, x_mul=1.0, b_mul=1.0,
             impl=None):
    """clamp(act(x * x_mul + bias * b_mul) * gain): bias [x.shape[dim]] or None; act linear, relu
    or lrelu (slope alpha, default 0.2); gain defaults to 1 (linear) or sqrt(2); clamp None or >= 0."""
    check_tensor(x, "x", min_ndim=1)
    ndim = x.dim()
    if not -ndim <= dim < ndim:
        raise ValueError(f"fastgan: dim {dim} is out of range for x of shape {tuple(x.shape)}")
    dim %= ndim
    if bias is not None:
        _check_bias(bias, x, dim)
        if bias.dtype != x.dtype:
            x, bias = promote(x, bias)
    slope, gain, clamp = act_params(act, alpha, gain, clamp)
    x_mul, b_mul = float(x_mul), float(b_mul)
    impl = resolve(impl, x.device)
    if impl == "reference":
        return bias_act_reference(x, bias, act, alpha, gain, None if clamp < 0 else clamp, dim, x_mul, b_mul)
    if impl != "triton" and not _traced():  # the extensions' kernel op, with its autograd in C++ (csrc/autograd.h)
        return _bias_act_kernel(x, bias, dim, slope, gain, x_mul, b_mul, clamp, impl)
    return _bias_act(x, bias, dim, slope, gain, x_mul, b_mul, clamp, impl)


def _check_bias(bias, x, dim):
    if (isinstance(bias, torch.Tensor) and bias.dim() == 1 and bias.dtype == x.dtype and bias.device == x.device
            and bias.shape[0] == x.shape[dim]):
        return  # the common case in one test: these checks run on every call
    check_tensor(bias, "bias", ndim=1)  # else the failing check raises its own error
    check_device(bias, "bias", x, "x")
    if bias.shape[0] != x.shape[dim]:
        raise ValueError(f"fastgan: bias must have shape ({x.shape[dim]},) (x.shape[{dim}]), got {tuple(bias.shape)}")


def promote(x, bias):
    """x and bias in the dtype eager's x + bias gives them (torch.promote_types: a float32 bias with a
    bfloat16 / float16 x, as under torch.autocast after a convolution, gives float32), so that the op
    returns what the eager code it replaces returns. The kernels take one dtype: this costs a cast of
    the lower-precision operand (x: one more pass over it) on this uncommon path only; the equalized
    layers cast their bias to x's dtype under autocast instead, as autocast casts a conv's bias."""
    dtype = torch.promote_types(x.dtype, bias.dtype)
    return x.to(dtype), bias.to(dtype)  # differentiable: each gradient comes back in its input's dtype


def _layout(x, dim):
    """Channels-last only with the bias along the channels (then the innermost dim)."""
    return memory_format(x) if dim == 1 else torch.contiguous_format


def _bias_act_kernel(x: torch.Tensor, bias: torch.Tensor | None, dim: int, slope: float, gain: float,
                     x_mul: float, b_mul: float, clamp: float, impl: str) -> torch.Tensor:
    if bias is not None:
        bias = bias.contiguous()
    if not x.is_contiguous():  # the common case skips the layout's own checks
        x = as_layout(x, _layout(x, dim))
    return kernels(impl).bias_act(x, bias, dim, slope, gain, x_mul, b_mul, clamp)


def _bias_act_backward_kernel(grad: torch.Tensor, y: torch.Tensor, slope: float, gain: float, x_mul: float,
                              clamp: float, impl: str) -> torch.Tensor:
    if not (y.is_contiguous() and grad.is_contiguous()):
        fmt = memory_format(y)
        grad, y = as_layout(grad, fmt), as_layout(y, fmt)
    return kernels(impl).bias_act_backward(grad, y, slope, gain, x_mul, clamp)


def _bias_act_fake(x, bias, dim, slope, gain, x_mul, b_mul, clamp, impl):
    return empty(x.shape, x, _layout(x, dim))


def _bias_act_backward_fake(grad, y, slope, gain, x_mul, clamp, impl):
    return empty(y.shape, y, memory_format(y))


def _save_output(ctx, inputs, output):
    ctx.save_for_backward(output)
    # The double backward sends no gradient to y (bias_act_backward is constant in it): skip the
    # backward then instead of running it on zeros.
    ctx.set_materialize_grads(False)
    ctx.params = inputs[2:]  # one attribute, not seven: each costs host time on every call
    clamp = inputs[7]
    if clamp >= 0:
        # The backward finds clamped outputs by |y| < clamp: compare with the clamp as rounded in y's
        # dtype, which is what a clamped y holds (float16 stores 0.8 as 0.7998).
        ctx.params = (*inputs[2:7], float(torch.tensor(clamp, dtype=output.dtype)), inputs[8])


def _bias_act_bwd(ctx, grad):
    if grad is None:
        return (None,) * 9
    (y,) = ctx.saved_tensors
    dim, slope, gain, x_mul, b_mul, clamp, impl = ctx.params
    need_x, need_bias = ctx.needs_input_grad[:2]  # need_bias: bias is a tensor that requires grad
    if need_bias and x_mul != 0 and not torch.is_grad_enabled():
        # Not differentiated again: grad_x and the bias's sum in one pass over grad and y.
        grad_x, grad_bias = call(bias_act_backward_bias, grad, y, dim, slope, gain, x_mul, b_mul / x_mul, clamp,
                                 impl)
        return grad_x if need_x else None, grad_bias, None, None, None, None, None, None, None
    grad_x = grad_bias = None
    if need_x or need_bias:
        grad_x = _bias_act_backward(grad, y, slope, gain, x_mul, clamp, impl)
    if need_bias:
        # The bias gets grad_x / x_mul * b_mul (a second fused pass only for x_mul == 0).
        grad_v = grad_x if x_mul != 0 else _bias_act_backward(grad, y, slope, gain, 1.0, clamp, impl)
        grad_bias = sum_except(grad_v, dim, b_mul / (x_mul if x_mul != 0 else 1.0))
    return grad_x, grad_bias, None, None, None, None, None, None, None


def _save_y(ctx, inputs, output):
    ctx.slope, ctx.gain, ctx.x_mul, ctx.clamp, ctx.impl = inputs[2:]
    ctx.save_for_backward(inputs[1])


def _bias_act_backward_bwd(ctx, gg):
    """Linear in grad with a derivative piecewise constant in y: the same op, and nothing for y."""
    (y,) = ctx.saved_tensors
    d_grad = None
    if ctx.needs_input_grad[0]:
        d_grad = _bias_act_backward(gg, y, ctx.slope, ctx.gain, ctx.x_mul, ctx.clamp, ctx.impl)
    return d_grad, None, None, None, None, None, None


@torch.library.custom_op("fastgan::bias_act_backward_bias", mutates_args=())
def bias_act_backward_bias(grad: torch.Tensor, y: torch.Tensor, dim: int, slope: float, gain: float, x_mul: float,
                           b_scale: float, clamp: float, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_bias), grad_bias = b_scale * sum_except(grad_x, dim), from one pass of the kernels.
    Not differentiable: the backward calls it only when it is not differentiated again."""
    if not (y.is_contiguous() and grad.is_contiguous()):
        grad, y = as_layout(grad, memory_format(y)), as_layout(y, memory_format(y))
    return kernels(impl).bias_act_backward_bias(grad, y, dim, slope, gain, x_mul, b_scale, clamp)


@bias_act_backward_bias.register_fake
def _(grad, y, dim, slope, gain, x_mul, b_scale, clamp, impl):
    return empty(y.shape, y, memory_format(y)), y.new_empty(y.shape[dim])


_bias_act = fused_op("bias_act", _bias_act_kernel, _bias_act_fake, _bias_act_bwd, _save_output)
_bias_act_backward = fused_op("bias_act_backward", _bias_act_backward_kernel, _bias_act_backward_fake,
                              _bias_act_backward_bwd, _save_y)
