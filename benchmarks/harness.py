"""Timing, peak memory, bandwidth and reporting for the fastgan benchmarks.

Providers: "eager" (the op's `*_reference`), "compile" (`torch.compile` of it) and the fastgan
backends "cpu", "triton", "cuda" ("reference" is left out: it is eager). A provider that fails
becomes a row with `error` set ("n/a (reason)" in the tables); the run goes on. A failing fastgan
backend is a bug, so run.py then exits non-zero (`backend_failures`); eager and compile rows may
stay n/a (out of memory, torch.compile unsupported) with their reason.

Modes: "forward" runs the op on inputs that require grad, as in training (it records the
autograd graph), or under torch.no_grad for an inference case. "backward" times
`torch.autograd.grad` alone on a graph built by an untimed forward just before. "forward+backward"
times both. "double backward" times a gradient-penalty step: forward, the gradient with respect to
the first input with create_graph=True, and the gradients of its squared norm.
"""

import contextlib
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import fastgan
from fastgan._backend import availability

MODES = ("forward", "backward", "forward+backward", "double backward")
BACKENDS = ("cpu", "triton", "cuda")
PROVIDERS = ("eager", "compile") + BACKENDS
COPY = "copy"  # the bandwidth yardstick, reported as a row of its own
MB = 1e6
GB = 1e9


@dataclass(frozen=True)
class Settings:
    warmup: int      # untimed runs first, at least 2 (the first one compiles, for "compile")
    min_reps: int    # timed runs: at least min_reps, then more while under budget_s
    max_reps: int
    budget_s: float


QUICK = Settings(warmup=2, min_reps=5, max_reps=30, budget_s=0.25)
FULL = Settings(warmup=5, min_reps=10, max_reps=300, budget_s=1.5)


def reason(e):
    """One line saying why a provider failed."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def shape_label(shape):
    return "x".join(map(str, shape))


def unavailable(device, wanted, forced=()):
    """{backend: why it cannot run on `device`} for the wanted fastgan backends."""
    out = {}
    for name in wanted:
        if name not in BACKENDS:
            continue
        why = availability(name, device.type)
        if why is None and name == "triton" and device.type == "cpu" and name not in forced:
            # Triton on CPU only runs interpreted: a debugging aid whose timings mean nothing.
            why = "runs only under the Triton interpreter on CPU; not timed unless named in --backends"
        if why is not None:
            out[name] = why
    return out


def backend_failures(rows, missing, forced=()):
    """Lines naming every fastgan backend that failed: a row of a fastgan backend with an error,
    or a backend named in --backends (`forced`) that cannot run on the device."""
    out = [f"{name}: cannot run: {why}" for name, why in missing.items() if name in forced]
    out += [f"{r['op']} {r['shape']} {r['mode']} {r['provider']}: {r['error']}"
            for r in rows if r["provider"] in BACKENDS and r["error"]]
    return out


# ---------------------------------------------------------------------------- timing

def grad_targets(inputs):
    """The inputs gradients are taken for: those that require grad, or all if none does."""
    targets = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if targets:
        return targets
    return [t.requires_grad_() for t in inputs if isinstance(t, torch.Tensor)]


def mode_fns(fn, inputs, grad_out, mode, inference=False):
    """(setup, run) for a mode: `state = setup()` is untimed, then `run(state)` is timed."""
    targets = grad_targets(inputs)

    def forward(_=None):
        return fn(*inputs)

    def backward(out):
        return torch.autograd.grad(out, targets, grad_out)

    def double_backward(_):
        (g,) = torch.autograd.grad(forward(), targets[0], grad_out, create_graph=True)
        return torch.autograd.grad(g.square().sum(), targets, allow_unused=True, materialize_grads=True)

    if mode == "forward":
        if inference:
            return None, torch.no_grad()(forward)
        return None, forward
    if mode == "backward":
        return forward, backward  # a fresh graph per run, built outside the timed region
    if mode == "forward+backward":
        return None, lambda _: backward(forward())
    if mode == "double backward":
        return None, double_backward
    raise ValueError(mode)


def free_bytes(device):
    """Memory a run may still take on `device`: free GPU memory, or the kernel's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


class Timer:
    """Times one run. CUDA: events around the run, the GPU idle and L2 flushed at the start, so
    that launch overhead counts and inputs come from DRAM. CPU: wall clock; caches are not flushed."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.flush_buf = torch.empty(256 * 2**20, dtype=torch.int8, device=device)

    def once(self, setup, run):
        state = setup() if setup else None
        if self.cuda:
            self.flush_buf.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            out = run(state)
            end.record()
            end.synchronize()
            del out
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        out = run(state)
        t = time.perf_counter() - t0
        del out  # freed outside the timed region
        return t

    def interleaved(self, jobs, settings, status=lambda s: None):
        """{name: seconds of each timed run, or the exception it raised} for `jobs`, a dict
        {name: (setup, run)}. After each job's warm-up, the jobs take turns, one run each per
        round, so that a slow spell of the machine hits every job alike and the ratios between
        them hold even when the absolute times drift. Rounds go on until every job has
        `min_reps` runs, and then while under `budget_s` per job and `max_reps`."""
        out, live = {}, {}
        for name, (setup, run) in jobs.items():
            status(f"{name} warm-up")
            try:
                deadline = time.perf_counter() + settings.budget_s
                for i in range(settings.warmup):
                    self.once(setup, run)  # the first run compiles or loads what is lazy
                    if i >= 1 and time.perf_counter() > deadline:
                        break  # slow runs need less warming
                live[name], out[name] = (setup, run), []
            except Exception as e:
                out[name] = e
        deadline = time.perf_counter() + settings.budget_s * len(live)
        rounds = 0
        while live and (rounds < settings.min_reps or (
                rounds < settings.max_reps and time.perf_counter() < deadline)):
            status(f"round {rounds + 1}")
            for name, (setup, run) in list(live.items()):
                try:
                    out[name].append(self.once(setup, run))
                except Exception as e:
                    out[name] = e
                    del live[name]
            rounds += 1
        return out


# ---------------------------------------------------------------------------- memory

@contextlib.contextmanager
def _quiet_stderr():
    """Mute file descriptor 2, where C++ code prints."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_extra_bytes(device, setup, run):
    """Peak bytes allocated by one `run(state)` above what was allocated when it started.

    CUDA: the caching allocator's peak statistic. CPU: the profiler's memory events (one per
    allocation and free made through c10's CPU allocator, which is what ATen, C++ extension ops
    and torch.compile'd code allocate tensors with), summed in time order. The CPU count misses
    allocations made on OpenMP worker threads (the profiler only sees the calling thread) and
    memory not taken from c10's allocator (raw malloc/new scratch inside a kernel).
    """
    state = setup() if setup else None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = run(state)
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    # stderr is muted throughout: Kineto and c10 print notices (on profiler start and stop, on
    # freeing a block allocated before the start); the same run already ran unmuted while timed.
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run(state)
        del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()  # positive for an allocation, negative for a free
        peak = max(peak, total)
    return peak


# ---------------------------------------------------------------------------- one case

def _row(case, shape, mode, provider, **kw):
    row = dict(op=case.name, shape=shape_label(shape), mode=mode, provider=provider,
               median_ms=None, min_ms=None, iqr_ms=None, reps=0, x_eager=None, x_compile=None,
               peak_mb=None, gbps=None, eff_pct=None, bytes=None, gflops=None, outside_pct=None,
               flops=None, error=None)
    row.update(kw)
    return row


def provider_fn(case, provider):
    """The function a provider times, taking the case's inputs."""
    if provider == "eager":
        return case.reference
    if provider == "compile":
        return torch.compile(case.reference, dynamic=False)  # compiles on its first call
    return lambda *inputs: case.op(*inputs, impl=provider)


def _timing(times):
    """The timing fields of a row."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return dict(median_ms=statistics.median(times) * 1e3, min_ms=min(times) * 1e3,
                iqr_ms=(q[2] - q[0]) * 1e3, reps=len(times))


def _cleanup(device):
    gc.collect()  # drop what a failed provider left behind (an OOM's tensors, say)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _out_of_memory(case, shape, itemsize, device):
    """Why eager cannot run this shape here, or None."""
    if case.eager_bytes is None:
        return None
    need, free = case.eager_bytes(shape, itemsize), free_bytes(device)
    if free is None or need <= free:
        return None
    return f"out of memory: eager needs {need / GB:.1f} GB, {free / GB:.1f} GB free"


def _grad_out(case, inputs, fns):
    """A random output gradient, shaped by the first provider that runs (eager may not)."""
    for fn in [case.reference] + list(fns.values()):
        try:
            with torch.no_grad():
                return torch.randn_like(fn(*inputs))
        except Exception:
            _cleanup(inputs[0].device)
    return None


def _under_autocast(fn, device, amp):
    """fn's forward under torch.autocast to `amp` (its backward outside, as training code runs it)."""
    def run(*args):
        with torch.autocast(device.type, dtype=amp):
            return fn(*args)
    return run


def bench_case(case, shape, device, dtype, providers, settings, timer, status=lambda s: None, amp=None):
    """Rows for every mode and provider of one op and shape, copy and yardstick rows included.
    Within a mode the providers and the yardsticks are timed interleaved (`Timer.interleaved`).
    amp: every provider's forward under torch.autocast to that dtype (the inputs stay `dtype`)."""
    torch._dynamo.reset()  # "compile" compiles once per case, from scratch, for static shapes
    inputs = case.make_inputs(shape, dtype, device)
    grad_targets(inputs)
    modes = ("forward",) if case.inference else case.modes
    itemsize = inputs[0].element_size()
    oom = _out_of_memory(case, shape, itemsize, device)

    fns, rows = {}, []
    providers = [p for p in providers if p not in BACKENDS or p in case.backends]  # ops without every backend
    for provider in providers:
        if oom and provider in ("eager", "compile"):
            rows += [_row(case, shape, m, provider, error=oom) for m in modes]
            continue
        try:
            fns[provider] = provider_fn(case, provider)
        except Exception as e:
            rows += [_row(case, shape, m, provider, error=reason(e)) for m in modes]
    if amp is not None:
        fns = {p: _under_autocast(fn, device, amp) for p, fn in fns.items()}
    grad_out = _grad_out(case, inputs, {p: f for p, f in fns.items() if p not in ("eager", "compile")})
    if grad_out is None:
        return rows + [_row(case, shape, m, p, error="every provider failed on this shape")
                       for m in modes for p in fns]
    nbytes = dict(case.min_bytes(shape, itemsize)) if case.min_bytes else {}
    if "forward" in nbytes and "backward" in nbytes:
        nbytes["forward+backward"] = nbytes["forward"] + nbytes["backward"]
    flops = case.flops(shape) if case.flops else {}
    yard = case.yardstick(shape, dtype, device) if case.yardstick else None
    yard_rate = None

    for mode in modes:
        jobs = {}
        if mode in nbytes:  # the bandwidth yardstick: src.clone() reads and writes nbytes in all
            src = torch.randn(nbytes[mode] // 2 // itemsize, dtype=dtype, device=device)
            jobs[COPY] = (None, lambda _, src=src: src.clone())  # clone() allocates, as the ops do
        if yard and mode == "forward":
            jobs[yard[0]] = (None, lambda _: yard[1]())
        jobs.update({p: mode_fns(fn, inputs, grad_out, mode, case.inference) for p, fn in fns.items()})
        times = timer.interleaved(jobs, settings, status=lambda s: status(f"{mode} {s}"))
        jobs.pop(COPY, None)
        for name, t in times.items():
            if isinstance(t, Exception):
                rows.append(_row(case, shape, mode, name, error=reason(t)))
                _cleanup(device)
                continue
            row = _row(case, shape, mode, name, bytes=nbytes.get(mode), **_timing(t))
            row["flops"] = yard[2] if yard and name == yard[0] else flops.get(mode)
            if name == (yard and yard[0]):
                yard_rate = row["flops"] / (row["median_ms"] / 1e3)
            elif name != COPY:
                status(f"{mode} {name} memory")
                try:
                    row["peak_mb"] = peak_extra_bytes(device, *jobs[name]) / MB
                except Exception as e:  # the timing still stands
                    row["peak_error"] = reason(e)
            rows.append(row)

    # Derived columns: bandwidth against the copy of the same mode, GFLOP/s, speed-ups.
    by = {(r["mode"], r["provider"]): r for r in rows}
    for r in rows:
        if r["error"] or r["median_ms"] is None:
            continue
        seconds = r["median_ms"] / 1e3
        if r["flops"]:
            r["gflops"] = r["flops"] / seconds / 1e9
            if yard_rate and r["provider"] != yard[0]:
                r["outside_pct"] = 100 * max(0.0, 1 - r["flops"] / yard_rate / seconds)
        if r["bytes"]:
            r["gbps"] = r["bytes"] / seconds / GB
            copy = by[(r["mode"], COPY)]
            copy_gbps = copy["bytes"] / (copy["median_ms"] / 1e3) / GB if copy["median_ms"] else None
            r["eff_pct"] = 100 * r["gbps"] / copy_gbps if copy_gbps else None
        if r["provider"] in (COPY, yard and yard[0]):
            continue
        for base, key in (("eager", "x_eager"), ("compile", "x_compile")):
            b = by.get((r["mode"], base))
            if b and b["median_ms"]:
                r[key] = b["median_ms"] / r["median_ms"]
    order = {p: i for i, p in enumerate(PROVIDERS + (COPY,))}
    return sorted(rows, key=lambda r: (MODES.index(r["mode"]), order.get(r["provider"], len(order))))


# ---------------------------------------------------------------------------- reporting

def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:
        return None


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device, dtype, quick):
    cuda = device.type == "cuda"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({_cpu_model()})",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fastgan": fastgan.__version__,
        "git_commit": _git_commit(),
        "load_average_1min": os.getloadavg()[0],  # a busy machine makes noisy timings
        "dtype": str(dtype).replace("torch.", ""),
        "quick": quick,
    }


COLUMNS = ["op", "shape", "mode", "provider", "median ms", "IQR ms", "x vs eager", "x vs compile",
           "peak extra MB", "GB/s", "efficiency %", "GFLOP/s", "outside %"]


def _cells(r, width=None):
    """The table cells of a row: n/a rows put "n/a (reason)" after the provider."""
    head = [r["op"], r["shape"], r["mode"], r["provider"]]
    if r["error"]:
        why = r["error"] if width is None or len(r["error"]) <= width else r["error"][:width - 3] + "..."
        return head + [f"n/a ({why})"]

    def f(v, digits=3):
        """`digits` significant digits, no exponent; "-" where there is no value."""
        if v is None:
            return "-"
        if v == 0:
            return "0"
        return f"{v:.{max(0, digits - 1 - math.floor(math.log10(abs(v))))}f}"

    peak = f(r["peak_mb"]) if "peak_error" not in r else "n/a"
    return head + [f(r["median_ms"], 4), f(r["iqr_ms"], 2), f(r["x_eager"]), f(r["x_compile"]),
                   peak, f(r["gbps"]), f(r["eff_pct"], 2), f(r["gflops"]), f(r["outside_pct"], 2)]


def format_table(rows, width=100):
    """A plain-text table; n/a cells run across the remaining columns."""
    cells = [_cells(r, width) for r in rows]
    full = [c for c in cells if len(c) == len(COLUMNS)]
    widths = [max([len(h)] + [len(c[i]) for c in full]) for i, h in enumerate(COLUMNS)]
    left = 4  # text columns are left-aligned, numbers right-aligned

    def line(c):
        parts = [s.ljust(w) if i < left else s.rjust(w) for i, (s, w) in enumerate(zip(c, widths))]
        return "  ".join(parts + c[len(widths):]).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(COLUMNS), sep] + [line(c) for c in cells])


def format_summary(rows):
    """A Markdown table, one line per op, shape and mode: the median ms of every provider side by
    side, then each fastgan backend's speed-up over eager and torch.compile, and where the cases
    give them, its bandwidth efficiency against the copy, its GFLOP/s and the share of its time
    outside the yardstick's rate; then the GFLOP/s of the case's yardstick (one column for all:
    each op and shape has its own, e.g. a matrix product of its size)."""
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in rows)]
    backends = [p for p in providers if p in BACKENDS]
    metrics = [("x_eager", "x eager", "{:.2f}"), ("x_compile", "x compile", "{:.2f}"),
               ("eff_pct", "eff %", "{:.0f}"), ("gflops", "GFLOP/s", "{:.0f}"),
               ("outside_pct", "outside %", "{:.0f}")]
    metrics = [m for m in metrics if any(r.get(m[0]) is not None for r in rows)]
    by = {(r["op"], r["shape"], r["mode"], r["provider"]): r for r in rows}
    head = ["op", "shape", "mode"] + [f"{p} ms" for p in providers]
    head += [f"{b} {label}" for b in backends for _, label, _ in metrics]
    yards = [p for p in dict.fromkeys(r["provider"] for r in rows) if p not in PROVIDERS + (COPY,)]
    if yards:
        head.append("yardstick GFLOP/s")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    for key in dict.fromkeys((r["op"], r["shape"], r["mode"]) for r in rows):
        cells = list(key)
        for p in providers:
            r = by.get(key + (p,))
            cells.append("n/a" if r is None or r["error"] else f"{r['median_ms']:.3g}")
        for b in backends:
            r = by.get(key + (b,)) or {}
            for k, _, fmt in metrics:
                cells.append("-" if r.get(k) is None else fmt.format(r[k]))
        if yards:
            r = next((by[key + (y,)] for y in yards if key + (y,) in by), {})
            cells.append("-" if r.get("gflops") is None else f"{r['gflops']:.0f} ({r['provider']})")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def format_markdown(rows, info, missing):
    out = ["# fastgan benchmarks", ""]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out += [f"- unavailable: `{k}`: {v}" for k, v in missing.items()]
    out += ["", "## Summary", "", format_summary(rows), "", "## All rows"]
    for op in dict.fromkeys(r["op"] for r in rows):
        out += ["", f"### {op}", "", "| " + " | ".join(COLUMNS) + " |",
                "|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|"]
        for r in rows:
            if r["op"] == op:
                c = _cells(r, width=200)
                c += [""] * (len(COLUMNS) - len(c))
                out.append("| " + " | ".join(s.replace("|", "\\|") for s in c) + " |")
    return "\n".join(out) + "\n"


TRAIN_STEP = "train step"  # the mode of e2e.py's rows: whole training steps
PLOT_COLORS = {"compile": "#8c8c8c", "cpu": "#1f77b4", "triton": "#ff7f0e", "cuda": "#2ca02c"}
BAR_IN = 0.16  # bar thickness in inches, so that bars stay readable however many groups a panel has


def _speedups(rows):
    """{(op, shape, mode): {provider: eager median / its median}} for every timed row, the yardstick's
    included, and {(op, shape, mode): [(provider, why)]} for providers without a time (just [("eager", why)]
    where eager has none)."""
    by = {(r["op"], r["shape"], r["mode"], r["provider"]): r for r in rows}
    out, missing = {}, {}
    for r in rows:
        key = (r["op"], r["shape"], r["mode"])
        out.setdefault(key, {})
        if r["provider"] in ("eager", COPY):
            continue
        eager = by.get(key + ("eager",)) or {}
        if not eager.get("median_ms"):  # then no provider of the group has a speed-up: one note for all
            missing[key] = [("eager", eager.get("error") or "not run")]
            continue
        if r["error"] or not r["median_ms"]:
            missing.setdefault(key, []).append((r["provider"], r["error"] or "not timed"))
            continue
        out[key][r["provider"]] = eager["median_ms"] / r["median_ms"]
    return out, missing


def _na_note(missing, groups, where, providers):
    """A few short lines for a panel: where each provider has no bar (`where[i]` names groups[i]: its
    mode, or its step; the shape where eager has no time), and the first reason."""
    parts = []
    for p in ["eager"] + providers:
        hit = [(g[1] if p == "eager" else w, why) for g, w in zip(groups, where)
               for q, why in missing.get(g, []) if q == p]
        if hit:
            why = re.sub(r"^\w+(Error|Exception): ", "", hit[0][1])  # the exception's type: too long for a note
            why = why[:110] + "..." if len(why) > 110 else why
            places = "any" if len(hit) == len(groups) else ", ".join(dict.fromkeys(w for w, _ in hit))
            parts.append(f"no eager time, so no bars, for {places}: {why}" if p == "eager"
                         else f"no {p} bar for {places}: {why}")
    return "\n".join(textwrap.fill(line, 90) for line in parts)


def _log_ticks(ax, lo, hi):
    """Ticks 1-2-5 per decade labelled like "2x" on a log axis from lo to hi."""
    ticks = [m * 10.0 ** e for e in range(-3, 4) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}x" for t in ticks])
    ax.minorticks_off()


def _speedup_panel(ax, groups, labels, speed, providers, yard, title, note):
    """Horizontal bars from the 1.0 line, one band per (shape, mode) group, a bar per provider (the
    same color in every panel), the yardstick as a black tick across its group's band."""
    n = max(1, len(providers))
    h = 0.8 / n
    vals = [v for g in groups for p, v in speed[g].items() if p in providers or p in yard]
    lo, hi = min(vals + [1.0]), max(vals + [1.0])
    log = hi / lo > 4  # wide ranges (and any slow-down) read better as ratios
    for i, p in enumerate(providers):
        ys = [gi + (i - (n - 1) / 2) * h for gi, g in enumerate(groups) if p in speed[g]]
        xs = [speed[g][p] for g in groups if p in speed[g]]
        ax.barh(ys, [x - 1 for x in xs], h * 0.9, left=1, color=PLOT_COLORS.get(p), label=p)
        for x, y in zip(xs, ys):
            ax.text(x, y, f" {x:.2f}x " if x < 10 else f" {x:.0f}x ", va="center", ha="left" if x >= 1 else "right",
                    fontsize=7, bbox=dict(fc="white", ec="none", alpha=0.6, pad=0))  # legible over a tick
    for gi, g in enumerate(groups):
        for y, x in speed[g].items():
            if y in yard:
                ax.plot([x, x], [gi - 0.45, gi + 0.45], color="k", lw=2.2, solid_capstyle="butt")
    ax.axvline(1.0, color="k", lw=0.9)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.6, hi * 1.6)
        _log_ticks(ax, lo / 1.6, hi * 1.6)
    else:
        ax.set_xlim(min(lo, 1.0) - 0.05 * hi, hi * 1.18)
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}x")
    ax.set_ylim(len(groups) - 0.5, -0.5)  # first group on top
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels(labels, fontsize=8)
    for gi in range(1, len(groups)):  # a rule between shapes
        if groups[gi][1] != groups[gi - 1][1]:
            ax.axhline(gi - 0.5, color="0.85", lw=0.8)
    ax.grid(axis="x", color="0.92", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
    ax.set_xlabel("speed-up over eager (eager time / its time; right of 1x is faster)"
                  + (f"\n{note}" if note else ""), fontsize=8)
    ax.tick_params(axis="x", labelsize=8)


def speedup_figure(rows):
    """A chart of the speed-up over eager (eager median / provider median, per shape and mode).

    Rows of whole training steps (e2e.py, mode "train step") make a headline panel across the top;
    every op then has a panel of its own, two columns of them. One color per provider, the same in
    every panel, and one legend for the figure. A case's yardstick (a row whose provider is its
    label, e.g. "matmul 64x100x8192": the op's GEMM alone, forward only) is a black tick: the
    speed-up the op would have if it took only its GEMM's time. Providers without a time get no bar
    but one note per panel; the axis is logarithmic where the speed-ups span more than 4x.
    Returns the matplotlib figure, or None when no row has a speed-up to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    speed, missing = _speedups(rows)
    known = PROVIDERS + (COPY,)
    yard = {r["provider"] for r in rows if r["provider"] not in known}
    shown = [p for p in PROVIDERS if p != "eager" and any(r["provider"] == p for r in rows)]

    steps = [g for g in speed if g[2] == TRAIN_STEP]
    panels = []  # (title, groups, tick labels, what the n/a note names each group by)
    if steps:
        eager = {(r["op"], r["shape"], r["mode"]): r["median_ms"] for r in rows
                 if r["provider"] == "eager" and r["median_ms"]}
        names = [f"{op.removesuffix(' step')}, batch {s}" for op, s, _ in steps]
        labels = [n + (f" (eager {eager[g]:.0f} ms)" if g in eager else "") for n, g in zip(names, steps)]
        panels.append(("Whole training steps: G and D forward, backward and Adam steps", steps, labels, names))
    for op in dict.fromkeys(g[0] for g in speed if g[2] != TRAIN_STEP):
        groups = [g for g in speed if g[0] == op and g[2] != TRAIN_STEP]
        panels.append((op, groups, [f"{s}  {m}" for _, s, m in groups], [m for *_, m in groups]))
    if not panels:
        return None

    def height(groups):  # inches: bars, gaps, title and axis labels
        return len(groups) * (max(1, len(shown)) * BAR_IN + 0.12) + 1.3

    # The headline spans the figure. The op panels go, in order, to the shorter of two columns,
    # each panel as tall as its bars need, so that bars are as thick in every panel.
    head, ops = (panels[:1], panels[1:]) if steps else ([], panels)
    cols = [[] for _ in range(2 if len(ops) > 1 else 1)]
    for panel in ops:
        min(cols, key=lambda c: sum(height(q[1]) for q in c)).append(panel)
    col_h = max([sum(height(q[1]) for q in c) for c in cols] + [0])
    head_h = sum(height(q[1]) for q in head)
    fig = plt.figure(figsize=(8 * len(cols) if ops else 10, head_h + col_h + 0.5), layout="constrained")
    parts = fig.subfigures(2, 1, height_ratios=[head_h, col_h]) if head and ops else [fig]
    places = []  # (subfigure or figure, gridspec cell, panel)
    if head:
        places.append((parts[0], parts[0].add_gridspec(1, 1)[0, 0], head[0]))
    if ops:
        subs = parts[-1].subfigures(1, len(cols)) if len(cols) > 1 else [parts[-1]]
        for sub, col in zip(subs, cols):
            hs = [height(q[1]) for q in col]
            grid = sub.add_gridspec(len(col) + 1, 1, height_ratios=hs + [col_h - sum(hs) + 1e-6])
            places += [(sub, grid[i, 0], q) for i, q in enumerate(col)]
    for where, cell, (title, groups, labels, names) in places:
        ax = where.add_subplot(cell)
        provs = [p for p in shown if any(p in speed[g] or any(q == p for q, _ in missing.get(g, []))
                                         for g in groups)]
        _speedup_panel(ax, groups, labels, speed, provs, yard, title, _na_note(missing, groups, names, provs))

    handles = [Patch(color=PLOT_COLORS.get(p), label=p) for p in shown]
    if yard:
        handles.append(Line2D([], [], color="k", lw=2.2,
                              label="yardstick: eager time / the time of the op's GEMM alone (forward)"))
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=9, frameon=False)
    return fig


def plot_speedup(rows, path):
    """Write `speedup_figure(rows)` to `path` (a PNG), if there is anything to show."""
    import matplotlib.pyplot as plt

    fig = speedup_figure(rows)
    if fig is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)


def write_results(out_dir, rows, info, missing):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "unavailable": missing, "columns": COLUMNS, "results": rows}
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / "results.md").write_text(format_markdown(rows, info, missing))
    plot_speedup(rows, out_dir / "speedup.png")
