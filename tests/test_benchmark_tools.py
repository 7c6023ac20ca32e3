"""The benchmark tools run: the GPU traffic model on every case, and a whole-step benchmark."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import e2e  # noqa: E402
import harness  # noqa: E402
import traffic  # noqa: E402
from cases import CASES  # noqa: E402


def test_traffic_model_covers_every_case():
    rows = traffic.model_rows(CASES, quick=True, dtype=torch.float32)
    assert {r["op"] for r in rows} == {c.name for c in CASES}
    for r in rows:
        assert "eager_error" not in r and "fastgan_error" not in r, r
        assert r["eager_bytes"] > 0 and r["fastgan_bytes"] > 0 and r["fastgan_launches"] >= 1
    table = traffic.format_model(rows)
    assert table.count("\n") == len(rows) + 1


def test_traffic_model_counts_a_known_op():
    """fade_in forward on fake [2, 3, 8, 8]: eager reads and writes more than the fused kernel,
    which reads rgb_low and rgb_high once and writes out once."""
    case = next(c for c in CASES if c.name == "fade_in")
    kernels = traffic.record(lambda *a: case.op(*a, impl="cpu"), case.make_inputs, (2, 3, 8, 8),
                             torch.float32, "forward")
    assert [k.name for k in kernels] == ["fade_in"]
    assert kernels[0].bytes == 4 * (2 * 3 * 4 * 4 + 2 * 2 * 3 * 8 * 8)
    eager = traffic.summarize(traffic.record(case.reference, case.make_inputs, (2, 3, 8, 8),
                                             torch.float32, "forward"))
    assert eager["bytes"] > kernels[0].bytes and eager["launches"] > 1


def test_e2e_step_rows():
    step = e2e.Step("dcgan", 2, e2e._dcgan(2))
    settings = harness.Settings(warmup=1, min_reps=2, max_reps=2, budget_s=0.0)
    rows = e2e.bench_step(step, torch.device("cpu"), ["eager", "cpu"], settings, harness.Timer(torch.device("cpu")))
    by = {r["provider"]: r for r in rows}
    assert set(by) == {"eager", "cpu"} and not any(r["error"] for r in rows)
    assert by["cpu"]["x_eager"] > 0 and by["eager"]["peak_mb"] > 0
