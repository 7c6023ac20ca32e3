"""The benchmark cases through pytest-benchmark: forward+backward on the quick shapes, per provider.

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
    inputs = [t.requires_grad_() for t in case.make_inputs(shape, torch.float32, DEVICE)]
    grad_out = torch.randn_like(case.reference(*inputs))
    _, run = harness.mode_fns(harness.provider_fn(case, provider), inputs, grad_out, MODE)

    def step():
        run(None)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()  # pytest-benchmark reads the wall clock

    try:
        step()  # compiles, for "compile"; then one more warm-up run
        step()
    except Exception as e:
        pytest.skip(f"n/a ({harness.reason(e)})")
    nbytes = case.min_bytes(shape, inputs[0].element_size())
    benchmark.extra_info.update(device=str(DEVICE), mode=MODE,
                                min_bytes=nbytes["forward"] + nbytes["backward"])
    benchmark(step)
