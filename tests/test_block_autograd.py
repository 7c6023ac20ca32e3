"""The fused blocks' training op with its C++ autograd (csrc/block_autograd.h): plain calls on the
compiled backends take it; traced code and triton take the Python custom ops over the same kernels.
Both must give the same bits: outputs, running statistics and gradients."""

import sys

import pytest
import torch

import fastgan.ops
from helpers import randn

F64 = torch.float64
IMPLS = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
MODULES = {name: sys.modules[f"fastgan.ops.{name}"] for name in ("conv2d_bn_leaky_relu", "conv_transpose_bn_relu")}


def _inputs(block, layout, affine, bias, device):
    """Fresh float64 leaves (x, weight, bias, gamma, beta) and the block's other arguments."""
    if block == "conv2d_bn_leaky_relu":
        x, w, c, args = randn((3, 4, 7, 6), layout, F64, device), randn((5, 4, 3, 3), dtype=F64, device=device), 5, \
            dict(stride=2, padding=1, negative_slope=0.2)
    else:
        x, w, c, args = randn((3, 4, 3, 5), layout, F64, device), randn((4, 5, 4, 4), dtype=F64, device=device), 5, \
            dict(stride=2, padding=1, output_padding=1)
    vectors = [randn((c,), dtype=F64, device=device) if bias else None,
               (torch.rand(c, dtype=F64, device=device) + 0.5) if affine else None,
               randn((c,), dtype=F64, device=device) if affine else None]
    return [x, w, *vectors], args


def _call(block, leaves, args, stats, momentum, impl):
    x, w, b, gamma, beta = leaves
    rm, rv, nbt = stats
    return getattr(fastgan.ops, block)(x, w, b, gamma, beta, rm, rv, True, momentum, 1e-5,
                                       num_batches_tracked=nbt, impl=impl, **args)


def _stats(c, device):
    return [torch.randn(c, dtype=F64, device=device) * 0.1, torch.rand(c, dtype=F64, device=device) + 0.5,
            torch.tensor(3, device=device)]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine,bias", [(True, True), (False, False)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("block", MODULES)
@pytest.mark.parametrize("impl", IMPLS)
def test_cpp_and_python_paths_agree(impl, block, layout, affine, bias, momentum, monkeypatch):
    device = "cuda" if impl == "cuda" else "cpu"
    leaves, args = _inputs(block, layout, affine, bias, device)
    leaves = [None if t is None else t.requires_grad_() for t in leaves]
    stats = [_stats(5, device) for _ in range(2)]
    stats[1] = [t.clone() for t in stats[0]]
    cpp = _call(block, leaves, args, stats[0], momentum, impl)
    assert type(cpp.grad_fn).__name__ == "CppFunction"
    monkeypatch.setattr(MODULES[block], "cpp_block", lambda impl: False)
    python = _call(block, leaves, args, stats[1], momentum, impl)
    assert type(python.grad_fn).__name__ != "CppFunction"
    assert cpp.stride() == python.stride()
    torch.testing.assert_close(cpp, python, rtol=0, atol=0)
    for a, b in zip(*stats):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    wanted = [t for t in leaves if t is not None]
    g = torch.randn_like(cpp)
    for a, b in zip(torch.autograd.grad(cpp, wanted, g), torch.autograd.grad(python, wanted, g)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("block", MODULES)
@pytest.mark.parametrize("impl", IMPLS)
def test_without_grad(impl, block):
    """No gradient recorded (no_grad; inference mode, which skips the Autograd key): the forward alone,
    normalizing in place, with the same bits and running statistics as a recorded call."""
    device = "cuda" if impl == "cuda" else "cpu"
    leaves, args = _inputs(block, "contiguous", True, True, device)
    stats = [_stats(5, device) for _ in range(3)]
    stats[1], stats[2] = [t.clone() for t in stats[0]], [t.clone() for t in stats[0]]
    want = _call(block, [leaves[0].requires_grad_(), *leaves[1:]], args, stats[0], None, impl)
    with torch.no_grad():
        no_grad = _call(block, leaves, args, stats[1], None, impl)
    with torch.inference_mode():
        inference = _call(block, leaves, args, stats[2], None, impl)
    for got, got_stats in ((no_grad, stats[1]), (inference, stats[2])):
        assert got.grad_fn is None
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=0)
        for a, b in zip(got_stats, stats[0]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert stats[0][2].item() == 4


@pytest.mark.parametrize("block", MODULES)
def test_running_statistics_versions(block):
    """The in-place update is visible to autograd's version counters, as eager BatchNorm2d's is."""
    leaves, args = _inputs(block, "contiguous", True, True, "cpu")
    stats = _stats(5, "cpu")
    before = [t._version for t in stats]
    _call(block, [leaves[0].requires_grad_(), *leaves[1:]], args, stats, 0.1, "cpu")
    assert all(t._version > v for t, v in zip(stats, before))
