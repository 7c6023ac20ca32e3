"""What the fused convolution + BatchNorm2d blocks (ConvTransposeBNReLU2d, Conv2dBNLeakyReLU) share:
the checks of from_modules, building a block over existing modules, and BatchNorm2d's choice of
statistics."""

import torch

from .sync_batch_norm import adopt, is_sync_batch_norm, module_process_group


def check_conv(conv, conv_type):
    """The convolution a fused block can run: a plain `conv_type` (groups 1, no dilation, zero padding
    given as numbers)."""
    if not isinstance(conv, conv_type):
        raise TypeError(f"fastgan: conv must be an nn.{conv_type.__name__}, got {type(conv).__name__}")
    unsupported = {"groups": (conv.groups, 1), "dilation": (tuple(conv.dilation), (1, 1)),
                   "padding_mode": (conv.padding_mode, "zeros")}
    for name, (got, want) in unsupported.items():
        if got != want:
            raise ValueError(f"fastgan: conv.{name} must be {want!r} for the fused block, got {got!r}")
    if isinstance(conv.padding, str):
        raise ValueError(f"fastgan: conv.padding must be numbers for the fused block, got {conv.padding!r}")


def check_normalization(norm, name, conv):
    """A normalization over conv's outputs: as many features as conv has output channels."""
    if norm.num_features != conv.out_channels:
        raise ValueError(f"fastgan: {name}.num_features ({norm.num_features}) must equal conv.out_channels "
                         f"({conv.out_channels})")


def check_conv_bn(conv, bn, conv_type):
    """The modules a fused block can run: a plain `conv_type` and a BatchNorm2d (or SyncBatchNorm,
    issue 17) over its outputs."""
    check_conv(conv, conv_type)
    if not isinstance(bn, torch.nn.BatchNorm2d) and not is_sync_batch_norm(bn):
        raise TypeError(f"fastgan: bn must be an nn.BatchNorm2d or nn.SyncBatchNorm, got {type(bn).__name__}")
    check_normalization(bn, "bn", conv)


def block_over(cls, conv, bn, **attributes):
    """An instance of `cls` holding `conv` and `bn` themselves as submodules "0" and "1" (an
    nn.SyncBatchNorm taken over as a FusedSyncBatchNorm, see nn/sync_batch_norm.py)."""
    block = cls.__new__(cls)
    torch.nn.Module.__init__(block)
    block.add_module("0", conv)
    block.add_module("1", adopt(bn))
    for name, value in attributes.items():
        setattr(block, name, value)
    return block


def bn_arguments(bn):
    """As nn.BatchNorm2d.forward: the running statistics used (eval, or training when tracked:
    then updated), and num_batches_tracked when it counts; as nn.SyncBatchNorm.forward, the
    process group the statistics synchronize over (None: the local batch)."""
    tracked = bn.training and bn.track_running_stats
    use_running = not bn.training or bn.track_running_stats
    return dict(running_mean=bn.running_mean if use_running else None,
                running_var=bn.running_var if use_running else None,
                num_batches_tracked=bn.num_batches_tracked if tracked else None,
                process_group=module_process_group(bn))
