"""Backend selection: per call, context manager, environment variable, device default, clear errors."""

import sys

import pytest
import torch

import fastgan
from fastgan import BackendUnavailableError
from fastgan._backend import resolve
from helpers import randn


def test_default_by_device(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    assert resolve(None, "cpu") == "cpu"


def test_precedence(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "reference")
    assert resolve(None, "cpu") == "reference"
    with fastgan.backend("triton"):
        assert resolve(None, "cpu") == "triton"
        with fastgan.backend("cpu"):
            assert resolve(None, "cpu") == "cpu"
        assert resolve("reference", "cpu") == "reference"  # the call wins over the context
    assert resolve(None, "cpu") == "reference"


def test_context_restores_after_error(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    with pytest.raises(RuntimeError):
        with fastgan.backend("reference"):
            raise RuntimeError
    assert resolve(None, "cpu") == "cpu"


def test_the_chosen_backend_really_runs(monkeypatch):
    module = sys.modules["fastgan.ops.pixel_norm"]  # the module, not the function of the same name
    calls, real = [], module.kernels
    monkeypatch.setattr(module, "kernels", lambda impl: calls.append(impl) or real(impl))
    x = randn((2, 3, 4, 4))
    fastgan.ops.pixel_norm(x, impl="triton")
    with fastgan.backend("cpu"):
        fastgan.ops.pixel_norm(x)
    assert calls == ["triton", "cpu"]


@pytest.mark.parametrize("impl, words", [
    ("nope", "unknown impl 'nope'"),
])
def test_unknown_backend(impl, words):
    with pytest.raises(ValueError, match=words):
        fastgan.ops.pixel_norm(randn((2, 3)), impl=impl)
    with pytest.raises(ValueError, match="unknown backend"):
        with fastgan.backend(impl):
            pass


def test_unknown_env_backend(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "fast")
    with pytest.raises(ValueError, match="FASTGAN_BACKEND"):
        fastgan.ops.pixel_norm(randn((2, 3)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA tensors")
def test_cuda_backend_on_cpu_tensors_is_an_error():
    with pytest.raises(BackendUnavailableError, match="cuda backend runs on CUDA tensors only"):
        fastgan.ops.pixel_norm(randn((2, 3)), impl="cuda")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        fastgan.ops.pixel_norm(randn((2, 3)), impl="triton")


def test_unbuilt_extension_says_how_to_build(monkeypatch):
    from fastgan import _extensions

    monkeypatch.setitem(_extensions._modules, "_C", None)
    monkeypatch.setitem(_extensions._errors, "_C", "No module named 'fastgan._C'")
    with pytest.raises(BackendUnavailableError, match=r"not built .*pip install --no-build-isolation -e \."):
        fastgan.ops.pixel_norm(randn((2, 3)), impl="cpu")
