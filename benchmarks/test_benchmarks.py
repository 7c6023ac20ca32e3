"""The benchmark cases through pytest-benchmark: forward+backward (forward for inference cases)
on the quick shapes, per provider.

    pytest benchmarks/test_benchmarks.py --benchmark-only

A provider that cannot run, or fails, is skipped with the reason run.py would print as n/a.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # harness and cases; the checkout's fastgan

import pytest  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from cases import CASES  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MODE = "forward+backward"
PARAMS = [pytest.param(case, shape, provider, id=f"{case.name}-{harness.shape_label(shape)}-{provider}")
          for case in CASES for shape in case.quick_shapes for provider in harness.PROVIDERS]


@pytest.mark.parametrize("case,shape,provider", PARAMS)
def test_forward_backward(benchmark, case, shape, provider):
    why = harness.unavailable(DEVICE, [provider]).get(provider)
    if why:
        pytest.skip(f"n/a ({why})")
    torch.manual_seed(0)
    torch._dynamo.reset()  # each compile test compiles from scratch
    inputs = case.make_inputs(shape, torch.float32, DEVICE)
    fn = harness.provider_fn(case, provider)
    mode = "forward" if case.inference else MODE
    try:
        with torch.no_grad():
            grad_out = torch.randn_like(fn(*inputs))
    except Exception as e:
        pytest.skip(f"n/a ({harness.reason(e)})")
    _, run = harness.mode_fns(fn, inputs, grad_out, mode, case.inference)

    def step():
        run(None)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()  # pytest-benchmark reads the wall clock

    try:
        step()  # compiles, for "compile"; then one more warm-up run
        step()
    except Exception as e:
        pytest.skip(f"n/a ({harness.reason(e)})")
    benchmark.extra_info.update(device=str(DEVICE), mode=mode)
    if case.min_bytes and not case.inference:
        nbytes = case.min_bytes(shape, inputs[0].element_size())
        benchmark.extra_info["min_bytes"] = nbytes["forward"] + nbytes["backward"]
    benchmark(step)
