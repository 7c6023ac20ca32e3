"""What the fused convolution + BatchNorm2d + activation blocks share: argument checks, nn.BatchNorm2d's
running-statistics update, and the fused BN + activation backward as traceable ops.

Used by conv_transpose_bn_relu (the generator's block) and conv2d_bn_leaky_relu (the
discriminator's). The activation is act(u) = u > 0 ? u : negative_slope * u: ReLU at slope 0.
"""

from typing import Optional

import torch

from .._checks import as_layout, check_same, check_tensor, empty, memory_format
from ._dispatch import _traced, fused_op, kernels

LAYOUT = torch.channels_last


def dense_weight(weight):
    """The convolution weight as the kernels take it: dense in its own layout. cuDNN runs channels-last,
    so a channels-last weight (model.to(memory_format=torch.channels_last)) costs it no copy per call;
    the kernels give its gradient back in the same layout."""
    return as_layout(weight, memory_format(weight))


def weight_grad_fake(weight):
    """The gradient of `weight` as the kernel ops return it (in dense_weight's layout)."""
    return empty(weight.shape, weight, memory_format(weight))


def pair(v, name, minimum):
    # The common cases first (~1 us of host time less a call): an int, or a module's pair of ints.
    if type(v) is int and v >= minimum:
        return [v, v]
    if type(v) in (tuple, list) and len(v) == 2:
        a, b = v
        if type(a) is int and type(b) is int and a >= minimum and b >= minimum:
            return [a, b]
    p = (v, v) if isinstance(v, int) else tuple(v)
    if len(p) != 2 or not all(isinstance(i, int) and i >= minimum for i in p):
        raise ValueError(f"fastgan: {name} must be an int or a pair of ints >= {minimum}, got {v!r}")
    return list(p)


def check_channel_vector(t, name, c, x, device=None):
    if t is None:
        return
    check_tensor(t, name, ndim=1)
    if t.shape[0] != c:
        raise ValueError(f"fastgan: {name} must have shape [{c}] (the output channels), got {tuple(t.shape)}")
    if t.device != (device or x.device):
        raise ValueError(f"fastgan: {name} is on {t.device} but x is on {x.device}")


def check_block_arguments(x, weight, in_dim, bias, bn_weight, bn_bias, running_mean, running_var, training, momentum,
                          num_batches_tracked):
    """x, the convolution's weight (C_in along dim `in_dim`: 0 for a transposed convolution, 1 for
    a direct one), the per-channel vectors and the running-statistics options."""
    check_tensor(x, "x", ndim=4)
    check_tensor(weight, "weight", ndim=4)
    check_same(weight, "weight", x, "x")
    # Only the batch may be empty (as torch's convolutions mostly demand; the backends' kernels
    # disagreed on the rest: zeros convolved from nothing, or their own errors).
    if min(x.shape[1:]) == 0:
        raise ValueError(f"fastgan: x must have channels and pixels (only its batch may be empty), "
                         f"got {tuple(x.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"fastgan: weight must not be empty, got {tuple(weight.shape)}")
    if weight.shape[in_dim] != x.shape[1]:
        dims = "[C_in, C_out, kH, kW]" if in_dim == 0 else "[C_out, C_in, kH, kW]"
        raise ValueError(f"fastgan: weight must be {dims} with C_in = {x.shape[1]} (x's channels), "
                         f"got {tuple(weight.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dtype != x.dtype):
        check_tensor(bias, "bias", ndim=1)
        check_same(bias, "bias", x, "x")
    c, device = weight.shape[1 - in_dim], x.device
    check_channel_vector(bias, "bias", c, x, device)
    check_channel_vector(bn_weight, "bn_weight", c, x, device)
    check_channel_vector(bn_bias, "bn_bias", c, x, device)
    check_channel_vector(running_mean, "running_mean", c, x, device)
    check_channel_vector(running_var, "running_var", c, x, device)
    if (running_mean is None) != (running_var is None):
        raise ValueError("fastgan: running_mean and running_var must be given together (or both None)")
    if num_batches_tracked is not None and not isinstance(num_batches_tracked, torch.Tensor):
        raise TypeError("fastgan: num_batches_tracked must be a tensor or None, got "
                        f"{type(num_batches_tracked).__name__}")
    if training and momentum is None and num_batches_tracked is None and running_mean is not None:
        raise ValueError("fastgan: momentum=None (cumulative average) needs num_batches_tracked")


def check_batch(shape, synchronized=False):
    """The output shape of the convolution: no empty channel or pixel dimension, and (F.batch_norm's
    check, with its words) more than one value per channel for batch statistics. An empty batch
    passes, as nn.BatchNorm2d takes it (the blocks give it to the eager ops: empty_batch). With
    statistics `synchronized` across processes, this process's batch may also hold one value per
    channel, as nn.SyncBatchNorm allows: the count that matters is every process's (and reading it
    would sync the host)."""
    if min(shape[1:]) <= 0:
        raise ValueError(f"fastgan: the output of the convolution would be empty: {shape}")
    if not synchronized and shape[0] * shape[2] * shape[3] == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {torch.Size(shape)}")


def empty_batch(z_shape):
    """Whether a block's batch is empty (N = 0): then it runs its reference, the eager ops, which give
    what nn.Sequential(conv, BatchNorm2d, act) gives: an empty output whose gradients are zeros, the
    running statistics unchanged and the batch counted in num_batches_tracked. No kernel has work."""
    return z_shape[0] == 0


def momentum_factor(training, running_mean, momentum, num_batches_tracked):
    """nn.BatchNorm2d's exponential_average_factor; counts the batch in num_batches_tracked (the
    reference's; the fused blocks do both in the bn_finalize kernel, without a host sync)."""
    if not training or running_mean is None:
        return 0.0 if momentum is None else momentum
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:
            return 1.0 / float(num_batches_tracked)
    return 0.0 if momentum is None else momentum


NO_UPDATE = (None, None, None, 0.0)


def running_update(training, running_mean, running_var, num_batches_tracked, momentum):
    """bn_finalize's (running_mean, running_var, num_batches_tracked, momentum): what a training call
    updates in place (momentum -1 for None, the cumulative average), NO_UPDATE when nothing is."""
    if not training or running_mean is None:
        return NO_UPDATE
    return running_mean, running_var, num_batches_tracked, -1.0 if momentum is None else float(momentum)


def finalize(k, mean, var, gamma, beta, eps, bias, update, count):
    """(invstd, scale, shift) from the batch statistics, with the running statistics updated when
    `update` (running_update) asks: one kernel op."""
    rm, rv, nbt, momentum = update
    return k.bn_finalize(mean, var, gamma, beta, eps, rm, rv, nbt, bias, momentum, count)


def cpp_block(impl):
    """Whether a training call goes to the backend's block op with its C++ autograd
    (csrc/block_autograd.h): plain calls on the compiled backends. Traced code keeps the custom ops
    (torch.compile, opcheck see them), and triton's kernels are Python host code."""
    return impl != "triton" and not _traced()


def block_op(name, kernel, eager_kernel, fake, backward, setup_context):
    """fused_op for a block whose training forward updates running statistics: plain calls run
    `eager_kernel(*args, *update)`, which updates them in its bn_finalize (running_update); traced
    code calls the op (`kernel`, which leaves them alone) and then `bn_running_stats_update`."""
    train = fused_op(name, kernel, fake, backward, setup_context, eager_kernel)

    def run(*args, update=NO_UPDATE, bias=None, count=0):
        if not _traced():
            return train(*args, eager_args=update)
        out = train.op(*args)
        if update is not NO_UPDATE:
            update_running_stats(out[2], out[3], bias, update, count, args[-1])
        return out

    run.op = train.op
    return run


def saved_input(x, x_kernel):
    """x as the kernels took it (x_kernel), to save for the backward instead of x when the layout
    conversion made a copy (no second conversion); empty when it did not: an output of a custom
    op may not alias an input."""
    return x_kernel if x_kernel is not x else x.new_empty((0,))


def saved_input_fake(x, fmt):
    """saved_input's fake: what the kernels' conversion of x to layout `fmt` gives."""
    return x.new_empty((0,)) if x.is_contiguous(memory_format=fmt) else empty(x.shape, x, fmt)


def stats_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def in_stats_dtype(x, *tensors):
    """`tensors` (None or per-channel vectors) in stats_dtype(x), differentiably; skips the .to call
    (~0.8 us of host time each) where they already are."""
    dtype = stats_dtype(x)
    return tuple([t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors])


def needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def call(op, *args):
    """A custom op without autograd: its Python body in eager code (no dispatch), the op when traced."""
    return op(*args) if _traced() else op._init_fn(*args)


def save_block(ctx, x, weight, bias, gamma, beta, z, mean, invstd, x_saved):
    """What a twice-differentiable block's backward keeps (conv2d_bn_leaky_relu, the VBN blocks): the
    kernels' x (x_saved, x converted to channels-last, when the op made it), the parameters and the
    forward's z and statistics for the fused backward, and x as given for the differentiable fallback."""
    ctx.has_bias = bias is not None
    ctx.x_converted = bool(x_saved.numel())
    ctx.save_for_backward(x_saved if ctx.x_converted else x, weight, gamma, beta, z, mean, invstd,
                          x if ctx.x_converted else None, bias)


def saved_block_inputs(ctx):
    """For save_block's differentiable fallback: the block's inputs [x, weight, bias, gamma, beta], x as
    the call gave it, and which of them want a gradient."""
    x_kernel, weight, gamma, beta, _, _, _, x_orig, bias = ctx.saved_tensors
    inputs = [x_orig if ctx.x_converted else x_kernel, weight, bias, gamma, beta]
    return inputs, [t is not None and need for t, need in zip(inputs, ctx.needs_input_grad[:5])]


def wanted_grads(y, inputs, wanted, grad_y):
    """A differentiable fallback's gradients: torch.autograd.grad of y for the inputs flagged in `wanted`
    (create_graph: differentiable again), None for the others."""
    grads = iter(torch.autograd.grad(y, [t for t, w in zip(inputs, wanted) if w], grad_y, create_graph=True))
    return [next(grads) if w else None for w in wanted]


def layout_of(t):
    return torch.contiguous_format if t.is_contiguous() else LAYOUT


def cancelled_bias_grad(weight, channels):
    """The conv bias gradient of a training block: exactly zero, as batch statistics remove any
    per-channel shift of z, so the bias does not reach y (eager's sum over grad_z gives rounding
    noise, and costs a pass over it)."""
    return weight.new_zeros(channels)


def folded(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, dtype, out_dim):
    """Eval: the running statistics folded into the convolution, W * s over its output-channel
    dim `out_dim` and beta + (bias - running_mean) * s, s = gamma * rsqrt(running_var + eps);
    differentiable torch code."""
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    s = torch.rsqrt(running_var.to(stats) + eps)
    if bn_weight is not None:
        s = s * bn_weight.to(stats)
    shift = -running_mean.to(stats) * s if bias is None else (bias.to(stats) - running_mean.to(stats)) * s
    if bn_bias is not None:
        shift = shift + bn_bias.to(stats)
    view = [1] * weight.dim()
    view[out_dim] = -1
    return (weight.to(stats) * s.view(view)).to(dtype), shift.to(dtype)


def run_without_grad(op, body, args, bias, update, count):
    """A block's training forward when no gradient is needed: `body(*args, bias, update)`, which
    updates the running statistics in its bn_finalize, in plain calls; in traced code the custom op
    `op` (the body without the update) and then bn_running_stats_update. Returns y."""
    if not _traced():
        return body(*args, bias, update)[0]
    y, mean, var = op(*args)
    if update is not NO_UPDATE:
        update_running_stats(mean, var, bias, update, count, args[-1])
    return y


def update_running_stats(mean, var, bias, update, count, impl):
    """Traced code's running-statistics update (running_update), after the block's op."""
    rm, rv, nbt, momentum = update
    call(_update_running_stats, rm, rv, nbt, mean.detach(), var.detach(), None if bias is None else bias.detach(),
         momentum, count, impl)


@torch.library.custom_op("fastgan::bn_running_stats_update",
                         mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def _update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor,
                          num_batches_tracked: Optional[torch.Tensor], mean: torch.Tensor, var: torch.Tensor,
                          bias: Optional[torch.Tensor], momentum: float, count: int, impl: str) -> None:
    """nn.BatchNorm2d's update from the batch mean (of z without the conv bias) and biased variance:
    the update half of the backend's bn_finalize (momentum -1: the cumulative average)."""
    kernels(impl).bn_finalize(mean, var, None, None, 1.0, running_mean, running_var, num_batches_tracked, bias,
                              momentum, count)


@_update_running_stats.register_fake
def _(running_mean, running_var, num_batches_tracked, mean, var, bias, momentum, count, impl):
    return None


@torch.library.custom_op("fastgan::bn_relu_backward", mutates_args=())
def bn_relu_backward(grad_y: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                     gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor], negative_slope: float,
                     impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused BN + activation backward (csrc/schemas.h) as a traceable op: grad_z, grad_gamma,
    grad_beta."""
    grad_z, grad_gamma, grad_beta = kernels(impl).bn_relu_backward(grad_y, z, mean, invstd, gamma, beta,
                                                                   negative_slope)
    return as_layout(grad_z, layout_of(z)), grad_gamma, grad_beta


@bn_relu_backward.register_fake
def _(grad_y, z, mean, invstd, gamma, beta, negative_slope, impl):
    return empty(z.shape, z, layout_of(z)), torch.empty_like(mean), torch.empty_like(mean)
