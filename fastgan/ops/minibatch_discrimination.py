"""Minibatch discrimination (SPEC 2, Salimans et al. 2016).

    M = (x @ T.view(A, B*C)).view(N, B, C)
    o[i, b] = sum_{j != i} exp(-sum_c |M[i, b, c] - M[j, b, c]|)   (+ 1 with include_self) (+ bias[b])
    out = cat([x, o], 1)

The projection M and its gradients (dx = dM @ T^T, dT = x^T @ dM) run through the
framework's GEMMs; the fused op `minibatch_discrimination` takes M and computes o
tile by tile, never the [N, N, B] distances, and its backward
`minibatch_discrimination_backward` recomputes them tile by tile for dM. In plain
eager code the whole op is one autograd node (`_Discrimination`): its forward and dx
products go to oneDNN on CPU (`_onednn_mm`), and its backward adds the cat's slice of
the gradient into dx in place.

Second derivatives: the backward op's own gradient is an explicit eager fallback
(`_backward_backward_eager`) that does materialize the [N, N, B, C] pairwise
tensor: double backward works on every backend, with the reference's O(N^2 B C)
memory.
"""

import torch

from .._backend import resolve
from .._checks import check_same, check_tensor
from ._autocast import lower
from ._dispatch import _traced, fused_op, kernels
from ._global_minibatch import gathering, global_minibatch_features


def _acc_dtype(dtype):
    """Distances and sums in float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _off_diagonal(n, device):
    """[N, N, 1] mask of the pairs j != i: the self term is masked out, never subtracted."""
    return ~torch.eye(n, dtype=torch.bool, device=device)[:, :, None]


def _onednn_mm(a, b):
    """a @ b through oneDNN's matmul (mkldnn::_linear_pointwise, what torch.compile's CPU backend
    calls) where it applies, else torch.mm. Why: on this project's AMD EPYC (Zen 4) machines MKL's
    sgemm ran these products (256 x 8192 x 500) at 140-160 GFLOP/s (2 threads) and oneDNN at
    ~200. Only float32 on CPU, row-major a, and outside autograd recording (the op has no
    derivative): everything else, and torch builds without oneDNN, takes torch.mm."""
    if (a.device.type == "cpu" and a.dtype == torch.float32 and b.dtype == torch.float32 and a.stride(1) == 1
            and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available() and min(a.shape + b.shape) > 0):
        return torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")
    return torch.mm(a, b)


def _projection(x, T):
    """M = x_flat @ T.view(A, B*C), as [N, B, C], through the framework's GEMM."""
    a, b, c = T.shape
    return torch.mm(x.reshape(x.shape[0], a), T.reshape(a, b * c)).view(-1, b, c)


def minibatch_features_reference(x, T, bias=None, include_self=False):
    """o [N, B] in eager PyTorch, materializing the [N, N, B, C] differences (small N only)."""
    m = _projection(x, T).to(_acc_dtype(x.dtype))
    e = torch.exp(-(m[:, None] - m[None]).abs().sum(3))  # [N, N, B]
    o = torch.where(_off_diagonal(m.shape[0], m.device), e, 0).sum(1)
    if include_self:
        o = o + 1.0
    if bias is not None:
        o = o + bias.to(o.dtype)
    return o.to(x.dtype)


def minibatch_discrimination_reference(x, T, bias=None, include_self=False):
    """cat([x_flat, o], 1) in eager PyTorch (see minibatch_features_reference)."""
    o = minibatch_features_reference(x, T, bias, include_self)
    return torch.cat([x.reshape(x.shape[0], -1), o], 1)


def _check(x, T, bias, include_self):
    check_tensor(x, "x", min_ndim=2)
    check_tensor(T, "T", ndim=3)
    check_same(T, "T", x, "x")
    a = x.shape[1:].numel()
    if T.shape[0] != a:
        raise ValueError(f"fastgan: T must have shape [A, B, C] with A = {a} (x's features per sample), "
                         f"got {tuple(T.shape)}")
    if T.shape[1] == 0 or T.shape[2] == 0:
        raise ValueError(f"fastgan: T must have at least one kernel of at least one dimension, got {tuple(T.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        check_same(bias, "bias", x, "x")
        if bias.shape[0] != T.shape[1]:
            raise ValueError(f"fastgan: bias must have shape [B] = [{T.shape[1]}], got {tuple(bias.shape)}")
    if not isinstance(include_self, bool):
        raise TypeError(f"fastgan: include_self must be a bool, got {type(include_self).__name__}")


def minibatch_features(x, T, bias=None, include_self=False, impl=None, global_batch=False):
    """The minibatch features o [N, B] of x [N, ...] (flattened to [N, A]) with T [A, B, C]:
    o[i, b] = sum over the other samples j of exp(-L1 distance of M[i, b] and M[j, b]), plus 1
    with include_self (the paper's formula counts the sample itself), plus bias[b] if given.
    global_batch=True: j runs over the samples of every process of torch.distributed's default
    group (_global_minibatch.py; the local batch outside a distributed run)."""
    x, T, bias = lower(x.device.type, x, T, bias)  # as torch.autocast casts the product x @ T (and bias with o)
    _check(x, T, bias, include_self)
    impl = resolve(impl, x.device)
    if global_batch and gathering():  # issue 17: against every process's samples
        return global_minibatch_features(x, T, bias, include_self, impl)
    if impl == "reference":
        return minibatch_features_reference(x, T, bias, include_self)
    o = _features(_projection(x, T), include_self, impl)
    return o if bias is None else o + bias


def minibatch_discrimination(x, T, bias=None, include_self=False, impl=None, global_batch=False):
    """cat([x_flat, minibatch_features(x, T, bias, include_self, global_batch=global_batch)], 1):
    [N, A + B]."""
    x_low, T, bias = lower(x.device.type, x, T, bias)  # as torch.autocast casts the product x @ T (and bias with o)
    if x_low is not x or (global_batch and gathering()):  # a float32 x under autocast: o in the lower dtype, and
        # cat promotes it, as in eager; global_batch (issue 17): o against every process's samples
        o = minibatch_features(x_low, T, bias, include_self, impl, global_batch)
        return torch.cat([x.reshape(x.shape[0], -1), o], 1)
    _check(x, T, bias, include_self)
    impl = resolve(impl, x.device)
    if impl != "reference" and not _traced():
        return _Discrimination.apply(x, T, bias, include_self, impl)[0]
    o = minibatch_features(x, T, bias, include_self, impl)
    return torch.cat([x.reshape(x.shape[0], -1), o], 1)


def _features_kernel(M: torch.Tensor, include_self: bool, impl: str) -> torch.Tensor:
    return kernels(impl).minibatch_discrimination(M.contiguous(), include_self)


def _backward_kernel(grad: torch.Tensor, M: torch.Tensor, impl: str) -> torch.Tensor:
    return kernels(impl).minibatch_discrimination_backward(grad.contiguous(), M.contiguous())


def _features_fake(M, include_self, impl):
    return M.new_empty(M.shape[:2])


def _backward_fake(grad, M, impl):
    return torch.empty_like(M, memory_format=torch.contiguous_format)


def _save_features(ctx, inputs, output):
    M, _, ctx.impl = inputs
    ctx.save_for_backward(M)


def _save_backward(ctx, inputs, output):
    grad, M, ctx.impl = inputs
    ctx.save_for_backward(grad, M)


def _features_bwd(ctx, grad):
    (M,) = ctx.saved_tensors
    return _backward(grad, M, ctx.impl), None, None


def _backward_backward_eager(gg, grad, M):
    """Gradients of dM[i, c] = -sum_{j != i} (g_i + g_j) e_ij s_ijc (per kernel b), with
    e_ij = exp(-D_ij) and s_ijc = sign(M_ic - M_jc), against an incoming gg [N, B, C]:
    with P_ij = sum_c s_ijc (gg_ic - gg_jc),
        d_grad[i]    = -sum_{j != i} e_ij P_ij
        d_M[i, c]    =  sum_{j != i} (g_i + g_j) e_ij P_ij s_ijc
    (sign has no gradient). Eager: materializes [N, N, B, C]."""
    acc = _acc_dtype(M.dtype)
    m, g, gg = M.to(acc), grad.to(acc), gg.to(acc)
    diff = m[:, None] - m[None]  # [N, N, B, C]
    s = diff.sign()
    e = torch.where(_off_diagonal(m.shape[0], m.device), torch.exp(-diff.abs().sum(3)), 0)
    ep = e * (s * (gg[:, None] - gg[None])).sum(3)  # [N, N, B]
    d_grad = -ep.sum(1)
    d_m = (((g[:, None] + g[None]) * ep)[..., None] * s).sum(1)
    return d_grad.to(grad.dtype), d_m.to(M.dtype)


def _backward_bwd(ctx, gg):
    grad, M = ctx.saved_tensors
    d_grad, d_m = _backward_backward_eager(gg, grad, M)
    return d_grad, d_m, None


class _Discrimination(torch.autograd.Function):
    """The whole of minibatch_discrimination in plain eager code, as one autograd node: the same
    kernels as the composite path (which traced code keeps), the products through
    `_onednn_mm`, and a backward that adds the cat's share of dout into the GEMM's dx in
    place, dx = dM @ T^T + dout[:, :A], where the composite graph allocates their sum anew.

    M is a second output so that double backward sees it as a function of x and T: the
    backward's ops on the saved M then send their gradient back into this node as dM's extra
    term (the double-backward pattern of the PyTorch custom Function tutorial)."""

    @staticmethod
    def forward(ctx, x, T, bias, include_self, impl):
        n, (a, b, c) = x.shape[0], T.shape
        x_flat = x.reshape(n, a)
        m = _onednn_mm(x_flat, T.reshape(a, b * c)).view(n, b, c)
        o = _features_kernel(m, include_self, impl)
        out = torch.cat([x_flat, o if bias is None else o + bias], 1)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, T, m)
        ctx.impl, ctx.has_bias = impl, bias is not None
        return out, m

    @staticmethod
    def backward(ctx, grad_out, grad_m):
        x, T, m = ctx.saved_tensors
        n, (a, b, c) = x.shape[0], T.shape
        need_x, need_T, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_T = grad_bias = None
        dm = grad_m
        if grad_out is not None:
            grad_o = grad_out[:, a:]
            if need_bias and ctx.has_bias:
                grad_bias = grad_o.sum(0)
            if need_x or need_T:
                dm_o = _backward(grad_o, m, ctx.impl)
                dm = dm_o if dm is None else dm + dm_o
        if dm is not None:
            dm = dm.reshape(n, b * c)
            if need_x:
                t_flat = T.reshape(a, b * c)
                grad_x = _onednn_mm(dm, t_flat.t())
                if grad_out is not None:
                    # The cat's slice of the gradient added in one pass (oneDNN's own "add"
                    # post-op ran slower than this, and MKL's addmm slower than both).
                    grad_x.add_(grad_out[:, :a])
            if need_T:
                grad_T = torch.mm(x.reshape(n, a).t(), dm).view(a, b, c)
        elif need_x and grad_out is not None:
            grad_x = grad_out[:, :a]
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape)
        return grad_x, grad_T, grad_bias, None, None


_features = fused_op("minibatch_discrimination", _features_kernel, _features_fake, _features_bwd, _save_features)
_backward = fused_op("minibatch_discrimination_backward", _backward_kernel, _backward_fake, _backward_bwd,
                     _save_backward)
