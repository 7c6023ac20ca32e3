"""Running test code in several processes with torch.distributed (gloo, localhost only).

`run_workers(fn, world_size, *args)` spawns `world_size` processes, each initializing a gloo
process group on a free localhost port and calling `fn(rank, world_size, *args)` (a module-level
function: spawned processes import it); it returns the ranks' return values, or raises with the
first failing rank's traceback. Bounded: processes that do not finish within `timeout` seconds
are killed and the call fails.
"""

import datetime
import os
import queue
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank, world_size, port, results, args):
    if not torch.cuda.is_available():  # as conftest: the Triton interpreter without a GPU
        os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)  # the processes share the machine's cores
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=60))
        try:
            results.put((rank, True, fn(rank, world_size, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_workers(fn, world_size, *args, timeout=120):
    """[fn(rank, world_size, *args) for each rank], each in its own process of a gloo group."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, rank, world_size, port, results, args), daemon=True)
             for rank in range(world_size)]
    for p in procs:
        p.start()
    out, failures = {}, []
    try:
        for _ in range(world_size):
            try:
                rank, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                failures.append(f"timed out after {timeout} s")
                break
            if ok:
                out[rank] = value
            else:
                failures.append(f"rank {rank} failed:\n{value}")
                break  # the others may wait on it in a collective: no point waiting for them
    finally:
        for p in procs:
            p.join(timeout=5 if not failures else 0.5)
            if p.is_alive():
                p.kill()
                p.join()
    if failures:
        raise AssertionError("\n".join(failures))
    return [out[r] for r in range(world_size)]
