"""`fastgan.fuse(model)`: run an existing model's ConvTranspose2d -> BatchNorm2d -> ReLU blocks fused.

The model keeps its modules, parameters and buffers: every `nn.Sequential` that holds such a run
becomes a `FusedSequential` in place (a subclass whose forward runs each run as one fused call
and the other children as before), so `state_dict` keys, optimizers and checkpoints are untouched
and load both ways. `unfuse(model)` turns it back.
"""

from dataclasses import dataclass

from torch import nn

from .nn import ConvTransposeBNReLU2d


@dataclass(frozen=True)
class Replacement:
    path: str       # the Sequential's name in the model ("" for the model itself)
    start: int      # index of the run's first child
    pattern: str    # what was fused
    modules: tuple  # the children's names, e.g. ("0", "1", "2")


def _fused_block(children, impl):
    """The fused module over children (conv, bn, act) if they form a run it can run, else None."""
    conv, bn, act = children
    if not (type(conv) is nn.ConvTranspose2d and type(bn) is nn.BatchNorm2d and type(act) is nn.ReLU):
        return None
    try:
        return ConvTransposeBNReLU2d.from_modules(conv, bn, impl=impl)
    except ValueError:  # groups, dilation, padding_mode or channel counts it does not support
        return None


class FusedSequential(nn.Sequential):
    """An nn.Sequential whose ConvTranspose2d -> BatchNorm2d -> ReLU runs are fused.

    Made by `fuse`, by changing the class of an existing nn.Sequential: the children stay where
    they were. `_fastgan_blocks` maps the first index of each run to a ConvTransposeBNReLU2d over
    the run's own conv and bn modules, kept in a plain dict so that it is not registered twice.
    """

    def forward(self, x):
        children = list(self._modules.values())
        i = 0
        while i < len(children):
            block = self._fastgan_blocks.get(i)
            if block is not None:
                x = block(x)
                i += 3
            else:
                x = children[i](x)
                i += 1
        return x


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
    """Fuse every ConvTranspose2d -> BatchNorm2d -> ReLU run of every nn.Sequential in `model`,
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
        names = list(module._modules)
        done += [Replacement(path, i, "ConvTranspose2d -> BatchNorm2d -> ReLU", tuple(names[i:i + 3]))
                 for i in blocks]
    return done


def unfuse(model):
    """Undo `fuse`: every FusedSequential in `model` becomes a plain nn.Sequential again."""
    for module in model.modules():
        if type(module) is FusedSequential:
            module.__class__ = nn.Sequential
            del module._fastgan_blocks
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
