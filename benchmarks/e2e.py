"""Whole training steps: fastgan vs eager PyTorch vs torch.compile, time per step and peak memory.

Every provider builds the same model from the same seed and takes the same real batches:
- "eager": the plain PyTorch model (nn.Sequential of ConvTranspose2d, BatchNorm2d, ReLU...; the
  reference implementations of fastgan's modules where the model uses them);
- "compile": that eager model with its networks wrapped in torch.compile (the optimizer step
  stays eager);
- the fastgan backends ("cpu", "cuda", "triton"): the fused model on that backend.
A step is what a training loop does per batch: forward and backward of D and G and both Adam
steps (plus the gradient penalty for ProGAN). Steps are timed interleaved, as the op cases are.
DCGAN: 64x64, full width (ngf = ndf = 64), batch 64 and 128, and batch 128 with minibatch
discrimination (B = 100, C = 5) in D. ProGAN: 64x64 with feature maps capped at 128 (512 in the
paper: a step would take ~10 s on two CPU cores), batch 32, the 64x64 level fading in.

    python benchmarks/run.py --e2e [--quick] [--backends eager,compile,cpu] [--cuda-graphs] [--amp bf16]

--cuda-graphs (GPU): every provider's whole step captured once and replayed as one CUDA graph
(models.graphed; eager and fastgan alike), torch.compile in its reduce-overhead mode.
--amp bf16|fp16: every provider's forward passes under torch.autocast (fp16 with a GradScaler).
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch

import fastgan
from fastgan.models import (DCGANDiscriminator, DCGANGenerator, ProGANDiscriminator, ProGANGenerator,
                            dcgan_optimizers, dcgan_step, graphed, progan_optimizers, progan_step)


@dataclass(frozen=True)
class Step:
    name: str
    batch: int
    make: Callable  # (impl or None for eager, device, compile_, Mode) -> a zero-argument function running one step


@dataclass(frozen=True)
class Mode:
    """How every provider runs its steps: as CUDA graphs (--cuda-graphs) and under autocast to `amp`
    (--amp; float16 with a GradScaler, which syncs with the host and so cannot be captured)."""
    graphs: bool = False
    amp: Optional[torch.dtype] = None

    def scaler(self, device):
        return torch.amp.GradScaler(torch.device(device).type) if self.amp == torch.float16 else None


def _compiled(module, graphs=False):
    """The module's forward wrapped in torch.compile, parameters shared; with CUDA graphs its
    reduce-overhead mode (each network's graphs; the optimizer steps stay eager)."""
    module.forward = torch.compile(module.forward, mode="reduce-overhead" if graphs else None)
    return module


def _placed(module, device, fastgan_model):
    """The module on `device`; a fastgan model on a GPU also with channels-last weights: its activations
    are channels-last, which cuDNN runs with channels-last weights (others it converts at every call,
    forward and backward). The eager model stays as PyTorch builds it."""
    module = module.to(device)
    if fastgan_model and torch.device(device).type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return module


def _runner(step, mode, compile_, device):
    """The zero-argument step (`step(item, amp, scaler)`): replayed from one CUDA graph of the whole
    step (mode.graphs, eager code: models.graphed), else run as is; under mode.amp."""
    if mode.graphs and not compile_:
        return graphed(lambda: step(False, mode.amp, None))
    scaler = mode.scaler(device)
    return lambda: step(True, mode.amp, scaler)


def _dcgan(batch, minibatch_features=0, width=64, nz=100, kernel_dim=5):
    """DCGAN at 64x64 (the architecture fixes it), ngf = ndf = `width`."""
    def make(impl, device, compile_=False, mode=Mode()):
        torch.manual_seed(0)
        fused = impl not in (None, "reference")
        gen = _placed(DCGANGenerator(nz=nz, ngf=width, fused=fused, impl=impl), device, fused)
        disc = _placed(DCGANDiscriminator(ndf=width, minibatch_features=minibatch_features, kernel_dim=kernel_dim,
                                          fused=fused, impl=impl or "reference"), device, fused)
        if compile_:
            _compiled(gen, mode.graphs)
            _compiled(disc, mode.graphs)
        opt_g, opt_d = dcgan_optimizers(gen, disc, capturable=mode.graphs and not compile_)
        real = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
        z = torch.randn(batch, nz, 1, 1, device=device)
        return _runner(lambda *opts: dcgan_step(gen, disc, opt_g, opt_d, real, z, *opts), mode, compile_, device)
    return make


def _progan(batch, resolution=64, fmap_max=128, alpha=0.5):
    """The last level fading in (alpha 0.5), so every fade-in path runs, with the gradient penalty."""
    def make(impl, device, compile_=False, mode=Mode()):
        torch.manual_seed(0)
        impl = impl or "reference"
        kw = dict(fmap_base=fmap_max * 16, fmap_max=fmap_max, impl=impl)
        gen = _placed(ProGANGenerator(resolution, 128, 3, **kw), device, impl != "reference")
        disc = _placed(ProGANDiscriminator(resolution, 3, **kw), device, impl != "reference")
        if compile_:
            _compiled(gen, mode.graphs)
            _compiled(disc, mode.graphs)
        opt_g, opt_d = progan_optimizers(gen, disc, capturable=mode.graphs and not compile_)
        level = gen.levels - 1
        real = fastgan.ops.blend_reals(torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1,
                                       alpha, impl=impl)
        z = torch.randn(batch, 128, device=device)
        mix = torch.rand(batch, 1, 1, 1, device=device)
        return _runner(lambda item, amp, scaler: progan_step(gen, disc, opt_g, opt_d, real, level, alpha, z, mix,
                                                             item=item, amp=amp, scaler=scaler), mode, compile_, device)
    return make


STEPS = [
    Step("dcgan", 64, _dcgan(64)),
    Step("dcgan", 128, _dcgan(128)),
    Step("dcgan+minibatch", 128, _dcgan(128, minibatch_features=100)),
    Step("progan+gp 64x64", 32, _progan(32)),
]
QUICK_STEPS = STEPS  # --quick: every step, fewer repeats


def step_fn(step, provider, device, mode=Mode()):
    if provider == "eager":
        return step.make(None, device, mode=mode)
    if provider == "compile":
        return step.make(None, device, compile_=True, mode=mode)
    return step.make(provider, device, mode=mode)


def bench_step(step, device, providers, settings, timer, status=lambda s: None, mode=Mode()):
    """Rows (the harness's) of one training step for every provider, timed interleaved."""
    import harness

    case = type("StepCase", (), {"name": f"{step.name} step"})
    shape = (step.batch,)
    fns, rows = {}, []
    for p in providers:
        status(f"{p} build")
        try:
            fns[p] = step_fn(step, p, device, mode)
        except Exception as e:  # noqa: BLE001 - a row says why
            rows.append(harness._row(case, shape, "train step", p, error=harness.reason(e)))
    jobs = {p: (None, lambda _, fn=fn: fn()) for p, fn in fns.items()}
    times = timer.interleaved(jobs, settings, status=status)
    for p, t in times.items():
        if isinstance(t, Exception):
            rows.append(harness._row(case, shape, "train step", p, error=harness.reason(t)))
            continue
        row = harness._row(case, shape, "train step", p, **harness._timing(t))
        status(f"{p} memory")
        row["peak_mb"] = harness.peak_extra_bytes(device, *jobs[p]) / harness.MB
        rows.append(row)
    by = {r["provider"]: r for r in rows if not r["error"]}
    for r in rows:
        for base, key in (("eager", "x_eager"), ("compile", "x_compile")):
            if not r["error"] and base in by:
                r[key] = by[base]["median_ms"] / r["median_ms"]
    return rows
