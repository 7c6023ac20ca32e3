"""Test configuration.

Without a GPU the Triton kernels run on CPU tensors through the Triton
interpreter, which must be switched on before any kernel is defined: before
fastgan is imported.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    from fastgan._backend import availability

    why = availability("triton", "cpu")  # e.g. an interpreter too old for this numpy (README, Supported versions)
    skip_interpreted = pytest.mark.skip(reason=f"Triton interpreter: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
        elif why and any(isinstance(v, str) and v == "triton"
                         for v in getattr(getattr(item, "callspec", None), "params", {}).values()):
            item.add_marker(skip_interpreted)


@pytest.fixture(autouse=True)
def poison_uninitialized_outputs():
    """torch.empty / at::empty fill floats with NaN, so an element a kernel forgets to write fails."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
