"""Backend selection: which implementation of an op runs for a given call.

Precedence, highest first: the ``impl=`` argument of a call, the innermost
``fastgan.backend(...)`` context, the ``FASTGAN_BACKEND`` environment variable,
then the default for the tensor's device (``cpu`` for CPU tensors, ``cuda`` for
CUDA tensors). A backend that cannot run raises ``BackendUnavailableError``
saying why and how to fix it; nothing ever falls back silently.
"""

import contextlib
import functools
import os
import re
import threading

import torch

from . import _extensions

BACKENDS = ("reference", "cpu", "triton", "cuda")
DEFAULT_BACKEND = {"cpu": "cpu", "cuda": "cuda"}
ENV_VAR = "FASTGAN_BACKEND"

BUILD_HINT = (
    "Build the extensions from the repository root with "
    "`pip install --no-build-isolation -e .` (see README)."
)


class BackendUnavailableError(RuntimeError):
    """The requested backend is not built or cannot run on these tensors."""


class _State(threading.local):
    """Per thread: the stack of backend(...) contexts, set from the start (every op reads it, and
    looking up a missing attribute raises and catches, slow)."""

    def __init__(self):
        self.stack = []


_state = _State()


@contextlib.contextmanager
def backend(name):
    """Run the fastgan ops inside the block with backend ``name``."""
    _check_name(name, "backend")
    stack = _state.stack
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _check_name(name, what):
    if name not in BACKENDS:
        raise ValueError(f"fastgan: unknown {what} {name!r}; expected one of {BACKENDS}")


def conv_tf32_allowed():
    """Whether PyTorch's own float32 convolutions may use TF32 (the triton convolutions follow it):
    cuDNN's convolution precision of the torch >= 2.9 API ("tf32" / "ieee"; "none" defers to cuDNN's,
    then the global one), else the legacy torch.backends.cudnn.allow_tf32, which raises when read
    after the new API was set."""
    for holder in (getattr(torch.backends.cudnn, "conv", None), torch.backends.cudnn, torch.backends):
        precision = getattr(holder, "fp32_precision", "none")
        if precision != "none":
            return precision == "tf32"
    return torch.backends.cudnn.allow_tf32


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _version_tuple(version):
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


@functools.cache
def triton_interpreter_problem():
    """Why the Triton interpreter (TRITON_INTERPRET=1) cannot run fastgan's kernels here, or None.

    triton < 3.7's interpreter calls int() on a 1-element array for a loop bound that is a runtime
    argument (`for i in range(n)`, most kernels); numpy >= 2.4 refuses that. Compiled kernels are
    not affected. Checked: 3.6.0 fails with numpy 2.4.6 and runs with 2.3.5; 3.7.0, 3.7.1, 3.8 run."""
    try:
        import numpy
        import triton
    except ImportError:
        return None
    if _version_tuple(triton.__version__) < (3, 7) and _version_tuple(numpy.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter cannot run loops with a runtime bound under numpy "
                f"{numpy.__version__} (TypeError: only 0-dimensional arrays can be converted to Python scalars): "
                f"use triton >= 3.7 or numpy < 2.4")
    return None


def _extension_error(module, name):
    err = _extensions.load_error(module)
    return f"the {name} extension `fastgan.{module}` is not built ({err}). {BUILD_HINT}"


def availability(name, device_type):
    """None if backend ``name`` can run on ``device_type`` tensors, else the reason."""
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
        if device_type == "cpu" and triton_interpreter_problem():
            return triton_interpreter_problem()
        if device_type not in ("cpu", "cuda"):
            return f"the triton backend does not support {device_type} tensors"
        return None
    raise AssertionError(name)


def resolve(impl, device):
    """The backend name to use for a call on tensors of ``device``."""
    device_type = _device_types.get(device) or _device_type(device)
    if impl is None:
        impl = _chosen(device_type)
    elif impl not in BACKENDS:
        _check_name(impl, "impl")
    why = availability(impl, device_type)
    if why is not None:
        raise BackendUnavailableError(f"fastgan: backend {impl!r} is unavailable: {why}")
    return impl


_device_types = {}  # device -> its type: torch.device.type builds a new str per call (~0.2 us)


def _device_type(device):
    _device_types[device] = torch.device(device).type
    return _device_types[device]


# CPython's dict behind os.environ, keyed by encoded names: os.environ.get encodes the name and
# decodes the value on each call (~0.5 us), and _chosen runs on every call without impl=.
_environ_data = getattr(os.environ, "_data", None)
_env_key = os.environ.encodekey(ENV_VAR) if _environ_data is not None and hasattr(os.environ, "encodekey") else None


def _environment():
    """The value of FASTGAN_BACKEND now (monkeypatch.setenv and os.environ[...] = are seen), or None."""
    if _env_key is None:
        return os.environ.get(ENV_VAR)
    value = _environ_data.get(_env_key)
    return None if value is None else os.environ.decodevalue(value)


def _chosen(device_type):
    """The backend of a call without impl=: the innermost context, the environment, the default."""
    stack = _state.stack
    if stack:
        return stack[-1]
    impl = _environment()
    if impl:
        _check_name(impl, f"{ENV_VAR} value")
        return impl
    return DEFAULT_BACKEND.get(device_type, "reference")
