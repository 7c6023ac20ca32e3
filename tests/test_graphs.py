"""Whole training steps captured in CUDA graphs (fastgan.models.graphed) and the pieces that allow it:
steps that return their losses without a host sync (item=False), capturable optimizers, and the
examples' --cuda-graphs switch. The captures themselves run in the gpu-marked tests.

A replayed capture runs the same kernels in the same order as the step it captured, so the graphed
models must follow the same models trained step by step; the tolerance only allows for atomics whose
order may differ between runs (cuDNN's weight gradients, eager's upsampling backward): rtol 1e-4,
atol 1e-5 after a few steps, as the models' own fused-against-eager tests.
"""

import pytest
import torch

from fastgan.models import (DCGANDiscriminator, DCGANGenerator, ProGANDiscriminator, ProGANGenerator,
                            dcgan_optimizers, dcgan_step, graphed, progan_optimizers, progan_step)
from helpers import GPU_BACKENDS
from test_examples import run_example

STEPS = 3  # replays after the capture's warm-up steps


def dcgan(impl, device, capturable=False):
    torch.manual_seed(0)
    fused = impl not in (None, "reference")
    gen = DCGANGenerator(nz=8, ngf=8, nc=3, fused=fused, impl=impl).to(device)
    disc = DCGANDiscriminator(ndf=8, nc=3, minibatch_features=6, fused=fused, impl=impl or "reference").to(device)
    return gen, disc, *dcgan_optimizers(gen, disc, capturable=capturable)


def progan(impl, device, capturable=False):
    torch.manual_seed(0)
    kw = dict(fmap_base=64, fmap_max=8, impl=impl or "reference")
    gen, disc = ProGANGenerator(16, 8, 3, **kw).to(device), ProGANDiscriminator(16, 3, **kw).to(device)
    return gen, disc, *progan_optimizers(gen, disc, capturable=capturable)


def dcgan_inputs(device):
    return torch.rand(6, 3, 64, 64, device=device) * 2 - 1, torch.randn(6, 8, 1, 1, device=device)


def progan_inputs(device):
    return (torch.rand(4, 3, 8, 8, device=device) * 2 - 1, torch.randn(4, 8, device=device),
            torch.rand(4, 1, 1, 1, device=device))


# ---------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("impl", ["cpu", None])
def test_steps_return_losses_without_sync(impl):
    """item=False: the same losses, as detached 0-d tensors on the models' device."""
    real, z = dcgan_inputs("cpu")
    floats = dcgan_step(*dcgan(impl, "cpu"), real, z)
    tensors = dcgan_step(*dcgan(impl, "cpu"), real, z, item=False)
    for f, t in zip(floats, tensors):
        assert isinstance(f, float) and t.dim() == 0 and not t.requires_grad
        assert t.item() == f
    real, z, mix = progan_inputs("cpu")
    floats = progan_step(*progan(impl or "reference", "cpu"), real, 1, 0.5, z, mix)
    tensors = progan_step(*progan(impl or "reference", "cpu"), real, 1, 0.5, z, mix, item=False)
    assert [t.item() for t in tensors] == list(floats)


def test_capturable_optimizers():
    for opt in (*dcgan("cpu", "cpu", capturable=True)[2:], *progan("cpu", "cpu", capturable=True)[2:]):
        assert all(group["capturable"] for group in opt.param_groups)
    assert not any(group["capturable"] for group in dcgan("cpu", "cpu")[2].param_groups)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a CUDA device")
def test_graphed_needs_cuda():
    with pytest.raises(RuntimeError, match="CUDA device"):
        graphed(lambda: None)


@pytest.mark.parametrize("example", ["train_dcgan.py", "train_progan.py"])
def test_examples_cuda_graphs_need_cuda_device(monkeypatch, capsys, example):
    with pytest.raises(SystemExit):
        run_example(monkeypatch, example, "--cuda-graphs")
    assert "--cuda-graphs needs --device cuda" in capsys.readouterr().err


# ---------------------------------------------------------------------------- GPU


def assert_same_state(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def check_graphed(make, step, inputs, impl):
    """`step` captured and replayed on one model, run plainly on a twin; both see the same inputs
    for warm-up + STEPS steps."""
    graph_model, plain_model = make(impl, "cuda", capturable=True), make(impl, "cuda", capturable=True)
    replay = graphed(lambda: step(graph_model, inputs, item=False), warmup=3)
    for _ in range(3):
        want = step(plain_model, inputs, item=False)
    for _ in range(STEPS):
        got = replay()
        want = step(plain_model, inputs, item=False)
        torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-4, atol=1e-5)
    for a, b in zip(graph_model[:2], plain_model[:2]):
        assert_same_state(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS + [None])
def test_graphed_dcgan_step(impl):
    check_graphed(dcgan, lambda m, i, item: dcgan_step(*m, *i, item=item), dcgan_inputs("cuda"), impl)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS + [None])
def test_graphed_progan_step_with_gradient_penalty(impl):
    def step(model, inputs, item):
        real, z, mix = inputs
        return progan_step(*model, real, 1, 0.5, z, mix, item=item)
    check_graphed(progan, step, progan_inputs("cuda"), impl)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_compile_reduce_overhead_dcgan(impl):
    """torch.compile's CUDA-graph mode over the fused networks: the same losses as the fused model run
    eagerly."""
    compiled, plain = dcgan(impl, "cuda"), dcgan(impl, "cuda")
    for net in compiled[:2]:
        net.forward = torch.compile(net.forward, mode="reduce-overhead")
    real, z = dcgan_inputs("cuda")
    for _ in range(4):
        got, want = dcgan_step(*compiled, real, z), dcgan_step(*plain, real, z)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_examples_with_cuda_graphs(monkeypatch, capsys, tmp_path):
    run_example(monkeypatch, "train_dcgan.py", "--steps", "5", "--batch", "4", "--width", "4", "--dataset-size",
                "16", "--device", "cuda", "--cuda-graphs", "--out", str(tmp_path / "dcgan"))
    run_example(monkeypatch, "train_progan.py", "--smoke", "--device", "cuda", "--cuda-graphs",
                "--out", str(tmp_path / "progan"))
    out = capsys.readouterr().out
    assert "trained to step 5" in out and "resolution 16" in out
