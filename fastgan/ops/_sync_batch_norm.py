"""Batch statistics synchronized across processes, as nn.SyncBatchNorm computes them (issue 17):
the process group a call synchronizes over, the two collectives and the math around them.

Forward: each rank's (count, mean, biased var) per channel, packed into one tensor, one
all-gather, merged exactly on the device (Chan et al.: mean = sum n_r mean_r / N, M2 = sum n_r var_r
+ sum n_r (mean_r - mean)^2), so ranks may hold different batch sizes and nothing reads the global
count on the host. Backward: the two per-channel sums of the BN backward (sum grad_u and sum
grad_u * xhat, u the normalized output before the activation) packed into one collective: on a
GPU an all-reduce, on the CPU (gloo) an all-gather and a local sum over the ranks' rows.
One collective per block per pass, none else (tests/test_distributed.py counts them).

What a collective costs on the CPU is its latency, not its bytes (a few hundred floats): gloo runs
it on a worker thread that the calling thread hands it to, and its messages arrive through another
thread, so each costs several thread wake-ups (~0.3-0.5 ms on a 2-core VM where a TCP round trip
is ~15 us), and a DCGAN step has 26 of them. Hence, on CPU tensors: the backward's sums are
all-gathered (gloo's ring all-reduce takes two rounds of messages, its all-gather one, on two
processes), and the caller waits for a collective by polling it with sched_yield for up to
POLL_S before sleeping on it (no wake-up of its own; the core stays with its process). Measured
on 2 gloo processes with a convolution between collectives, the time from both ranks' arrival to
the result, in three runs: all-reduce 350-450 us median (0.8-1.7 ms mean), all-gather 230-380
(0.5-1.3 ms), all-gather + polling 230-300 (0.5-0.8 ms). On a GPU the collectives are issued on
the current stream with async_op=False (NCCL): no host sync, CUDA-graph safe.

Gradients as torch's SyncBatchNorm gives them (torch/nn/modules/_functions.py): the input's from
the global sums and count, exactly the gradient of the sum of all ranks' losses; gamma's and
beta's the local sums, which DDP's averaging turns into the global ones / world size, as it does
the convolution weight's.
"""

import os
import time

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .._chan import merge_rows


class _DefaultGroup:
    """The sentinel `fastgan.ops.WORLD`: synchronize over torch.distributed's default group."""

    def __repr__(self):
        return "fastgan.ops.WORLD"

    def __reduce__(self):  # one instance, also through pickling (spawned processes)
        return "WORLD"


WORLD = _DefaultGroup()


def sync_group(process_group):
    """(group, world size) a call synchronizes over, or None when it has nothing to synchronize with:
    no process_group, or a group of one process (as nn.SyncBatchNorm falls back to BatchNorm)."""
    if process_group is None:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("fastgan: process_group needs torch.distributed initialized "
                           "(torch.distributed.init_process_group); pass process_group=None to use the "
                           "local batch's statistics")
    group = dist.group.WORLD if process_group is WORLD else process_group
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError("fastgan: process_group must be a torch.distributed ProcessGroup, fastgan.ops.WORLD "
                        f"or None, got {type(process_group).__name__}")
    size = dist.get_world_size(group)
    return (group, size) if size > 1 else None


POLL_S = 5e-3  # longer than a collective's latency and the usual skew between the ranks here


def _run(collective, *args, group):
    """collective(*args, group=group): on CPU tensors issued asynchronously and waited for by
    polling (see the module's docstring) for up to POLL_S, then by sleeping on it, so a rank that
    waits long for another (one writing a checkpoint) does not hold a core; a plain wait where
    os.sched_yield does not exist. Elsewhere with async_op=False on the current stream."""
    if args[0].device.type != "cpu":
        collective(*args, group=group)
        return
    work = collective(*args, group=group, async_op=True)
    if hasattr(os, "sched_yield"):
        deadline = time.perf_counter() + POLL_S
        while not work.is_completed() and time.perf_counter() < deadline:
            os.sched_yield()
    work.wait()  # raises what the collective raised


def all_gather_into(out, t, group):
    """Every rank's t, concatenated into `out` in rank order: one collective."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the newer name, where it exists
    _run(gather, out, t, group=group)


def gather_rows(mean, var, count, group, world_size):
    """Every rank's row (count, mean [C], biased var [C]) per channel, [world_size, 2C + 1] in rank
    order (what bn_gather_finalize merges): one all-gather."""
    packed = torch.cat([mean.new_full((1,), float(count)), mean, var])
    rows = packed.new_empty(world_size * packed.numel())
    all_gather_into(rows, packed, group)
    return rows.view(world_size, -1)


def gather_stats(mean, var, count, group, world_size):
    """The global (mean, biased variance, element count as a one-element tensor) per channel from
    this rank's mean and biased variance over `count` elements: one all-gather, Chan's exact merge
    in torch ops (the reference's; the fused blocks merge in their bn_gather_finalize kernel)."""
    return merge_rows(gather_rows(mean, var, count, group, world_size))


def reduce_sums(sum_dy, sum_dy_xhat, group, world_size):
    """(sum grad_u, sum grad_u * xhat) over all ranks, both packed in one collective: an all-reduce
    on a GPU; on the CPU an all-gather of the ranks' sums, added up in rank order (the same on
    every rank), which gloo runs in half the message rounds (see the module's docstring)."""
    c = sum_dy.shape[0]
    packed = torch.cat([sum_dy, sum_dy_xhat])
    if packed.device.type != "cpu":
        _run(dist.all_reduce, packed, group=group)
    else:
        rows = packed.new_empty(world_size * 2 * c)
        all_gather_into(rows, packed, group)
        packed = rows.view(world_size, 2 * c).sum(0)
    return packed[:c], packed[c:]


# ---- the reference: eager torch ops, torch's SyncBatchNorm math on any device ----

def update_running_stats_reference(running_mean, running_var, num_batches_tracked, momentum, mean, var, total):
    """nn.BatchNorm2d's update with the global mean and unbiased variance (torch ops)."""
    if running_mean is None:
        return
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        factor = momentum if momentum is not None else 1.0 / num_batches_tracked.to(mean.dtype)
        unbiased = var * total / (total - 1)
        running_mean.mul_(1 - factor).add_((factor * mean).to(running_mean.dtype))
        running_var.mul_(1 - factor).add_((factor * unbiased).to(running_var.dtype))


class SyncBatchNormReference(torch.autograd.Function):
    """batch_norm(z) with statistics over all ranks' batches, in torch ops (torch's own
    SyncBatchNorm function runs on GPUs only): the reference the fused blocks are tested against."""

    @staticmethod
    def forward(ctx, z, gamma, beta, eps, running, group, world_size):
        stats = torch.float64 if z.dtype == torch.float64 else torch.float32
        zs = z.to(stats)
        if z.numel():
            var, mean = torch.var_mean(zs, dim=(0, 2, 3), correction=0)
        else:  # an empty local batch: a row of count 0 that adds nothing to the merge
            mean = var = zs.new_zeros(z.shape[1])
        count = z.numel() // z.shape[1]
        mean, var, total = gather_stats(mean, var, count, group, world_size)
        update_running_stats_reference(*running, mean, var, total)
        invstd = torch.rsqrt(var + eps)
        view = (1, -1, 1, 1)
        xhat = (zs - mean.view(view)) * invstd.view(view)
        u = xhat if gamma is None else xhat * gamma.to(stats).view(view)
        u = u if beta is None else u + beta.to(stats).view(view)
        ctx.save_for_backward(xhat, gamma, invstd, total)
        ctx.group, ctx.world_size, ctx.has_beta = group, world_size, beta is not None
        return u.to(z.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_u):
        xhat, gamma, invstd, total = ctx.saved_tensors
        g = grad_u.to(xhat.dtype)
        sg, sgx = g.sum((0, 2, 3)), (g * xhat).sum((0, 2, 3))
        big_sg, big_sgx = reduce_sums(sg, sgx, ctx.group, ctx.world_size)
        s = invstd if gamma is None else gamma.to(xhat.dtype) * invstd
        view = (1, -1, 1, 1)
        grad_z = s.view(view) * (g - (big_sg / total).view(view) - xhat * (big_sgx / total).view(view))
        grad_gamma = None if gamma is None else sgx.to(gamma.dtype)
        grad_beta = sg.to(gamma.dtype if gamma is not None else grad_u.dtype) if ctx.has_beta else None
        return grad_z.to(grad_u.dtype), grad_gamma, grad_beta, None, None, None, None
