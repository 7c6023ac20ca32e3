"""Minibatch discrimination across the global batch (issue 17, `global_batch=True`): each local
sample's features o[i] compare its projection M[i] with those of every sample of every process,
so they do not depend on how the batch is split over the processes.

M (the small [n, B, C] projection, not x) is all-gathered by an autograd-aware all-gather
(`_AllGather`: its backward all-reduces the gradient of the gathered M and keeps this rank's rows,
the sum over the ranks of their gradients for them); the features are computed for the whole
gathered batch with the op's own kernel and this rank's rows kept. Cost over the local op: the
local batch sizes exchanged (a tiny all-gather and a host read: ranks may hold different batch
sizes), the all-gather of M, and features for all N samples on every rank (N^2 pairs instead of
n^2: the kernel computes whole batches) and an all-reduce of [N, B, C] in the backward.
Double backward through it is not supported (raises). Under the default process group.
"""

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from ._dispatch import _traced
from ._sync_batch_norm import all_gather_into


def gathering():
    """Whether global_batch has other processes to gather from: torch.distributed initialized
    with more than one process (else the global batch is the local one)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _local_sizes(n, device):
    sizes = torch.empty(dist.get_world_size(), dtype=torch.int64, device=device)
    all_gather_into(sizes, torch.tensor([n], dtype=torch.int64, device=device), None)
    return sizes.tolist()


class _AllGather(torch.autograd.Function):
    """[sum(sizes), ...]: every rank's rows of t, in rank order (sizes: each rank's row count)."""

    @staticmethod
    def forward(ctx, t, sizes):
        world, most = len(sizes), max(sizes)
        padded = t.new_zeros((most, *t.shape[1:]))
        padded[:t.shape[0]] = t
        rows = t.new_empty((world * most, *t.shape[1:]))
        all_gather_into(rows, padded, None)
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        rows = rows.view(world, most, *t.shape[1:])
        return torch.cat([rows[r, :s] for r, s in enumerate(sizes)])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def _features_reference(m, include_self):
    """o [N, B] of M [N, B, C] in eager torch ops (minibatch_features_reference's formula)."""
    e = torch.exp(-(m[:, None] - m[None]).abs().sum(3))
    o = torch.where(~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)[:, :, None], e, 0).sum(1)
    return o + 1.0 if include_self else o


def global_minibatch_features(x, T, bias, include_self, impl):
    """o [n, B] of the local x [n, ...] against the samples of every process (arguments checked)."""
    from .minibatch_discrimination import _acc_dtype, _features, _projection

    if _traced():
        raise NotImplementedError("fastgan: global_batch=True does not run under torch.compile, FakeTensor, "
                                  "make_fx or torch.func transforms (it all-gathers across processes)")
    sizes = _local_sizes(x.shape[0], x.device)
    start = sum(sizes[:dist.get_rank()])
    m_all = _AllGather.apply(_projection(x, T), sizes)
    if impl == "reference":
        o = _features_reference(m_all.to(_acc_dtype(x.dtype)), include_self).to(x.dtype)
    else:
        o = _features(m_all, include_self, impl)
    o = o[start:start + x.shape[0]]
    return o if bias is None else o + bias
