"""The benchmark cases through pytest-benchmark: forward+backward (forward for inference cases)
on the device's quick shapes (GPU-sized on CUDA), per provider.

    pytest benchmarks/test_benchmarks.py --benchmark-only

Only what cannot run here is skipped, with the reason run.py prints as n/a: a fastgan backend
unavailable on the device (no GPU, extension not built), torch.compile unsupported on this
platform, eager too big for the free memory. Anything that raises after that, a kernel failure
above all, fails the test.
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
          for case in CASES for shape in case.shapes_for(DEVICE, quick=True) for provider in harness.PROVIDERS]


def _why_not_here(case, shape, provider, inputs):
    """Why `provider` genuinely cannot run this case here, or None."""
    why = harness.unavailable(DEVICE, [provider]).get(provider)
    if why is None and provider in harness.BACKENDS and provider not in case.backends:
        why = f"{case.name} has no {provider} backend"
    if why is None and provider == "compile" and not (torch._dynamo.is_dynamo_supported()
                                                      and torch._dynamo.eval_frame.is_inductor_supported()):
        why = "torch.compile (dynamo + inductor) is not supported on this platform"
    if why is None and provider in ("eager", "compile"):
        why = harness._out_of_memory(case, shape, inputs[0].element_size(), DEVICE)
    return why


@pytest.mark.parametrize("case,shape,provider", PARAMS)
def test_forward_backward(benchmark, case, shape, provider):
    torch.manual_seed(0)
    torch._dynamo.reset()  # each compile test compiles from scratch
    inputs = case.make_inputs(shape, torch.float32, DEVICE)
    why = _why_not_here(case, shape, provider, inputs)
    if why:
        pytest.skip(f"n/a ({why})")
    fn = harness.provider_fn(case, provider)
    mode = "forward" if case.inference else MODE
    with torch.no_grad():
        grad_out = torch.randn_like(fn(*inputs))
    _, run = harness.mode_fns(fn, inputs, grad_out, mode, case.inference)

    def step():
        run(None)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()  # pytest-benchmark reads the wall clock

    step()  # compiles, for "compile"; then one more warm-up run
    step()
    benchmark.extra_info.update(device=str(DEVICE), mode=mode)
    if case.min_bytes and not case.inference:
        nbytes = case.min_bytes(shape, inputs[0].element_size())
        benchmark.extra_info["min_bytes"] = nbytes["forward"] + nbytes["backward"]
    benchmark(step)
