"""fastgan under torch.distributed (issue 17) in 2 and 3 gloo processes, against one process on the
concatenated batch, in float64: the fused blocks with synchronized batch statistics (against plain
BatchNorm2d), DDP of a fused discriminator, checkpoints, global minibatch discrimination.

The processes are spawned once per world size (module-scoped fixture `runs`): each rank runs every
case and returns, per compared quantity, (max |distributed - single process|, max |single process|);
the tests assert on those. Ranks hold uneven batches (3, 5, 2 samples; in the blocks' "empty rank"
cases 3, 0, 2: nn.SyncBatchNorm allows a process an empty batch).
"""

import copy
import inspect
import io

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fastgan
from distributed_helpers import run_workers

LOCAL_SIZES = [3, 5, 2]
EMPTY_RANK_SIZES = [3, 0, 2]
RTOL = 1e-10  # float64; the merge and the gradient correction differ from one process's sums by rounding
IMPLS = ["cpu", "reference"]


def _slice(rank, world_size, sizes=LOCAL_SIZES):
    sizes = sizes[:world_size]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank]), sum(sizes)


def _diff(out, label, got, want):
    if got.shape != want.shape:
        out[f"{label}: shape {tuple(got.shape)}, want {tuple(want.shape)}"] = (float("inf"), 0.0)
    elif want.numel() == 0:
        out[label] = (0.0, 0.0)
    else:
        out[label] = ((got.double() - want.double()).abs().max().item(), want.double().abs().max().item())


def _reduced(t):
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def _block(kind, momentum):
    """The block as nn.Sequential (conv with a bias: it moves the running mean) and an input shape
    of one sample."""
    if kind == "generator":
        seq = nn.Sequential(nn.ConvTranspose2d(4, 6, 4, 2, 1), nn.BatchNorm2d(6, momentum=momentum), nn.ReLU())
        shape = (4, 3, 3)
    else:
        seq = nn.Sequential(nn.Conv2d(4, 6, 3, 2, 1), nn.BatchNorm2d(6, momentum=momentum), nn.LeakyReLU(0.2))
        shape = (4, 8, 8)
    with torch.no_grad():
        seq[1].weight.uniform_(0.5, 1.5)
        seq[1].bias.normal_()
    return seq.double(), shape


def _distributed_copy(seq, impl):
    model, fused = fastgan.distributed.synchronized(copy.deepcopy(seq), impl)
    assert len(fused) == sum(isinstance(m, nn.BatchNorm2d) for m in seq.modules())
    return model


def _compare_modules(out, prefix, model, ref, world_size=None):
    """Parameter gradients (summed over ranks, or DDP's average times the world size) and buffers."""
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        g = p.grad * world_size if world_size else _reduced(p.grad)
        _diff(out, f"{prefix} grad {name}", g, q.grad)
    for (name, b), c in zip(model.named_buffers(), ref.buffers()):
        _diff(out, f"{prefix} {name}", b, c)


def _sgd(model, ref, world_size=None):
    """The same step on both: the distributed model's gradients summed over the ranks (DDP's average
    times world_size) are the reference's."""
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters()):
            p -= 0.1 * (p.grad * world_size if world_size else _reduced(p.grad))
            q -= 0.1 * q.grad
            p.grad = q.grad = None


def case_block(rank, world_size, kind, impl, momentum, steps=3, sizes=LOCAL_SIZES):
    """A fused synchronized block (through fuse and the op's process_group) for several training
    steps, then eval: outputs, input and parameter gradients, running statistics."""
    torch.manual_seed(17)  # the same model and batches on every rank
    seq, shape = _block(kind, momentum)
    model, ref = _distributed_copy(seq, impl), copy.deepcopy(seq)
    mine, n = _slice(rank, world_size, sizes)
    out = {}
    for step in range(steps):
        x = torch.randn(n, *shape, dtype=torch.float64)
        x_ref = x.clone().requires_grad_()
        y_ref = ref(x_ref)
        gy = torch.randn_like(y_ref)
        (y_ref * gy).sum().backward()
        x_mine = x[mine].clone().requires_grad_()
        y = model(x_mine)
        (y * gy[mine]).sum().backward()
        _diff(out, f"step {step} y", y, y_ref[mine])
        _diff(out, f"step {step} grad x", x_mine.grad, x_ref.grad[mine])
        _compare_modules(out, f"step {step}", model, ref)
        _sgd(model, ref)
    model.eval(), ref.eval()
    x = torch.randn(n, *shape, dtype=torch.float64)
    _diff(out, "eval y", model(x[mine]), ref(x)[mine])
    fastgan.unfuse(model)
    out["unfused to SyncBatchNorm"] = (float(type(model[1]) is not nn.SyncBatchNorm), 0.0)
    out["state_dict keys"] = (float(list(model.state_dict()) != list(seq.state_dict())), 0.0)
    return out


def _discriminator():
    """A small DCGAN discriminator: 16x16 -> conv, LeakyReLU -> 2 fused blocks -> conv to 1x1."""
    d = nn.Sequential(nn.Conv2d(3, 4, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
                      nn.Conv2d(4, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                      nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                      nn.Conv2d(8, 1, 4, 1, 0, bias=False))
    return d.double()


def _buffer_sync(on):
    """DDP's broadcast of rank 0's buffers before each forward, on or off (renamed in torch 2.14)."""
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return dict(forward_sync_buffers=on)
    return dict(broadcast_buffers=on)


def case_double_d(rank, world_size, impl, broadcast_buffers, steps=2):
    """DDP (find_unused_parameters=False) of a fused synchronized discriminator called on a real and
    a fake batch before one backward; then a checkpoint of it loaded into one plain process."""
    torch.manual_seed(23)
    seq = _discriminator()
    model, ref = _distributed_copy(seq, impl), copy.deepcopy(seq)
    ddp = fastgan.distributed.data_parallel(model, **_buffer_sync(broadcast_buffers))
    mine, n = _slice(rank, world_size)
    out = {}
    for step in range(steps):
        real, fake = torch.randn(n, 3, 16, 16, dtype=torch.float64), torch.randn(n, 3, 16, 16, dtype=torch.float64)
        a, b = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
        ref_real = ref(real).flatten()
        ((ref_real * a).sum() + (ref(fake).flatten() * b).sum()).backward()
        d_real, d_fake = ddp(real[mine]).flatten(), ddp(fake[mine]).flatten()
        ((d_real * a[mine]).sum() + (d_fake * b[mine]).sum()).backward()
        _diff(out, f"step {step} D(real)", d_real, ref_real[mine])
        _compare_modules(out, f"step {step}", model, ref, world_size)  # DDP averaged the gradients
        _sgd(model, ref, world_size)
    # A checkpoint of the distributed run (rank 0's; SyncBN keeps the ranks' states equal) in one process.
    buf = io.BytesIO()
    torch.save(ddp.module.state_dict(), buf)
    buf.seek(0)
    single = _discriminator()
    single.load_state_dict(torch.load(buf))
    single.eval(), ref.eval(), model.eval()
    x = torch.randn(n, 3, 16, 16, dtype=torch.float64)
    _diff(out, "checkpoint eval y", single(x), ref(x))
    fastgan.fuse(single, impl=impl)
    _diff(out, "checkpoint fused eval y", single(x), ref(x))
    return out


def case_errors(rank, world_size):
    """Bad process_group arguments inside a distributed run."""
    x, w = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 3, 3, dtype=torch.float64)
    out = {}
    try:
        fastgan.ops.conv2d_bn_leaky_relu(x, w, None, None, None, None, None, True, process_group="world")
        out["str process_group raises"] = (1.0, 0.0)
    except TypeError as e:
        out["str process_group raises"] = (float("process_group" not in str(e)), 0.0)
    # A group of one process: the local statistics, as nn.SyncBatchNorm falls back to BatchNorm.
    groups = [dist.new_group([r]) for r in range(world_size)]
    y = fastgan.ops.conv2d_bn_leaky_relu(x, w, None, None, None, None, None, True, process_group=groups[rank])
    _diff(out, "group of one", y, fastgan.ops.conv2d_bn_leaky_relu_reference(x, w, None, None, None, None, None, True))
    return out


_COLLECTIVES = ["all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "all_gather_object",
                "reduce_scatter", "reduce_scatter_tensor", "broadcast", "reduce", "gather", "scatter", "all_to_all",
                "all_to_all_single", "barrier", "all_reduce_coalesced", "all_gather_coalesced", "send", "recv",
                "isend", "irecv", "batch_isend_irecv"]


def case_collectives(rank, world_size, impl):
    """Issue 17's budget: one collective per fused synchronized block per pass (forward: the
    statistics; backward: the two sums), counted over every torch.distributed collective."""
    torch.manual_seed(41)
    g, _ = _block("generator", 0.1)
    d, _ = _block("discriminator", 0.1)
    seq = nn.Sequential(g, d, copy.deepcopy(d))  # 3 blocks: 4x3x3 -> 6x6x6; the direct ones want 4 channels
    seq[1][0] = nn.Conv2d(6, 4, 3, 1, 1).double()
    seq[1][1], seq[2][0] = nn.BatchNorm2d(4).double(), nn.Conv2d(4, 6, 3, 2, 1).double()
    model = _distributed_copy(seq, impl)
    calls = []
    originals = {name: getattr(dist, name) for name in _COLLECTIVES if hasattr(dist, name)}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    out = {}
    try:
        for name, fn in originals.items():
            setattr(dist, name, counting(name, fn))
        x = torch.randn(2 + rank, 4, 3, 3, dtype=torch.float64, requires_grad=True)
        for step in range(2):
            del calls[:]
            y = model(x)
            forward = list(calls)
            del calls[:]
            y.square().sum().backward()
            out[f"step {step} forward: {forward}"] = (float(len(forward) != 3), 0.0)
            out[f"step {step} backward: {list(calls)}"] = (float(len(calls) != 3), 0.0)
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return out


def case_minibatch(rank, world_size, impl, include_self):
    """minibatch_discrimination / minibatch_features / the module with global_batch=True against the
    op on the whole batch: outputs, gradients of x, T (summed over ranks) and bias."""
    torch.manual_seed(31)
    mine, n = _slice(rank, world_size)
    x = torch.randn(n, 4, 2, 2, dtype=torch.float64)
    T, bias = torch.randn(16, 5, 3, dtype=torch.float64) * 0.3, torch.randn(5, dtype=torch.float64)
    leaves_ref = [t.clone().requires_grad_() for t in (x, T, bias)]
    out_ref = fastgan.ops.minibatch_discrimination(*leaves_ref, include_self=include_self, impl=impl)
    g = torch.randn_like(out_ref)
    (out_ref * g).sum().backward()
    leaves = [t.clone().requires_grad_() for t in (x[mine], T, bias)]
    out = fastgan.ops.minibatch_discrimination(*leaves, include_self=include_self, impl=impl, global_batch=True)
    (out * g[mine]).sum().backward()
    res = {}
    _diff(res, "out", out, out_ref[mine])
    _diff(res, "grad x", leaves[0].grad, leaves_ref[0].grad[mine])
    _diff(res, "grad T", _reduced(leaves[1].grad), leaves_ref[1].grad)
    _diff(res, "grad bias", _reduced(leaves[2].grad), leaves_ref[2].grad)
    o = fastgan.ops.minibatch_features(x[mine], T, bias, include_self, impl=impl, global_batch=True)
    _diff(res, "features", o, out_ref[mine, 16:])
    module = fastgan.nn.MinibatchDiscrimination(16, 5, 3, include_self=include_self, impl=impl, global_batch=True)
    module.double().load_state_dict(dict(weight=T, bias=bias))
    _diff(res, "module", module(x[mine]), out_ref[mine])
    return res


CASES = {f"block {kind} {impl} momentum={m}": (case_block, (kind, impl, m))
         for kind in ("generator", "discriminator") for impl in IMPLS for m in (0.1, None)}
# The triton backend's synchronized kernels under the interpreter (its conv blocks are slow there: one case each).
CASES.update({f"block {kind} triton momentum=None": (case_block, (kind, "triton", None))
              for kind in ("generator", "discriminator")})
# Rank 1's batch is empty: its row counts for nothing, it joins every collective, its gradients are 0.
CASES.update({f"block {kind} {impl} empty rank": (case_block, (kind, impl, 0.1, 2, EMPTY_RANK_SIZES))
              for kind in ("generator", "discriminator") for impl in IMPLS})
CASES.update({f"double D {impl} broadcast_buffers={bb}": (case_double_d, (impl, bb))
              for impl in IMPLS for bb in (False, True)})
CASES.update({f"minibatch discrimination {impl} include_self={s}": (case_minibatch, (impl, s))
              for impl in IMPLS for s in (False, True)})
CASES.update({f"one collective per block per pass {impl}": (case_collectives, (impl,)) for impl in IMPLS})
CASES["errors"] = (case_errors, ())


def run_cases(rank, world_size):
    return {name: fn(rank, world_size, *args) for name, (fn, args) in CASES.items()}


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def runs(request):
    return run_workers(run_cases, request.param, timeout=120)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_one_process(runs, case):
    for rank, results in enumerate(runs):
        for label, (err, scale) in results[case].items():
            assert err <= RTOL * max(1.0, scale), f"rank {rank}: {label}: |difference| {err:.3g} (scale {scale:.3g})"


def test_process_group_needs_torch_distributed():
    x, w = torch.randn(2, 3, 4, 4), torch.randn(5, 3, 3, 3)
    with pytest.raises(RuntimeError, match="process_group needs torch.distributed initialized"):
        fastgan.ops.conv2d_bn_leaky_relu(x, w, None, None, None, None, None, True, process_group=fastgan.ops.WORLD)
    with pytest.raises(RuntimeError, match="process_group"):
        fastgan.ops.conv_transpose_bn_relu(x, w.transpose(0, 1), None, None, None, None, None, True,
                                           process_group=fastgan.ops.WORLD)


@pytest.mark.parametrize("impl", IMPLS)
def test_sync_batch_norm_model_outside_a_distributed_run(impl):
    """Without torch.distributed a fused SyncBatchNorm model is a fused BatchNorm2d model."""
    seq, shape = _block("discriminator", 0.1)
    model = _distributed_copy(seq, impl)
    assert isinstance(model[1], fastgan.nn.FusedSyncBatchNorm)
    x = torch.randn(4, *shape, dtype=torch.float64)
    for _ in range(2):
        torch.testing.assert_close(model(x), seq(x), rtol=RTOL, atol=RTOL)
    torch.testing.assert_close(model[1].running_var, seq[1].running_var, rtol=RTOL, atol=RTOL)
    assert model[1].num_batches_tracked.item() == 2
    fastgan.unfuse(model)
    assert type(model[1]) is nn.SyncBatchNorm
