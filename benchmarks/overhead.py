"""Host overhead per call: host microseconds and dispatched ops of every op and training step, on tiny tensors.

    python benchmarks/run.py --overhead [--quick] [--ops pixel_norm,fade_in] [--backends eager,cpu] [--out DIR]

Why: on an H200 a fused DCGAN step was slower than eager PyTorch because of host cost, not kernel time.
This mode is the CPU proxy for it. Every op case (benchmarks/cases/) runs at a tiny shape of its own (TINY
below) and every training step of e2e.py at a tiny size (batch 2-4, narrow networks, TINY_STEPS), so
that kernel time is negligible and what is measured is the host's work per call:

- host us: the median wall time of one call (forward; forward+backward; or the whole training step),
  after a warm-up, providers interleaved in rounds so that the load of the machine hits them alike.
  A training step's time still includes its kernels (64x64 DCGAN images; ~50-100 ms here), so for the
  steps the op counts are the better proxy.
  Measured with no dispatch mode active. On CPU tensors this is a lower bound on a GPU's host cost per
  call, which adds the launches themselves (a few us each on CUDA) and the caching allocator.
- dispatched ops: counted by OpCounter, a TorchDispatchMode that sees every op reaching the Python
  dispatch key, by name. "aten" counts every aten:: op; of those, "views" are metadata-only ops (no
  kernel, no allocation: view, expand, permute, detach, ...), "copies" the ones that copy data to change
  layout, dtype or device (copy_, clone, _to_copy, contiguous, ...), and "allocs" the bare allocations
  (empty*, new_empty*). "fastgan" counts the backends' kernel ops (fastgan_cpu::*, fastgan_cuda::*): one
  each, the work inside them (its allocations, its launches) is not seen. On CUDA each non-view aten op is
  typically one kernel launch or one allocation; a fastgan kernel op is one or a few launches. "ops" is
  aten + fastgan, the figure compared with eager. The Triton backend runs as Python host code calling
  aten ops (torch.empty, ...) and launches that the counter does not see; under TRITON_INTERPRET (no GPU)
  its host time means nothing and its rows are marked "triton (interpreter)".

Counting fairly: a dispatch mode makes fastgan take its traced path (`fastgan.ops._dispatch._traced()`
is true), the `torch.library` custom op `fastgan::*`, whose body the mode does not see (a mode is popped
while it handles an op), instead of the `torch.autograd.Function` that plain calls take and that the host
time measures. So the counts are taken with `_traced` patched to return False in the fastgan modules that
use it: the ops counted are those of the timed path. As a check, the ops are also counted through the
custom-op path, with each `fastgan::*` op's body run under the counter; the "custom-op path" column says
"same" where both give the same aten and fastgan counts, and the difference otherwise.

The mode reports; it does not judge a miss as a failure (the issue's target, host time and dispatched
ops of every fused op <= the eager code it replaces, is a line per op in the report). It exits non-zero
if a fastgan provider raises. Writes overhead.json and overhead.md to --out. --quick (fewer calls)
takes about a minute on two busy CPU cores (the three steps most of it); the full run about three.
"""

import collections
import contextlib
import json
import statistics
import sys
import time

import torch
import torch._library.custom_ops as custom_ops
from torch.utils._python_dispatch import TorchDispatchMode

import e2e
import harness
from fastgan.ops import _dispatch

# A tiny shape per op case, in each case's own shape convention (see its make_inputs).
TINY = {
    "fade_in": (4, 3, 8, 8),
    "blend_reals": (4, 3, 8, 8),
    "pixel_norm": (4, 16, 4, 4),
    "conv_transpose_bn_relu": (4, 16, 4, 8),        # n, c_in, h, c_out
    "conv_transpose_bn_relu_eval": (4, 16, 4, 8),
    "conv2d_bn_leaky_relu": (4, 8, 8, 16),          # n, c_in, h, c_out
    "minibatch_discrimination": (4, 16, 2, 2, 8, 3),  # n, features..., B, C
    "bias_act": (4, 16, 4, 4),
    "bias_act_pixel_norm": (4, 16, 4, 4),
    "equalized_conv": (4, 16, 4, 4),
    "minibatch_stddev": (4, 16, 4, 4),              # n a multiple of the group size, 4
    "fade_in_from_rgb": (4, 3, 16, 4, 4),           # n, c_in, c_out, h, w
    # The VBN cases' ops take ref_size 16 (the last entry, as in cases/virtual_batch_norm.py): 4 current samples.
    "virtual_batch_norm": (20, 16, 4, 16),          # n, c, h, ref_size
    "conv_transpose_vbn_relu": (20, 16, 4, 8, 16),  # n, c_in, h, c_out, ref_size
    "conv2d_vbn_leaky_relu": (20, 8, 8, 16, 16),
}
VIEWS = {"view", "_unsafe_view", "expand", "permute", "detach", "alias", "t", "transpose", "unsqueeze", "squeeze",
         "as_strided", "slice", "select", "reshape", "unflatten", "flatten", "split", "chunk", "narrow",
         "unbind", "_reshape_alias", "lift_fresh", "view_as", "expand_as", "unfold"}
COPIES = {"copy_", "clone", "_to_copy", "to", "contiguous", "_copy_from", "_copy_from_and_resize", "copy"}
ALLOCS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
KERNEL_NAMESPACES = ("fastgan_cpu", "fastgan_cuda")
COUNTS = ("ops", "aten", "views", "copies", "allocs", "fastgan")


class Repeats:
    def __init__(self, warmup, rounds, calls):
        self.warmup, self.rounds, self.calls = warmup, rounds, calls  # median over rounds * calls calls


QUICK = Repeats(warmup=5, rounds=5, calls=10)
FULL = Repeats(warmup=20, rounds=20, calls=20)
QUICK_STEP = Repeats(warmup=2, rounds=3, calls=5)  # a tiny step still takes ~50-100 ms on two busy cores
FULL_STEP = Repeats(warmup=3, rounds=10, calls=5)


TINY_STEPS = [
    e2e.Step("dcgan", 4, e2e._dcgan(4, width=4, nz=16, kernel_dim=3)),
    e2e.Step("dcgan+minibatch", 4, e2e._dcgan(4, minibatch_features=8, width=4, nz=16, kernel_dim=3)),
    e2e.Step("progan+gp 16x16", 4, e2e._progan(4, resolution=16, fmap_max=16)),
]


# ---------------------------------------------------------------------------- counting

def _custom_op_body(func):
    """The Python body of a `fastgan::*` custom op (what its backend kernel runs), or None."""
    name = func.name()
    if not name.startswith("fastgan::"):
        return None
    opdef = custom_ops.OPDEFS.get(name.split(".")[0])
    return opdef._init_fn if opdef is not None else None


class OpCounter(TorchDispatchMode):
    """Counts every op that reaches it, by name ("aten::mul.Tensor", "fastgan_cpu::pixel_norm").

    A `fastgan::*` custom op (the traced path) is counted under its own name and its body is run with
    the counter active again, so that the aten and kernel ops inside it are counted as well."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.name()] += 1
        body = _custom_op_body(func)
        if body is not None:
            with self:  # the mode is popped while it handles an op: push it back for the body
                return body(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def summarize(counts):
    """{ops, aten, views, copies, allocs, fastgan} from OpCounter.counts."""
    out = dict.fromkeys(COUNTS, 0)
    for name, n in counts.items():
        namespace, _, op = name.partition("::")
        base = op.split(".")[0]
        if namespace == "aten":
            out["aten"] += n
            out["views"] += n * (base in VIEWS)
            out["copies"] += n * (base in COPIES)
            out["allocs"] += n * (base in ALLOCS)
        elif namespace in KERNEL_NAMESPACES:
            out["fastgan"] += n
    out["ops"] = out["aten"] + out["fastgan"]
    return out


@contextlib.contextmanager
def untraced():
    """fastgan's plain-call path (autograd.Function, kernel ops called directly) even under a dispatch
    mode: `_traced` patched to False in every fastgan module that imported it."""
    original = _dispatch._traced
    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("fastgan") and getattr(m, "_traced", None) is original]
    for m in patched:
        m._traced = lambda: False
    try:
        yield
    finally:
        for m in patched:
            m._traced = original


def count_ops(run, custom_op_path=False):
    """Op counts (summarize) and the raw Counter of one call of `run`."""
    counter = OpCounter()
    with contextlib.nullcontext() if custom_op_path else untraced(), counter:
        run()
    return summarize(counter.counts), counter.counts


# ---------------------------------------------------------------------------- timing

def host_us(jobs, repeats):
    """{key: median host us of one call} for zero-argument functions, timed interleaved in rounds;
    {key: exception} for one that raised."""
    times = {k: [] for k in jobs}
    out = {}
    for k, fn in jobs.items():
        try:
            for _ in range(repeats.warmup):
                fn()
        except Exception as e:  # noqa: BLE001 - reported as the row's error
            out[k] = e
    live = {k: fn for k, fn in jobs.items() if k not in out}
    for _ in range(repeats.rounds):
        for k, fn in list(live.items()):
            try:
                for _ in range(repeats.calls):
                    t = time.perf_counter_ns()
                    fn()
                    times[k].append(time.perf_counter_ns() - t)
            except Exception as e:  # noqa: BLE001
                out[k] = e
                del live[k]
    out.update({k: statistics.median(times[k]) / 1e3 for k in live})
    return out


# ---------------------------------------------------------------------------- one op or step

def provider_label(provider, device):
    interpreted = provider == "triton" and device.type == "cpu"
    return "triton (interpreter)" if interpreted else provider


def _op_jobs(case, provider, device, dtype):
    """{mode: zero-argument function} for an op case: "forward", and "forward+backward" unless inference."""
    torch.manual_seed(0)
    inputs = case.make_inputs(TINY[case.name], dtype, device)
    fn = harness.provider_fn(case, provider)
    with torch.no_grad():
        grad_out = torch.randn_like(case.reference(*inputs))  # before the counting: not one of the op's ops
    modes = ["forward"] if case.inference else ["forward", "forward+backward"]
    return {m: (lambda run=harness.mode_fns(fn, inputs, grad_out, m, case.inference)[1]: run(None)) for m in modes}


def _step_jobs(step, provider, device):
    return {"forward+backward": e2e.step_fn(step, provider, device)}


def measure(name, shape, make_jobs, providers, device, repeats, status=lambda s: None):
    """Rows of one op or step: one per provider, with host us and op counts per mode."""
    rows, jobs = {}, {}
    for p in providers:
        rows[p] = dict(op=name, shape=shape, provider=provider_label(p, device), backend=p, error=None,
                       us={}, counts={}, custom_op_path=None, x_eager={})
        try:
            status(f"{p} build")
            for mode, fn in make_jobs(p).items():
                jobs[(p, mode)] = fn
        except Exception as e:  # noqa: BLE001
            rows[p]["error"] = harness.reason(e)
    status("timing")
    for (p, mode), t in host_us(jobs, repeats).items():
        if isinstance(t, Exception):
            rows[p]["error"] = rows[p]["error"] or harness.reason(t)
        else:
            rows[p]["us"][mode] = t
    for (p, mode), fn in jobs.items():
        if rows[p]["error"]:
            continue
        status(f"{p} counting")
        try:
            rows[p]["counts"][mode], raw = count_ops(fn)
            rows[p].setdefault("raw", {})[mode] = dict(sorted(raw.items()))
            if p != "eager":
                rows[p]["custom_op_path"] = _custom_path_check(fn, rows[p]["counts"][mode], mode,
                                                               rows[p]["custom_op_path"])
        except Exception as e:  # noqa: BLE001
            rows[p]["error"] = harness.reason(e)
    eager = rows.get("eager")
    for r in rows.values():
        if eager and not eager["error"] and not r["error"]:
            for mode, us in r["us"].items():
                r["x_eager"][f"{mode} us"] = us / eager["us"][mode]
            for mode, c in r["counts"].items():
                r["x_eager"][f"{mode} ops"] = c["ops"] / max(eager["counts"][mode]["ops"], 1)
    return list(rows.values())


def _custom_path_check(fn, counts, mode, so_far):
    """"same" while the custom-op path counts as many aten and fastgan ops as the plain path, else the
    differences, per mode."""
    other, _ = count_ops(fn, custom_op_path=True)
    diff = {k: other[k] - counts[k] for k in ("aten", "fastgan") if other[k] != counts[k]}
    note = "same" if not diff else f"{mode}: " + ", ".join(f"{k} {d:+d}" for k, d in diff.items())
    if so_far in (None, "same"):
        return note
    return so_far if note == "same" else f"{so_far}; {note}"


# ---------------------------------------------------------------------------- reporting

def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


COLUMNS = ["op / step", "provider", "fwd us", "fwd+bwd us", "ops fwd", "ops f+b", "aten fwd", "aten f+b",
           "views f+b", "copies f+b", "allocs f+b", "fastgan f+b", "x eager us", "x eager ops", "custom-op path"]


def _cells(r):
    if r["error"]:
        return [r["op"], r["provider"], f"n/a ({r['error']})"] + [""] * (len(COLUMNS) - 3)
    us, c, x = r["us"], r["counts"], r["x_eager"]
    last = "forward+backward" if "forward+backward" in c else "forward"
    f, fb = c.get("forward", {}), c.get("forward+backward", {})
    return [r["op"], r["provider"], _fmt(us.get("forward"), ".0f"), _fmt(us.get("forward+backward"), ".0f"),
            _fmt(f.get("ops"), "d"), _fmt(fb.get("ops"), "d"), _fmt(f.get("aten"), "d"), _fmt(fb.get("aten"), "d"),
            _fmt(c[last]["views"], "d"), _fmt(c[last]["copies"], "d"), _fmt(c[last]["allocs"], "d"),
            _fmt(c[last]["fastgan"], "d"),
            _fmt(x.get(f"{last} us"), ".2f"), _fmt(x.get(f"{last} ops"), ".2f"), r["custom_op_path"] or ""]


def format_table(rows, markdown=False):
    table = [COLUMNS] + [_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join([lines[0], "|" + "---|" * len(COLUMNS)] + lines[1:])
    widths = [max(len(row[i]) for row in table if len(row[2]) < 40 or i < 2) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def verdicts(rows):
    """A line per op/step and fastgan provider: is it <= eager on host time and on dispatched ops (the
    mode the op is used in: forward+backward, or forward for an inference case)?"""
    lines = []
    eager = {r["op"]: r for r in rows if r["backend"] == "eager" and not r["error"]}
    for r in rows:
        if r["backend"] == "eager":
            continue
        if r["error"] or r["op"] not in eager:
            lines.append(f"{r['op']} {r['provider']}: n/a ({r['error'] or 'no eager row'})")
            continue
        e = eager[r["op"]]
        parts = []
        for mode in r["us"]:
            us, e_us = r["us"][mode], e["us"][mode]
            ops, e_ops = r["counts"][mode]["ops"], e["counts"][mode]["ops"]
            parts.append(f"{mode}: host {'OK' if us <= e_us else 'MISS'} ({us:.0f} vs {e_us:.0f} us), "
                         f"ops {'OK' if ops <= e_ops else 'MISS'} ({ops} vs {e_ops})")
        lines.append(f"{r['op']} {r['provider']}: " + "; ".join(parts))
    return lines


def write_results(out_dir, rows, info, missing, lines):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overhead.json").write_text(json.dumps(dict(info=info, unavailable=missing, rows=rows), indent=1))
    md = [f"# fastgan host overhead per call ({info['device']}, torch {info['torch']}"
          f"{', quick' if info['quick'] else ''})", "",
          "Tiny tensors: host us is the median wall time of one call; ops are the ops dispatched per call "
          "(see benchmarks/overhead.py). f+b: forward+backward (the whole step for a training step).", "",
          format_table(rows, markdown=True), "", "## fastgan <= eager?", ""] + [f"- {line}" for line in lines]
    md += [f"- {name}: n/a ({why})" for name, why in missing.items()]
    (out_dir / "overhead.md").write_text("\n".join(md) + "\n")


# ---------------------------------------------------------------------------- the mode

def run(cases, providers, missing, device, dtype, quick, out_dir, steps=True):
    """Runs the mode and prints its report; returns the exit status (1 if a fastgan provider raised)."""
    from tqdm import tqdm

    start = time.perf_counter()
    repeats = QUICK if quick else FULL
    work = [(c.name, harness.shape_label(TINY[c.name]), lambda p, c=c: _op_jobs(c, p, device, dtype), repeats)
            for c in cases]
    if steps:
        step_repeats = QUICK_STEP if quick else FULL_STEP
        work += [(f"{s.name} step", f"batch {s.batch}", lambda p, s=s: _step_jobs(s, p, device), step_repeats)
                 for s in TINY_STEPS]
    info = harness.machine_info(device, dtype, quick)
    rows = []
    bar = tqdm(work, desc="overhead", unit="case", dynamic_ncols=True)
    for name, shape, make, reps in bar:
        bar.set_postfix_str(name)
        rows += measure(name, shape, make, providers, device, reps,
                        status=lambda s, name=name: bar.set_postfix_str(f"{name} {s}"))
    bar.close()
    lines = verdicts(rows)
    print(f"\nfastgan host overhead per call on {info['device']}, {info['dtype']}, torch {info['torch']}, "
          f"{info['torch_threads']} threads{', quick' if quick else ''} (tiny tensors; see benchmarks/overhead.py)")
    for name, why in missing.items():
        print(f"  {name}: n/a ({why})")
    print()
    print(format_table(rows))
    print("\nfastgan <= eager (host time, dispatched ops)?\n")
    print("\n".join(lines))
    info["run_seconds"] = round(time.perf_counter() - start, 1)
    write_results(out_dir, rows, info, missing, lines)
    print(f"\nwrote {out_dir}/overhead.json, overhead.md; the run took {info['run_seconds']:.0f} s")
    failures = [f"{r['op']} {r['provider']}: {r['error']}" for r in rows if r["backend"] != "eager" and r["error"]]
    if failures:
        print(f"\nFAILED: {len(failures)} fastgan provider failure(s):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0
