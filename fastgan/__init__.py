"""fastgan: fused GAN operations for PyTorch with reference, cpu, triton and cuda backends."""

from . import distributed, models, nn, ops
from .fusion import fuse, unfuse
from ._backend import BACKENDS, BackendUnavailableError, backend

__version__ = "0.1.0"
__all__ = ["ops", "nn", "models", "distributed", "fuse", "unfuse", "backend", "BACKENDS", "BackendUnavailableError", "__version__"]
