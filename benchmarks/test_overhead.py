"""The --overhead mode (overhead.py): its op counter counts real ops, by the right path, and the mode
reports and fails as documented.

    pytest benchmarks/test_overhead.py -q
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # harness and cases; the checkout's fastgan

import pytest  # noqa: E402
import torch  # noqa: E402

import overhead  # noqa: E402
import run  # noqa: E402
from cases import pixel_norm  # noqa: E402
from fastgan._backend import availability  # noqa: E402
from fastgan.ops import _dispatch  # noqa: E402

needs_cpu = pytest.mark.skipif(availability("cpu", "cpu") is not None,
                               reason=f"cpu backend: {availability('cpu', 'cpu')}")


def test_every_case_has_a_tiny_shape():
    """--overhead runs every case of run.py at its TINY shape: a case without one would crash the mode."""
    from cases import CASES

    assert {c.name for c in CASES} <= set(overhead.TINY)


def _pixel_norm_jobs(provider):
    return overhead._op_jobs(pixel_norm.CASE, provider, torch.device("cpu"), torch.float32)


def test_eager_pixel_norm_dispatches_aten_ops():
    counts, raw = overhead.count_ops(_pixel_norm_jobs("eager")["forward"])
    # x * rsqrt(mean(x^2) + eps): pow, mean, add, rsqrt, mul at least
    assert counts["aten"] >= 3 and counts["fastgan"] == 0, raw
    assert raw["aten::rsqrt"] == 1 and raw["aten::mean.dim"] == 1, raw
    backward, _ = overhead.count_ops(_pixel_norm_jobs("eager")["forward+backward"])
    assert backward["aten"] > counts["aten"]


@needs_cpu
def test_cpu_pixel_norm_dispatches_its_kernel_op():
    jobs = _pixel_norm_jobs("cpu")
    counts, raw = overhead.count_ops(jobs["forward+backward"])
    assert raw["fastgan_cpu::pixel_norm"] == 1 and raw["fastgan_cpu::pixel_norm_backward"] == 1, raw
    assert counts["fastgan"] == 2 and counts["ops"] == counts["aten"] + 2
    assert not any(name.startswith("fastgan::") for name in raw), "the plain path has no custom op"
    assert _dispatch._traced.__name__ == "_traced", "untraced() restores _traced"


@needs_cpu
def test_custom_op_path_counts_the_body_of_the_custom_op():
    counts, raw = overhead.count_ops(_pixel_norm_jobs("cpu")["forward"], custom_op_path=True)
    assert raw["fastgan::pixel_norm"] == 1 and raw["fastgan_cpu::pixel_norm"] == 1, raw
    assert counts["fastgan"] == 1  # the custom op itself is not a kernel op


def test_summarize_categories():
    counts = overhead.summarize({"aten::view": 2, "aten::_to_copy": 1, "aten::empty_strided": 1, "aten::mul.Tensor": 3,
                                 "fastgan_cuda::bias_act": 1, "fastgan::bias_act": 1})
    assert counts == dict(ops=8, aten=7, views=2, copies=1, allocs=1, fastgan=1)


@needs_cpu
def test_mode_reports_pixel_norm(tmp_path, capsys):
    rc = run.main(["--overhead", "--quick", "--ops", "pixel_norm", "--backends", "eager,cpu", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "overhead.json").read_text())["rows"]
    assert [r["provider"] for r in rows] == ["eager", "cpu"]
    for r in rows:
        assert r["error"] is None
        assert set(r["us"]) == {"forward", "forward+backward"} and all(us > 0 for us in r["us"].values())
        assert r["counts"]["forward+backward"]["ops"] >= r["counts"]["forward"]["ops"] >= 1
    assert rows[1]["custom_op_path"] == "same"
    assert "pixel_norm cpu: forward: host" in capsys.readouterr().out
    assert "pixel_norm" in (tmp_path / "overhead.md").read_text()


def test_mode_fails_when_a_fastgan_provider_raises(tmp_path, monkeypatch):
    real = overhead._op_jobs

    def jobs(case, provider, device, dtype):
        if provider == "cpu":
            raise RuntimeError("kernel exploded")
        return real(case, provider, device, dtype)

    monkeypatch.setattr(overhead, "_op_jobs", jobs)
    rc = overhead.run([pixel_norm.CASE], ["eager", "cpu"], {}, torch.device("cpu"), torch.float32, True, tmp_path,
                      steps=False)
    assert rc == 1
    rows = json.loads((tmp_path / "overhead.json").read_text())["rows"]
    assert rows[1]["error"] == "RuntimeError: kernel exploded" and rows[0]["error"] is None


def test_run_fails_without_the_devices_backend(tmp_path, monkeypatch):
    """Without --backends the device's own backend is required: a CPU run whose cpu extension is not built
    exits 1 (it would time no fastgan kernel), as does naming an unavailable backend."""
    monkeypatch.setattr(run.harness, "unavailable", lambda device, wanted, forced=(): {"cpu": "not built"})
    args = ["--overhead", "--quick", "--ops", "pixel_norm", "--out", str(tmp_path)]
    assert run.main(args) == 1
    assert run.main(args + ["--backends", "eager,cpu"]) == 1
    assert run.main(args + ["--backends", "eager"]) == 0
