"""Minibatch standard deviation (SPEC 5), as the official ProGAN code computes it.

x [N, C, H, W] is seen as [G, M, F, C/F, H, W] (G = min(group_size, N), M = N / G,
F = num_channels): sample n belongs to group n mod M (strided groups). Per group and
feature, s = sqrt(biased variance over the group + 1e-8), computed two-pass (mean
first, then squared deviations); f[m, j] is the mean of s over channel group j and
the pixels; out = cat([x, f broadcast to [N, F, H, W]], dim 1).

Derivatives: with d = x - mean_group(x), A[m, j] = sum of the gradient of f's channel
j over the group's samples and pixels, divided by K = C/F * H * W,

    grad_x = grad[:, :C] + A * d / (G * s)

is the fused kernel-level op `minibatch_stddev_backward`. Its own backward (second
derivatives, for WGAN-GP and R1) is the kernel op `minibatch_stddev_double_backward` (one pass
over gg, grad and x) where nothing differentiates it again or traces it, else eager PyTorch
code, differentiable: `_minibatch_stddev_backward_bwd`.

Under torch.distributed the groups are formed within each process's local batch, never across
processes, as in NVIDIA's ProGAN / StyleGAN code (its groups are per GPU): the features depend on
the local batch size (G = min(group_size, n_local)), not on other ranks (issue 17).
"""

import torch

from .._backend import resolve
from .._checks import as_layout, check_tensor, empty, memory_format
from ._dispatch import _traced, fused_op, kernels

EPS = 1e-8


def _groups(x, group_size, num_channels):
    """Checks the grouping of x [N, C, H, W]; returns G = min(group_size, N)."""
    for name, value in (("group_size", group_size), ("num_channels", num_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fastgan: {name} must be a positive int, got {value!r}")
    n, c = x.shape[:2]
    g = min(group_size, n)
    if g == 0 or n % g:
        raise ValueError(f"fastgan: the batch ({n}) must be divisible by group_size ({group_size}; "
                         f"min(group_size, batch) = {g}): minibatch_stddev does not regroup silently")
    if c % num_channels:
        raise ValueError(f"fastgan: the channels ({c}) must be divisible by num_channels ({num_channels})")
    if c == 0:
        raise ValueError(f"fastgan: x must have channels to take the deviation of, got {tuple(x.shape)}")
    return g


def minibatch_stddev_reference(x, group_size=4, num_channels=1):
    """The official ProGAN code in eager PyTorch; statistics in float32 (float64 for float64)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    xf = x if x.dtype == torch.float64 else x.float()
    y = xf.reshape(g, -1, num_channels, c // num_channels, h, w)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + EPS).sqrt()          # [M, F, C/F, H, W]
    y = y.mean(dim=(2, 3, 4)).reshape(-1, num_channels, 1, 1)  # [M, F, 1, 1]
    y = y.repeat(g, 1, h, w)                            # sample n gets group n mod M
    return torch.cat([x, y.to(x.dtype)], dim=1)


def minibatch_stddev(x, group_size=4, num_channels=1, impl=None):
    """Append num_channels feature maps of the mean group standard deviation to x [N, C, H, W]."""
    check_tensor(x, "x", ndim=4)
    g = _groups(x, group_size, num_channels)
    impl = resolve(impl, x.device)
    if impl == "reference":
        return minibatch_stddev_reference(x, g, num_channels)
    return _minibatch_stddev(x, g, num_channels, impl)


def _minibatch_stddev_kernel(x: torch.Tensor, group_size: int, num_channels: int, impl: str) -> torch.Tensor:
    return kernels(impl).minibatch_stddev(as_layout(x, memory_format(x)), group_size, num_channels)


def _minibatch_stddev_backward_kernel(grad: torch.Tensor, x: torch.Tensor, group_size: int, num_channels: int,
                                      impl: str) -> torch.Tensor:
    fmt = memory_format(x)
    return kernels(impl).minibatch_stddev_backward(as_layout(grad, fmt), as_layout(x, fmt), group_size,
                                                   num_channels)


def _minibatch_stddev_fake(x, group_size, num_channels, impl):
    n, c, h, w = x.shape
    return empty((n, c + num_channels, h, w), x, memory_format(x))


def _minibatch_stddev_backward_fake(grad, x, group_size, num_channels, impl):
    return empty(x.shape, x, memory_format(x))


def _save(ctx, inputs, output):
    # inputs end with (..., group_size, num_channels, impl): keep the tensors and the rest.
    ctx.group_size, ctx.num_channels, ctx.impl = inputs[-3:]
    ctx.save_for_backward(*inputs[:-3])


def _minibatch_stddev_bwd(ctx, grad):
    (x,) = ctx.saved_tensors
    return _minibatch_stddev_backward(grad, x, ctx.group_size, ctx.num_channels, ctx.impl), None, None, None


def _minibatch_stddev_backward_bwd(ctx, gg):
    """Second derivatives. With d, s, A as in the module docstring, u = sum_group(gg * d):
      d/d grad: [gg, t] with t[m, j] = sum over the group, channel group j and pixels of
                gg * d / (G * s), divided by K, broadcast like f (the forward-mode derivative);
      d/d x:    A / (G * s) * (gg - mean_group(gg) - u * d / (G * s^2)).
    One kernel op where nothing differentiates them again (create_graph) or traces them; else eager,
    differentiable."""
    grad, x = ctx.saved_tensors
    g, nf = ctx.group_size, ctx.num_channels
    need_grad, need_x = ctx.needs_input_grad[:2]
    if not torch.is_grad_enabled() and not _traced():
        fmt = memory_format(x)
        d_grad, d_x = kernels(ctx.impl).minibatch_stddev_double_backward(
            as_layout(gg, fmt), as_layout(grad, fmt), as_layout(x, fmt), g, nf, need_grad, need_x)
        return d_grad if need_grad else None, d_x if need_x else None, None, None, None
    n, c, h, w = x.shape
    k = c // nf * h * w
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    shape = (g, n // g, nf, c // nf, h, w)
    xs, ggs = x.to(acc).reshape(shape), gg.to(acc).reshape(shape)
    d = xs - xs.mean(dim=0)
    s = (d.square().mean(dim=0) + EPS).sqrt()
    d_grad = d_x = None
    if need_grad:
        t = (ggs * d / (g * s)).sum(dim=(0, 3, 4, 5)) / k                # [M, F]
        t = t.reshape(-1, nf, 1, 1).repeat(g, 1, h, w).to(gg.dtype)
        d_grad = torch.cat([gg, t], dim=1)
    if need_x:
        a = grad[:, c:].to(acc).reshape(g, n // g, nf, h * w).sum(dim=(0, 3)) / k  # [M, F]
        a = a.reshape(-1, nf, 1, 1, 1)
        u = (ggs * d).sum(dim=0)
        d_x = a / (g * s) * (ggs - ggs.mean(dim=0) - u * d / (g * s * s))
        d_x = d_x.reshape(x.shape).to(x.dtype)
    return d_grad, d_x, None, None, None


_minibatch_stddev = fused_op("minibatch_stddev", _minibatch_stddev_kernel, _minibatch_stddev_fake,
                             _minibatch_stddev_bwd, _save)
_minibatch_stddev_backward = fused_op("minibatch_stddev_backward", _minibatch_stddev_backward_kernel,
                                      _minibatch_stddev_backward_fake, _minibatch_stddev_backward_bwd, _save)
