"""Virtual batch normalization (SPEC 10, Salimans et al. 2016), with an optional fused activation.

z [N, C, H, W] holds the reference batch R (its first m = ref_size samples) and then the current
samples. R's samples are normalized with R's statistics; current sample i with those of R united
with sample i alone (each of the m + 1 samples weighted a = 1 / (m + 1)), so a sample's output does
not depend on its batch-mates. No running statistics: eval computes the same.

Backward (the kernels'; the reference gets it from autograd). With g = grad_y * act'(u), per
(sample k, channel) the sums sg_k = sum g and sgx_k = sum g * xhat over its S = H * W pixels, and
its statistics' mean_k, invstd_k (R's samples share R's):
  current i:  grad_z = gamma invstd_i (g - a/S (sg_i + sgx_i xhat))   (BatchNorm over (m + 1) S values)
  R's samples: grad_z = gamma invstd_R g - k1 - k2 (z - mean_R), with
    k1 = gamma / (m S) (invstd_R sg_R + (1 - a) sum_i invstd_i (sg_i + invstd_i sgx_i (mean_R - mean_i)))
    k2 = gamma / (m S) (invstd_R^2 sgx_R + (1 - a) sum_i invstd_i^2 sgx_i)
  (sg_R, sgx_R: sums over R's samples; sum_i over the current ones): R's own statistics, then
  every current sample's union statistics, which weigh each of R's values (1 - a) / (m S).
grad_gamma = sum sgx, grad_beta = sum sg. Double backward (a gradient penalty through the op) falls
back explicitly to the reference formula with autograd.
"""

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .._backend import resolve
from .._checks import as_layout, check_eps, check_tensor, empty, memory_format
from ._batch_norm import call, check_channel_vector, in_stats_dtype, stats_dtype, wanted_grads
from ._dispatch import fused_op, kernels, to_layout


def check_vbn_arguments(n, ref_size, negative_slope, training, name="z"):
    """The checks shared by the op and the fused blocks (n: the batch size of `name`)."""
    if not isinstance(ref_size, int) or isinstance(ref_size, bool):
        raise TypeError(f"fastgan: ref_size must be an int, got {type(ref_size).__name__}")
    top = n - 1 if training else n
    if not 1 <= ref_size <= top:
        where = "1..N-1 in training (at least one current sample)" if training else "1..N"
        raise ValueError(f"fastgan: ref_size must be in {where} with N = {n} ({name}'s batch), got {ref_size}")
    if negative_slope is not None and (not isinstance(negative_slope, (int, float)) or isinstance(negative_slope,
                                                                                                   bool)):
        raise TypeError(f"fastgan: negative_slope must be a number or None, got {type(negative_slope).__name__}")


def vbn_statistics(z, ref_size, eps):
    """(mean, var) [N, C] each sample is normalized with, in stats_dtype(z), differentiably (SPEC 10)."""
    zf = z.to(stats_dtype(z))
    m = ref_size
    a = 1.0 / (m + 1)
    mean_s = zf.mean(dim=(2, 3))  # per sample and channel
    var_s = zf.var(dim=(2, 3), unbiased=False)  # M2_i / (H W), two-pass
    mean_r = mean_s[:m].mean(dim=0)
    # Chan for m groups of equal count: within-group variances plus the spread of their means.
    var_r = (var_s[:m] + (mean_s[:m] - mean_r).square()).mean(dim=0)
    d = mean_s[m:] - mean_r
    mean_c = a * mean_s[m:] + (1 - a) * mean_r
    var_c = a * var_s[m:] + (1 - a) * var_r + a * (1 - a) * d.square()
    n_ref = (m,) + tuple(mean_r.shape)
    return torch.cat([mean_r.expand(n_ref), mean_c]), torch.cat([var_r.expand(n_ref), var_c])


def virtual_batch_norm_reference(z, ref_size, weight=None, bias=None, eps=1e-5, negative_slope=None):
    """Eager PyTorch from the definition; statistics in float32 (float64 for float64 z)."""
    mean, var = vbn_statistics(z, ref_size, eps)
    zf = z.to(mean.dtype)
    u = (zf - mean[:, :, None, None]) * torch.rsqrt(var + eps)[:, :, None, None]
    if weight is not None:
        u = u * weight.to(mean.dtype)[:, None, None]
    if bias is not None:
        u = u + bias.to(mean.dtype)[:, None, None]
    if negative_slope is not None:
        u = torch.nn.functional.leaky_relu(u, float(negative_slope))
    return u.to(z.dtype)


def virtual_batch_norm(z, ref_size, weight=None, bias=None, eps=1e-5, negative_slope=None, training=True,
                       impl=None):
    """act(virtual_batch_norm(z)): z [N, C, H, W] with the reference batch as its first ref_size
    samples; weight / bias [C] (gamma, beta) or None; act(u) = u > 0 ? u : negative_slope * u (None:
    no activation, 0: ReLU). `training` only widens the check of ref_size (1..N in eval, so R alone
    may pass); the math is the same. The output keeps z's layout (channels-last or contiguous)."""
    check_tensor(z, "z", ndim=4)
    for t, name in ((weight, "weight"), (bias, "bias")):
        check_channel_vector(t, name, z.shape[1], z)
    check_vbn_arguments(z.shape[0], ref_size, negative_slope, training)
    if min(z.shape) <= 0:
        raise ValueError(f"fastgan: z must not be empty, got shape {tuple(z.shape)}")
    eps = check_eps(eps)
    impl = resolve(impl, z.device)  # every backend has VBN kernels
    if impl == "reference":
        return virtual_batch_norm_reference(z, ref_size, weight, bias, eps, negative_slope)
    gamma, beta = in_stats_dtype(z, weight, bias)
    slope = 1.0 if negative_slope is None else float(negative_slope)
    return _vbn(z, gamma, beta, ref_size, eps, slope, impl)[0]


# ---- the fused op (the backends' kernels) ----

def _vbn_kernel(z: torch.Tensor, gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor], ref_size: int,
                eps: float, negative_slope: float, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k = kernels(impl)
    return k.vbn_forward(dense(k, z, memory_format(z)), ref_size, gamma, beta, eps, negative_slope)


def dense(k, t, fmt):
    """t in layout `fmt`: the backend's to_layout kernel from the other dense layout (an NCHW loss
    gradient for a channels-last z is common), PyTorch's copy from any other strides."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return to_layout(k, t, fmt)
    return as_layout(t, fmt)


def _vbn_fake(z, gamma, beta, ref_size, eps, negative_slope, impl):
    stats = z.new_empty(z.shape[:2], dtype=stats_dtype(z))
    return empty(z.shape, z, memory_format(z)), stats, torch.empty_like(stats)


def _vbn_setup(ctx, inputs, output):
    z, gamma, beta, ctx.ref_size, ctx.eps, ctx.negative_slope, ctx.impl = inputs
    _, mean, invstd = output
    ctx.mark_non_differentiable(mean, invstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(z, gamma, beta, mean, invstd)


def _vbn_bwd(ctx, grad_y, *_):
    if grad_y is None:
        return (None,) * 7
    if torch.is_grad_enabled():  # create_graph: the gradients must be differentiable themselves
        return _vbn_bwd_differentiable(ctx, grad_y)
    return _vbn_bwd_fused(ctx, grad_y)


def _vbn_bwd_differentiable(ctx, grad_y):
    """The explicit fallback for double backward: the reference formula on the saved inputs."""
    z, gamma, beta, _, _ = ctx.saved_tensors
    inputs = [z, gamma, beta]
    wanted = [t is not None and need for t, need in zip(inputs, ctx.needs_input_grad[:3])]
    slope = None if ctx.negative_slope == 1.0 else ctx.negative_slope
    with torch.enable_grad():
        y = virtual_batch_norm_reference(z, ctx.ref_size, gamma, beta, ctx.eps, slope)
        grads = wanted_grads(y, inputs, wanted, grad_y)
    return (*grads, None, None, None, None)


@once_differentiable
def _vbn_bwd_fused(ctx, grad_y):
    z, gamma, beta, mean, invstd = ctx.saved_tensors
    grad_z, grad_gamma, grad_beta = call(vbn_backward, grad_y, z, mean, invstd, gamma, beta, ctx.ref_size,
                                         ctx.negative_slope, ctx.impl)
    return (grad_z if ctx.needs_input_grad[0] else None, grad_gamma if gamma is not None else None,
            grad_beta if beta is not None else None, None, None, None, None)


@torch.library.custom_op("fastgan::vbn_backward", mutates_args=())
def vbn_backward(grad_y: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                 gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor], ref_size: int, negative_slope: float,
                 impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernels' fused backward as a traceable op: grad_z (in z's layout), grad_gamma, grad_beta."""
    k, fmt = kernels(impl), memory_format(z)
    return k.vbn_backward(dense(k, grad_y, fmt), dense(k, z, fmt), mean, invstd, ref_size, gamma, beta,
                          negative_slope)


@vbn_backward.register_fake
def _(grad_y, z, mean, invstd, gamma, beta, ref_size, negative_slope, impl):
    stats = z.new_empty(z.shape[1:2], dtype=stats_dtype(z))
    return empty(z.shape, z, memory_format(z)), stats, torch.empty_like(stats)


_vbn = fused_op("virtual_batch_norm", _vbn_kernel, _vbn_fake, _vbn_bwd, _vbn_setup)
