"""The SyncBatchNorm a fused block holds (issue 17).

DistributedDataParallel refuses a CPU model holding nn.SyncBatchNorm modules ("SyncBatchNorm
layers only work with GPU modules"), and nn.SyncBatchNorm's own forward refuses CPU tensors in a
distributed run: both are about torch's CUDA-only kernels, which a fused block does not use (it
synchronizes with fastgan's ops, on gloo too). So a fused block takes over its SyncBatchNorm by
changing its class to FusedSyncBatchNorm: the same object, parameters, buffers, process_group and
state_dict keys, nn.SyncBatchNorm's forward, just not an nn.SyncBatchNorm instance; releasing it
(`fastgan.unfuse`) changes the class back.
"""

import torch
import torch.distributed as dist
from torch import nn

from ..ops._sync_batch_norm import WORLD


class FusedSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """An nn.SyncBatchNorm taken over by a fused block (see the module's docstring). Called on its
    own it runs nn.SyncBatchNorm's forward."""

    forward = nn.SyncBatchNorm.forward
    _check_input_dim = nn.SyncBatchNorm._check_input_dim
    _check_non_zero_input_channels = nn.SyncBatchNorm._check_non_zero_input_channels


def is_sync_batch_norm(bn):
    return isinstance(bn, (nn.SyncBatchNorm, FusedSyncBatchNorm))


def module_process_group(bn):
    """The process_group a fused block passes for its batch-norm module `bn`: as nn.SyncBatchNorm
    decides, its group (WORLD when it has none) in training inside an initialized distributed run,
    else None (a plain BatchNorm2d, eval, or no distributed run)."""
    if not (is_sync_batch_norm(bn) and bn.training and dist.is_available() and dist.is_initialized()):
        return None
    return bn.process_group or WORLD


def adopt(bn):
    """A SyncBatchNorm becomes a FusedSyncBatchNorm in place; other modules are left as they are."""
    if type(bn) is nn.SyncBatchNorm:
        bn.__class__ = FusedSyncBatchNorm
    return bn


def release(bn):
    """adopt's inverse: a FusedSyncBatchNorm becomes an nn.SyncBatchNorm again."""
    if type(bn) is FusedSyncBatchNorm:
        bn.__class__ = nn.SyncBatchNorm
    return bn


def release_all(model: torch.nn.Module):
    """Every FusedSyncBatchNorm in `model` back to nn.SyncBatchNorm."""
    for m in model.modules():
        release(m)
    return model
