"""The benchmark tools run: the cases' GPU shapes, the GPU traffic model on every case, and a
whole-step benchmark."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import e2e  # noqa: E402
import harness  # noqa: E402
import run  # noqa: E402
import traffic  # noqa: E402
from cases import CASES  # noqa: E402


# The issue's H200 table: one shape per op in its case's convention, which --device cuda --quick must time
# so that the figures compare (equalized_conv is not in it).
ISSUE_SHAPES = {
    "conv_transpose_bn_relu": (256, 128, 16, 64), "conv_transpose_bn_relu_eval": (256, 128, 16, 64),
    "conv2d_bn_leaky_relu": (256, 64, 32, 128),
    "minibatch_discrimination": (1024, 512, 4, 4, 100, 5),  # A = 512 * 4 * 4 = 8192
    "pixel_norm": (64, 512, 32, 32), "bias_act_pixel_norm": (64, 512, 32, 32), "bias_act": (64, 512, 32, 32),
    "fade_in": (32, 3, 512, 512),                 # rgb_high; rgb_low is 256x256
    "minibatch_stddev": (64, 512, 16, 16),
    "fade_in_from_rgb": (64, 3, 256, 64, 64),     # images 128x128, 256 channels
    "blend_reals": (32, 3, 512, 512),
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gpu_shapes_build_inputs(case):
    """Every GPU shape makes inputs the reference accepts, on the meta device (no memory)."""
    meta = torch.device("meta")
    for shape in case.gpu_shapes:
        inputs = case.make_inputs(shape, torch.float32, meta)
        assert all(t.device == meta for t in inputs)
        assert case.reference(*inputs).shape[0] == shape[0]


def test_gpu_quick_shapes_hold_the_issue_shapes():
    assert set(ISSUE_SHAPES) <= {c.name for c in CASES}
    for case in CASES:
        assert case.gpu_shapes != case.shapes, case.name  # every case has GPU sizes of its own
        assert 1 <= len(case.gpu_quick_shapes) <= 2 and set(case.gpu_quick_shapes) <= set(case.gpu_shapes)
        if case.name in ISSUE_SHAPES:
            assert ISSUE_SHAPES[case.name] in case.gpu_quick_shapes, case.name


def test_shapes_follow_the_device():
    """run.py times a case at shapes_for(device, quick): the GPU lists on CUDA, the CPU lists on CPU."""
    for case in CASES:
        assert case.shapes_for(torch.device("cuda"), quick=True) == case.gpu_quick_shapes
        assert case.shapes_for("cuda:0", quick=False) == case.gpu_shapes
        assert case.shapes_for(torch.device("cpu"), quick=True) == case.quick_shapes
        assert case.shapes_for("cpu", quick=False) == case.shapes
    plain = dataclasses.replace(CASES[0], gpu_shapes=None, gpu_quick_shapes=None)  # a case without GPU sizes
    assert plain.shapes_for("cuda", quick=False) == plain.shapes
    assert plain.shapes_for("cuda", quick=True) == plain.quick_shapes


def test_traffic_model_covers_every_case():
    rows = traffic.model_rows(CASES, quick=True, dtype=torch.float32)
    assert {r["op"] for r in rows} == {c.name for c in CASES}
    # A GPU model: the GPU-sized quick shapes.
    assert {(r["op"], r["shape"]) for r in rows} == {(c.name, harness.shape_label(s))
                                                    for c in CASES for s in c.gpu_quick_shapes}
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


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_e2e_steps_under_amp(amp):
    """--amp: every provider's steps run under autocast (fp16 with a GradScaler), DCGAN and ProGAN."""
    settings = harness.Settings(warmup=1, min_reps=2, max_reps=2, budget_s=0.0)
    for step in (e2e.Step("dcgan", 2, e2e._dcgan(2, width=4, nz=8)),
                 e2e.Step("progan", 2, e2e._progan(2, resolution=8, fmap_max=8))):
        rows = e2e.bench_step(step, torch.device("cpu"), ["eager", "cpu"], settings, harness.Timer(torch.device("cpu")),
                              mode=e2e.Mode(amp=amp))
        assert {r["provider"] for r in rows} == {"eager", "cpu"} and not any(r["error"] for r in rows), rows


def test_run_rejects_graphs_misuse(capsys):
    for argv, words in ((["--e2e", "--cuda-graphs", "--device", "cpu"], "--device cuda"),
                        (["--cuda-graphs", "--device", "cpu"], "needs --e2e")):
        with pytest.raises(SystemExit):
            run.parse_args(argv)
        assert words in capsys.readouterr().err


@pytest.mark.parametrize("name", ["conv2d_bn_leaky_relu", "minibatch_discrimination", "pixel_norm"])
def test_ops_under_amp(name):
    """--amp for the ops: each provider's forward under autocast, timed without errors."""
    case = next(c for c in CASES if c.name == name)
    settings = harness.Settings(warmup=1, min_reps=2, max_reps=2, budget_s=0.0)
    rows = harness.bench_case(case, case.quick_shapes[0], torch.device("cpu"), torch.float32, ["eager", "cpu"],
                              settings, harness.Timer(torch.device("cpu")), amp=torch.bfloat16)
    assert rows and not any(r["error"] for r in rows if r["provider"] in ("eager", "cpu")), rows


def _plot_rows():
    """Rows as the harness and e2e.py make them: two ops (one with a yardstick row, one where compile
    fails in double backward and eager is out of memory on one shape) and two training steps."""
    gen = torch.Generator().manual_seed(0)
    rows = []

    def add(op, shape, mode, provider, ms=None, error=None):
        rows.append(harness._row(type("C", (), {"name": op}), shape, mode, provider, median_ms=ms, error=error))

    def ms():
        return float(torch.empty(()).uniform_(0.1, 20.0, generator=gen))

    for op, modes in (("fade_in", ("forward", "backward")), ("bias_act", ("forward", "double backward"))):
        for shape in ((2, 3, 8, 8), (4, 3, 16, 16)):
            for mode in modes:
                oom = op == "bias_act" and shape[0] == 4
                add(op, shape, mode, "eager", None if oom else ms(), "out of memory: eager needs 9 GB" if oom else None)
                no_compile = oom or mode == "double backward"
                add(op, shape, mode, "compile", None if no_compile else ms(),
                    "RuntimeError: no double backward" if no_compile else None)
                add(op, shape, mode, "cpu", ms())
                add(op, shape, mode, harness.COPY, ms())
                if op == "fade_in" and mode == "forward":
                    add(op, shape, mode, "matmul 2x3x4", ms())
    for step, batch in (("dcgan step", (64,)), ("progan+gp 64x64 step", (32,))):
        for provider in ("eager", "compile", "cpu"):
            add(step, batch, "train step", provider, ms())
    return rows


def test_speedup_chart():
    """The chart: a headline panel of training steps, a panel per op, one legend for the figure with one
    color per provider, bars from 1.0 to eager time / provider time, the yardstick as a line, and no bar
    or label for a provider without a time."""
    from matplotlib.patches import Rectangle

    rows = _plot_rows()
    fig = harness.speedup_figure(rows)
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == [
        "Whole training steps: G and D forward, backward and Adam steps", "fade_in", "bias_act"]
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in axes)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["compile", "cpu"] and len(legend) == 3 and legend[2].startswith("yardstick")

    ms = {(r["op"], r["shape"], r["mode"], r["provider"]): r["median_ms"] for r in rows}
    timed = {k for k, v in ms.items() if v and k[3] not in ("eager", harness.COPY, "matmul 2x3x4")
             and ms[k[:3] + ("eager",)]}
    want = {k: ms[k[:3] + ("eager",)] / ms[k] for k in timed}
    colors = {}
    for ax in axes:
        bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        values = {t.get_position(): t.get_text().strip() for t in ax.texts}
        assert len(values) == len(bars)  # a value label per bar, none where there is no bar
        for bar in bars:
            assert bar.get_x() == 1.0  # bars start at the 1.0 line
            end, mid = bar.get_x() + bar.get_width(), bar.get_y() + bar.get_height() / 2
            (label,) = [v for (x, y), v in values.items() if abs(x - end) < 1e-12 * end and abs(y - mid) < 1e-9]
            assert label == (f"{end:.2f}x" if end < 10 else f"{end:.0f}x")
        assert not any("n/a" in t.get_text() for t in ax.texts)
        for bars in ax.containers:  # a provider's bars in this panel
            colors.setdefault(bars.get_label(), set()).update(tuple(b.get_facecolor()) for b in bars)
    key = {h.get_label(): {tuple(h.get_facecolor())} for h in fig.legends[0].legend_handles[:2]}
    assert colors == key  # one color per provider, the legend's, in every panel
    assert len({c for cs in colors.values() for c in cs}) == len(colors)  # and no two alike
    ends = sorted(b.get_x() + b.get_width() for ax in axes for b in ax.patches)
    assert ends == pytest.approx(sorted(want.values()), rel=1e-12)  # exactly one bar per timed provider

    # The yardstick: a vertical line at eager time / its time, in fade_in's forward groups only.
    yard = sorted(line.get_xdata()[0] for line in axes[1].lines if line.get_linewidth() > 2)
    assert yard == pytest.approx(sorted(ms[k[:3] + ("eager",)] / v for k, v in ms.items() if k[3] == "matmul 2x3x4"))
    notes = axes[2].get_xlabel()
    assert "no eager time, so no bars, for 4x3x16x16: out of memory" in notes
    assert "no compile bar for double backward: no double backward" in notes
    fig.clf()


def test_plot_speedup_writes_png(tmp_path):
    harness.plot_speedup(_plot_rows(), tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
