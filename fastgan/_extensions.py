"""Loading the compiled extensions: `fastgan._C` (CPU) and `fastgan._C_cuda` (CUDA).

Importing an extension registers its kernels as the torch.library ops
`fastgan_cpu::*` and `fastgan_cuda::*`; the public ops in `fastgan.ops` call them.
"""

import importlib

_modules = {}
_errors = {}


def load(name):
    """The extension module `fastgan.<name>`, or None if it cannot be imported."""
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"fastgan.{name}")
        except ImportError as e:
            _modules[name] = None
            _errors[name] = str(e)
    return _modules[name]


def load_error(name):
    load(name)
    return _errors.get(name, "")
