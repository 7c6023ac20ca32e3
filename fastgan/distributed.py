"""Helpers for training fastgan models with torch.distributed (issue 17).

`synchronized(model, impl)`: a model's BatchNorm2d layers as nn.SyncBatchNorm and its conv + BN
runs fused (fastgan.fuse), so the fused blocks compute statistics over the global batch.
`data_parallel(model)`: DistributedDataParallel as a fused GAN network wants it:
find_unused_parameters=False, and no broadcast of rank 0's buffers before every forward. Why the
latter: with SyncBatchNorm the ranks' running statistics are equal anyway (the broadcast is a
wasted collective per forward), and in eager PyTorch on GPUs that broadcast is what breaks the
GAN discriminator's pattern of two forwards (real, fake) before one backward (pytorch#175024:
cuDNN's batch norm saves the running statistics the broadcast then overwrites in place). fastgan's
fused blocks save no running statistics, so they run that pattern either way.
"""

import inspect

import torch
from torch.nn.parallel import DistributedDataParallel

from .fusion import fuse


def synchronized(model, impl=None, process_group=None):
    """`model` with its BatchNorm layers converted to nn.SyncBatchNorm (over `process_group`, the
    default group when None) and its fusable runs fused; returns (model, fuse's replacements)."""
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    return model, fuse(model, impl=impl)


def data_parallel(model, device=None, **kwargs):
    """DistributedDataParallel(model) with find_unused_parameters=False and buffer broadcast off
    (see the module's docstring); `device`: a CUDA device for device_ids, None on the CPU."""
    kwargs.setdefault("find_unused_parameters", False)
    buffers = "forward_sync_buffers" if "forward_sync_buffers" in _DDP_PARAMETERS else "broadcast_buffers"
    kwargs.setdefault(buffers, False)  # torch 2.14 renamed broadcast_buffers
    if device is not None and torch.device(device).type == "cuda":
        kwargs.setdefault("device_ids", [torch.device(device)])
    return DistributedDataParallel(model, **kwargs)


def unwrapped(model):
    """The module inside DistributedDataParallel (the model itself otherwise): its state_dict has
    the single-process keys."""
    return model.module if isinstance(model, DistributedDataParallel) else model


_DDP_PARAMETERS = inspect.signature(DistributedDataParallel.__init__).parameters

__all__ = ["synchronized", "data_parallel", "unwrapped"]
