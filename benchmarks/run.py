"""Benchmark fastgan's ops against eager PyTorch and torch.compile.

    python benchmarks/run.py [--quick] [--ops fade_in,pixel_norm] [--backends cpu,compile]
                             [--device cpu|cuda] [--dtype float32] [--out DIR]
    python benchmarks/run.py --e2e [--quick] [--cuda-graphs] ...   # whole training steps (e2e.py)
    python benchmarks/run.py --e2e --distributed 2 [--quick]   # steps in 2 gloo processes (e2e_distributed.py)
    python benchmarks/run.py --model [--quick] ... # GPU traffic model, no timing (traffic.py)
    python benchmarks/run.py --overhead [--quick] ...  # host us and dispatched ops per call (overhead.py)

Prints a table and writes results.json, results.md and speedup.png to --out. See README.md.
Exits 1 after all that if a fastgan backend (cpu, triton, cuda) failed anywhere, or one named in
--backends (without --backends: the device's own, cpu or cuda) cannot run here; eager and compile
rows that fail stay n/a with their reason.
"""

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # harness and cases; the checkout's fastgan

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import e2e  # noqa: E402
import harness  # noqa: E402
import overhead  # noqa: E402
import traffic  # noqa: E402
from cases import CASES  # noqa: E402
from fastgan.models.amp import AMP_DTYPES  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _list(choices):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(choices)}")
        return names
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the smallest and largest shapes, few repeats (CI)")
    p.add_argument("--ops", type=_list([c.name for c in CASES]), help="ops to run (default: all)")
    p.add_argument("--backends", type=_list(harness.PROVIDERS),
                   help=f"providers to run, from {', '.join(harness.PROVIDERS)} (default: all)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default: %(default)s)")
    p.add_argument("--e2e", action="store_true", help="time whole training steps instead of the ops")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                   help="every provider's ops (forward) or --e2e steps under torch.autocast (steps: fp16 with a "
                        "GradScaler)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="--e2e on a GPU: replay each whole step as a CUDA graph (compile: mode reduce-overhead)")
    p.add_argument("--distributed", type=int, default=0, metavar="N",
                   help="--e2e in N processes (gloo, CPU): fastgan vs eager DDP (e2e_distributed.py)")
    p.add_argument("--model", action="store_true",
                   help="print the GPU traffic model of the ops (bytes, launches, H100 floor) and exit")
    p.add_argument("--overhead", action="store_true",
                   help="host us and dispatched ops per call of the ops and steps on tiny tensors (overhead.py)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.cuda_graphs and not (args.e2e and args.device == "cuda"):
        p.error("--cuda-graphs captures whole training steps on a GPU: it needs --e2e and --device cuda")
    if args.distributed and not (args.e2e and args.device == "cpu" and args.distributed > 1):
        p.error("--distributed N times --e2e steps in N > 1 processes on the CPU (gloo)")
    if args.cuda_graphs and args.amp == "fp16":
        p.error("--cuda-graphs does not take --amp fp16: the GradScaler checks its gradients on the host")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.distributed:  # issue 17
        import e2e_distributed

        return e2e_distributed.main(args.distributed, args.quick, args.out)
    start = time.perf_counter()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    settings = harness.QUICK if args.quick else harness.FULL
    wanted = args.backends or list(harness.PROVIDERS)
    missing = harness.unavailable(device, wanted, forced=args.backends or ())
    providers = [p for p in wanted if p not in missing]
    cases = [c for c in CASES if not args.ops or c.name in args.ops]
    # Required: the backends named in --backends, and without --backends the device's own (cpu on a
    # CPU, cuda on a GPU): a run that times no fastgan kernel of the device (an extension not built)
    # must not pass as one that did.
    forced = [b for b in args.backends or (device.type,) if b in harness.BACKENDS]
    if args.model:
        print(f"GPU traffic model ({args.dtype}; H100: {traffic.H100_BYTES_PER_S / 1e12:.2f} TB/s, "
              f"{traffic.H100_TENSOR_FLOPS / 1e12:.0f} TFLOP/s; launch {traffic.LAUNCH_US} us):\n")
        print(traffic.format_model(traffic.model_rows(cases, args.quick, dtype)))
        return 0
    if args.overhead:  # eager and the fastgan backends; compile has no place in a per-call host figure
        providers = [p for p in providers if p == "eager" or p in harness.BACKENDS]
        rc = overhead.run(cases, providers, missing, device, dtype, args.quick, args.out, steps=not args.ops)
        return rc or int(bool(forced and any(b in missing for b in forced)))
    if args.e2e:
        steps = e2e.QUICK_STEPS if args.quick else e2e.STEPS
        work = [(step, None) for step in steps]
    else:
        work = [(c, s) for c in cases for s in c.shapes_for(device, args.quick)]

    info = harness.machine_info(device, dtype, args.quick)  # before the run: the load is others'
    info["cuda_graphs"], info["amp"] = args.cuda_graphs, args.amp
    torch.manual_seed(0)
    timer = harness.Timer(device)
    rows = []
    bar = tqdm(work, desc="benchmarks", unit="case", dynamic_ncols=True)
    for case, shape in bar:
        label = f"{case.name} {harness.shape_label(shape) if shape else case.batch}"
        bar.set_postfix_str(label)
        status = lambda s: bar.set_postfix_str(f"{label} {s}")  # noqa: E731
        if args.e2e:
            rows += e2e.bench_step(case, device, providers, settings, timer, status=status,
                                   mode=e2e.Mode(args.cuda_graphs, AMP_DTYPES[args.amp]))
        else:
            rows += harness.bench_case(case, shape, device, dtype, providers, settings, timer, status=status,
                                       amp=AMP_DTYPES[args.amp])
    bar.close()

    print(f"\nfastgan benchmarks on {info['device']}, {info['dtype']}, torch {info['torch']}, "
          f"{info['torch_threads']} threads{', quick' if args.quick else ''}"
          f"{', whole steps as CUDA graphs' if args.cuda_graphs else ''}"
          f"{f', autocast {args.amp}' if args.amp != 'off' else ''}")
    for name, why in missing.items():
        print(f"  {name}: n/a ({why})")
    print()
    print(harness.format_table(rows))
    print("\nside by side:\n")
    print(harness.format_summary(rows))
    info["run_seconds"] = round(time.perf_counter() - start, 1)
    harness.write_results(args.out, rows, info, missing)
    print(f"\nwrote {args.out}/results.json, results.md, speedup.png; the run took {info['run_seconds']:.0f} s")
    failures = harness.backend_failures(rows, missing, forced)
    if failures:
        print(f"\nFAILED: {len(failures)} fastgan backend failure(s):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
