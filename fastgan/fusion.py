"""`fastgan.fuse(model)`: run an existing model's convolution blocks fused: the generator's
ConvTranspose2d -> BatchNorm2d -> ReLU and the discriminator's Conv2d -> BatchNorm2d -> LeakyReLU,
and the same runs with a fastgan.nn.VirtualBatchNorm2d in place of the BatchNorm2d.

The model keeps its modules, parameters and buffers: every `nn.Sequential` that holds such a run
becomes a `FusedSequential` in place (a subclass whose forward runs each run as one fused call
and the other children as before), so `state_dict` keys, optimizers and checkpoints are untouched
and load both ways. `unfuse(model)` turns it back.

BatchNorm2d may be an nn.SyncBatchNorm (torch.nn.SyncBatchNorm.convert_sync_batchnorm): the fused
block then synchronizes its statistics across the SyncBatchNorm's process group (issue 17), and
takes the module over as a FusedSyncBatchNorm (nn/sync_batch_norm.py: DDP refuses SyncBatchNorm
modules on the CPU), which unfuse gives back as the nn.SyncBatchNorm it was.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .nn import (Conv2dBNLeakyReLU, Conv2dVBNLeakyReLU, ConvTransposeBNReLU2d, ConvTransposeVBNReLU2d, EqualizedConv2d,
                 EqualizedConvTranspose2d, VirtualBatchNorm2d)
from .nn.sync_batch_norm import FusedSyncBatchNorm, release

# (conv type, activation type) -> (fused module, the pattern's name)
PATTERNS = {
    (nn.ConvTranspose2d, nn.ReLU): (ConvTransposeBNReLU2d, "ConvTranspose2d -> BatchNorm2d -> ReLU"),
    (nn.Conv2d, nn.LeakyReLU): (Conv2dBNLeakyReLU, "Conv2d -> BatchNorm2d -> LeakyReLU"),
}

# The same runs with a VirtualBatchNorm2d (issue 18) in the middle.
VBN_PATTERNS = {
    (nn.ConvTranspose2d, nn.ReLU): (ConvTransposeVBNReLU2d, "ConvTranspose2d -> VirtualBatchNorm2d -> ReLU"),
    (nn.Conv2d, nn.LeakyReLU): (Conv2dVBNLeakyReLU, "Conv2d -> VirtualBatchNorm2d -> LeakyReLU"),
}


# The batch norms a run may hold: exactly these types (a subclass may change the forward).
BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FusedSyncBatchNorm)


@dataclass(frozen=True)
class Replacement:
    path: str       # the Sequential's name in the model ("" for the model itself)
    start: int      # index of the run's first child
    pattern: str    # what was fused
    modules: tuple  # the children's names, e.g. ("0", "1", "2")


def _fused_block(children, impl):
    """(the fused module over children (conv, bn, act), the pattern's name) if they form a run it
    can run, else None."""
    conv, bn, act = children
    if type(bn) is VirtualBatchNorm2d:
        return _fused_vbn_block(conv, bn, act, impl)
    pattern = PATTERNS.get((type(conv), type(act)))
    if pattern is None or type(bn) not in BATCH_NORMS:
        return None
    module, name = pattern
    try:
        if module is ConvTransposeBNReLU2d:
            return ConvTransposeBNReLU2d.from_modules(conv, bn, impl=impl), name
        return Conv2dBNLeakyReLU.from_modules(conv, bn, act, impl=impl), name
    except ValueError:  # groups, dilation, padding_mode or channel counts it does not support
        return None


def _fused_vbn_block(conv, vbn, act, impl):
    pattern = VBN_PATTERNS.get((type(conv), type(act)))
    if pattern is None:
        return None
    module, name = pattern
    try:
        if module is ConvTransposeVBNReLU2d:
            return ConvTransposeVBNReLU2d.from_modules(conv, vbn, impl=impl), name
        return Conv2dVBNLeakyReLU.from_modules(conv, vbn, act, impl=impl), name
    except ValueError:
        return None


class FusedSequential(nn.Sequential):
    """An nn.Sequential whose convolution + BatchNorm2d + activation runs are fused.

    Made by `fuse`, by changing the class of an existing nn.Sequential: the children stay where
    they were. `_fastgan_blocks` maps the first index of each run to (fused module over the run's
    own conv and bn modules, pattern name), kept in a plain dict so that it is not registered twice.
    A 4-D input is made channels-last first: the fused blocks run channels-last, and so the layers
    between them (a first Conv2d, activations) run in it too instead of converting at each block.
    """

    def forward(self, x):
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        children = list(self._modules.values())
        i = 0
        while i < len(children):
            block = self._fastgan_blocks.get(i)
            if block is not None:
                x = block[0](x)
                i += 3
            else:
                x = children[i](x)
                i += 1
        return x


CONVS = (nn.Conv2d, nn.ConvTranspose2d, EqualizedConv2d, EqualizedConvTranspose2d)


def conv_weights_to(module, memory_format):
    """The 4-D convolution weights in `module` laid out in `memory_format`, in place (the same Parameter
    objects). A FusedSequential runs channels-last: with channels-last weights too, no convolution
    converts its weight and no AccumulateGrad its gradient (a copy each, a kernel launch on a GPU)."""
    for m in module.modules():
        if isinstance(m, CONVS) and m.weight.dim() == 4:
            if not m.weight.is_contiguous(memory_format=memory_format):
                m.weight.data = m.weight.data.contiguous(memory_format=memory_format)


def _fuse_sequential(seq, impl):
    """{first index: fused block} of the runs of `seq`, left to right, not overlapping."""
    children, blocks, i = list(seq._modules.values()), {}, 0
    while i + 2 < len(children):
        block = _fused_block(children[i:i + 3], impl)
        if block is not None:
            blocks[i] = block
            i += 3
        else:
            i += 1
    return blocks


def fuse(model, impl=None):
    """Fuse every ConvTranspose2d -> BatchNorm2d -> ReLU and Conv2d -> BatchNorm2d -> LeakyReLU run
    of every nn.Sequential in `model`,
    in place; returns the list of `Replacement`s made. `impl` picks the backend (default: by
    device, see fastgan.backend). Only plain nn.Sequential containers are rewritten: their order
    of execution is known; a run inside a custom forward is left alone.
    """
    done = []
    for path, module in model.named_modules():
        if type(module) not in (nn.Sequential, FusedSequential):
            continue
        blocks = _fuse_sequential(module, impl)
        if not blocks:
            continue
        module.__class__ = FusedSequential
        module._fastgan_blocks = blocks
        conv_weights_to(module, torch.channels_last)
        names = list(module._modules)
        done += [Replacement(path, i, blocks[i][1], tuple(names[i:i + 3])) for i in blocks]
    return done


def unfuse(model):
    """Undo `fuse`: every FusedSequential in `model` becomes a plain nn.Sequential again (and the
    SyncBatchNorms its blocks took over nn.SyncBatchNorms)."""
    for module in model.modules():
        if type(module) is FusedSequential:
            for block, _ in module._fastgan_blocks.values():
                release(block._modules["1"])
            module.__class__ = nn.Sequential
            del module._fastgan_blocks
            conv_weights_to(module, torch.contiguous_format)
    return model


def format_report(replacements):
    """One line per fused run, for printing."""
    if not replacements:
        return "fastgan.fuse: nothing to fuse"
    lines = [f"fastgan.fuse: {len(replacements)} run(s) fused"]
    for r in replacements:
        where = r.path or "<model>"
        lines.append(f"  {where}[{', '.join(r.modules)}]: {r.pattern}")
    return "\n".join(lines)


__all__ = ["fuse", "unfuse", "format_report", "FusedSequential", "Replacement"]
