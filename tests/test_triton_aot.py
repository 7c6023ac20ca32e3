"""Ahead-of-time compilation of every Triton kernel as it is launched on GPU.

No GPU needed. Each kernel of `fastgan.triton_kernels.KERNEL_SPECS`, in each of
its variants (layout and other constexpr specializations), autotune configs and
dtypes, is lowered to PTX and cubin for sm_80 and sm_90, with the argument
alignment Triton specializes on at launch both present (pointers and integers
divisible by 16: the vectorized code) and absent. (Integer arguments equal to
1 become constants at launch too; that only folds code and is compiled here
only where a variant always passes 1, as NCHW's K of the 2x2-block kernels.)
Each must fit the architecture's shared memory, spill no registers (`ptxas -v`, run
as Triton runs it), and have a tt.dot only if it calls tl.dot (KernelSpec.dots).

The compiles run in one subprocess without TRITON_INTERPRET: conftest turns the
interpreter on for CPU-only machines, and `triton.jit` decides at definition
time. That subprocess is this file run as a script; it compiles the cases the
session selected, once, on all cores (Triton's cache makes later sessions faster).
"""

import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import pytest

pytest.importorskip("triton")

from fastgan.triton_kernels import KERNEL_SPECS  # noqa: E402 (the specs are data: interpreted or not)

ARCHS = {80: 163 * 1024, 90: 227 * 1024}  # compute capability: shared memory per block, bytes
DTYPES = ("fp32", "fp64", "fp16", "bf16")
ALIGNMENTS = ("aligned", "unaligned")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_id(config):
    return ",".join([f"{k}={v}" for k, v in config.kwargs.items()] + [f"warps={config.num_warps}"])


def _cases():
    """{case id: (spec, variant constexprs, config, dtype, alignment, arch)} of every compile."""
    cases = {}
    for spec in KERNEL_SPECS:
        for variant, constexprs, configs in spec.variants:
            for config, dtype, alignment, arch in itertools.product(configs, DTYPES, ALIGNMENTS, ARCHS):
                case = f"{spec.name}-{variant}-{_config_id(config)}-{dtype}-{alignment}-sm{arch}"
                cases[case] = (spec, constexprs, config, dtype, alignment, arch)
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def results(request):
    """The compile results of the selected cases, from one subprocess."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.path == request.path and hasattr(item, "callspec")]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        cases_file, results_file = os.path.join(tmp, "cases.json"), os.path.join(tmp, "results.json")
        with open(cases_file, "w") as f:
            json.dump(selected, f)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), cases_file, results_file],
                              cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"the compile subprocess failed:\n{proc.stderr[-5000:]}")
        with open(results_file) as f:
            return json.load(f)


@pytest.mark.parametrize("case", list(CASES))
def test_compiles_within_limits(case, results):
    result = results[case]
    assert result["error"] is None, result["error"]
    arch = CASES[case][-1]
    assert result["shared"] <= ARCHS[arch], f"{result['shared']} bytes of shared memory"
    assert result["spill_stores"] == 0 and result["spill_loads"] == 0, result["ptxas"]
    spec = CASES[case][0]
    assert (result["dots"] > 0) == spec.dots, (
        f"{result['dots']} tt.dot in the TTIR of a kernel that {'calls' if spec.dots else 'does not call'} tl.dot: "
        "a broadcast product summed over an axis becomes a TF32 dot on GPU (KernelSpec.dots)")


# ---------------------------------------------------------------------------
# The compile subprocess.


def _compile(spec, constexprs, config, dtype, alignment, arch):
    import triton
    from triton.backends.compiler import GPUTarget

    constexprs = {**constexprs, **config.kwargs}
    signature = {name: "constexpr" if name in constexprs else ty.format(dtype=dtype)
                 for name, ty in spec.signature.items()}
    attrs = {}
    if alignment == "aligned":
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(spec.fn.arg_names)
                 if signature[name][0] in "*i"}
    source = triton.compiler.ASTSource(fn=spec.fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages, "num_ctas": config.num_ctas}
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def _ptxas_report(ptx, arch):
    """ptxas -v on the PTX, with the options Triton builds its cubin with."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={sm_arch_from_capability(arch)}", path, "-o", path + ".cubin"],
                              capture_output=True, text=True, check=True)
    return proc.stderr


def _run(case):
    spec, constexprs, config, dtype, alignment, arch = CASES[case]
    try:
        compiled = _compile(spec, constexprs, config, dtype, alignment, arch)
        report = _ptxas_report(compiled.asm["ptx"], arch)
    except Exception as e:  # reported by the test of this case
        return {"error": f"{type(e).__name__}: {e}"}
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return {"error": None, "shared": compiled.metadata.shared, "spill_stores": int(spills[1]),
            "spill_loads": int(spills[2]), "ptxas": report, "dots": compiled.asm["ttir"].count("tt.dot")}


if __name__ == "__main__":
    cases_file, results_file = sys.argv[1:]
    with open(cases_file) as f:
        selected = json.load(f)
    # Compiles are CPU-bound and independent: one process per core (forked: no re-import).
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        results = dict(zip(selected, pool.map(_run, selected, chunksize=8)))
    with open(results_file, "w") as f:
        json.dump(results, f)
