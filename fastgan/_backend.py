"""Backend selection: which implementation of an op runs for a given call.

Precedence, highest first: the ``impl=`` argument of a call, the innermost
``fastgan.backend(...)`` context, the ``FASTGAN_BACKEND`` environment variable,
then the default for the tensor's device (``cpu`` for CPU tensors, ``cuda`` for
CUDA tensors). A backend that cannot run raises ``BackendUnavailableError``
saying why and how to fix it; nothing ever falls back silently.
"""

import contextlib
import os
import threading

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
DEFAULT_BACKEND = {"cpu": "cpu", "cuda": "cuda"}
ENV_VAR = "FASTGAN_BACKEND"

BUILD_HINT = (
    "Build the extensions from the repository root with "
    "`pip install --no-build-isolation -e .` (see README)."
)


class BackendUnavailableError(RuntimeError):
    """The requested backend is not built or cannot run on these tensors."""


_state = threading.local()


@contextlib.contextmanager
def backend(name):
    """Run the fastgan ops inside the block with backend ``name``."""
    _check_name(name, "backend")
    stack = _stack()
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _stack():
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def _check_name(name, what):
    if name not in BACKENDS:
        raise ValueError(f"fastgan: unknown {what} {name!r}; expected one of {BACKENDS}")


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _extension_error(module, name):
    from . import _extensions

    err = _extensions.load_error(module)
    return f"the {name} extension `fastgan.{module}` is not built ({err}). {BUILD_HINT}"


def availability(name, device_type):
    """None if backend ``name`` can run on ``device_type`` tensors, else the reason."""
    from . import _extensions

    if name == "reference":
        return None
    if name == "cpu":
        if device_type != "cpu":
            return f"the cpu backend runs on CPU tensors only, got {device_type} tensors"
        if _extensions.load("_C") is None:
            return _extension_error("_C", "CPU")
        return None
    if name == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs on CUDA tensors only, got {device_type} tensors"
        if _extensions.load("_C_cuda") is None:
            return _extension_error("_C_cuda", "CUDA") + " It needs nvcc and a CUDA build of torch."
        return None
    if name == "triton":
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"triton is not installed ({e}); `pip install triton`"
        if device_type == "cpu" and not triton_interpreted():
            return ("the triton backend runs on CPU tensors only under the Triton interpreter: "
                    "set TRITON_INTERPRET=1 before importing fastgan")
        if device_type not in ("cpu", "cuda"):
            return f"the triton backend does not support {device_type} tensors"
        return None
    raise AssertionError(name)


def resolve(impl, device):
    """The backend name to use for a call on tensors of ``device``."""
    device_type = torch.device(device).type
    if impl is None:
        stack = _stack()
        if stack:
            impl = stack[-1]
        elif os.environ.get(ENV_VAR):
            impl = os.environ[ENV_VAR]
            _check_name(impl, f"{ENV_VAR} value")
        else:
            impl = DEFAULT_BACKEND.get(device_type, "reference")
    else:
        _check_name(impl, "impl")
    why = availability(impl, device_type)
    if why is not None:
        raise BackendUnavailableError(f"fastgan: backend {impl!r} is unavailable: {why}")
    return impl
