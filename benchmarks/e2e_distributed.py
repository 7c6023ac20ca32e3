"""Whole DCGAN training steps in several processes (torch.distributed, gloo on the CPU): fastgan
against eager DistributedDataParallel (issue 17).

Providers, each DDP over `--distributed` spawned processes with the same per-process batch:
- "eager DDP": the plain PyTorch model, local BatchNorm (torch's SyncBatchNorm refuses CPU tensors,
  so this is what eager code can run on CPUs), DDP's defaults;
- "fastgan DDP": fused, local BatchNorm (fastgan.distributed.data_parallel);
- "fastgan DDP + SyncBN": fused, statistics over the global batch (fastgan.distributed.synchronized):
  its difference to the previous row is the cost of synchronizing (one all-gather per block forward,
  one collective of the two sums per block backward).
A step is dcgan_step (D on real and fake, one backward; then G). Timed on rank 0 per step (the
collectives keep the ranks in step), providers interleaved round by round; median and spread.

    python benchmarks/run.py --e2e --distributed 2 [--quick]
"""

import datetime
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PROVIDERS = ["eager DDP", "fastgan DDP", "fastgan DDP + SyncBN"]


def _networks(provider, width, impl):
    from fastgan.distributed import data_parallel, synchronized
    from fastgan.models import DCGANDiscriminator, DCGANGenerator
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    fused = provider != "eager DDP"
    nets = [DCGANGenerator(ngf=width, fused=provider == "fastgan DDP", impl=impl),
            DCGANDiscriminator(ndf=width, fused=provider == "fastgan DDP", impl=impl)]
    if provider == "eager DDP":
        return [DistributedDataParallel(n) for n in nets]
    if provider == "fastgan DDP + SyncBN":
        nets = [synchronized(n, impl)[0] for n in nets]
    assert fused
    return [data_parallel(n) for n in nets]


def _worker(rank, world_size, port, batch, width, rounds, steps, impl, results):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=300))
    from fastgan.models import dcgan_optimizers, dcgan_step

    runs = {}
    for p in PROVIDERS:
        gen, disc = _networks(p, width, impl)
        opt_g, opt_d = dcgan_optimizers(gen, disc)
        real = torch.rand(batch, 3, 64, 64) * 2 - 1
        z = torch.randn(batch, 100, 1, 1)
        runs[p] = lambda g=gen, d=disc, og=opt_g, od=opt_d, r=real, zz=z: dcgan_step(g, d, og, od, r, zz)
        runs[p]()  # warm-up
    times = {p: [] for p in PROVIDERS}
    for _ in range(rounds):
        for p, step in runs.items():
            dist.barrier()
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                times[p].append(time.perf_counter() - t0)
    if rank == 0:
        results.put(times)
    dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world_size=2, batch=32, width=32, rounds=3, steps=3, impl=None, timeout=900):
    """{provider: [seconds per step on rank 0]}."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, batch, width, rounds, steps, impl, results),
                         daemon=True) for r in range(world_size)]
    for proc in procs:
        proc.start()
    try:
        return results.get(timeout=timeout)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def format_table(times, world_size, batch, width):
    base = statistics.median(times["eager DDP"])
    lines = [f"DCGAN 64x64 training step, {world_size} processes (gloo, CPU), batch {batch} per process "
             f"(global {batch * world_size}), width {width}, torch {torch.__version__}", "",
             "| provider | median ms/step | min | max | x eager DDP |", "|---|---|---|---|---|"]
    for p, t in times.items():
        med = statistics.median(t)
        lines.append(f"| {p} | {med * 1e3:.1f} | {min(t) * 1e3:.1f} | {max(t) * 1e3:.1f} | {base / med:.2f} |")
    return "\n".join(lines)


def main(world_size, quick, out):
    batch, width, rounds, steps = (8, 16, 2, 2) if quick else (32, 32, 10, 3)  # 30 steps each: gloo is noisy here
    times = run(world_size, batch, width, rounds, steps)
    table = format_table(times, world_size, batch, width)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-e2e-distributed.md").write_text(table + "\n")
    print(f"\nwrote {out}/results-e2e-distributed.md")
    return 0
