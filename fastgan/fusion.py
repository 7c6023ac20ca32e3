"""`fastgan.fuse(model)`: run an existing model's ConvTranspose2d -> BatchNorm2d -> ReLU blocks fused.

The model keeps its modules, parameters and buffers: every `nn.Sequential` that holds such a run
becomes a `FusedSequential` in place (a subclass whose forward runs each run as one fused call
and the other children as before), so `state_dict` keys, optimizers and checkpoints are untouched
and load both ways. `unfuse(model)` turns it back.
"""

from dataclasses import dataclass

from torch import nn

from . import ops


@dataclass(frozen=True)
class Replacement:
    path: str       # the Sequential's name in the model ("" for the model itself)
    start: int      # index of the run's first child
    pattern: str    # what was fused
    modules: tuple  # the children's names, e.g. ("0", "1", "2")


def _why_not_fusable(conv, bn, act):
    """None if (conv, bn, act) can run as one conv_transpose_bn_relu, else the reason."""
    if not (type(conv) is nn.ConvTranspose2d and type(bn) is nn.BatchNorm2d and type(act) is nn.ReLU):
        return "not ConvTranspose2d -> BatchNorm2d -> ReLU"
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return "groups, dilation or padding_mode other than the defaults"
    if bn.num_features != conv.out_channels:
        return "BatchNorm2d num_features differs from the conv's out_channels"
    return None


def conv_transpose_bn_relu_modules(conv, bn, x, impl=None):
    """relu(bn(conv(x))) in one fused call, with the bookkeeping of nn.BatchNorm2d.forward:
    num_batches_tracked, momentum=None as a cumulative average, and batch statistics in eval
    when the module tracks no running statistics."""
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    tracking = bn.training and bn.track_running_stats
    return ops.conv_transpose_bn_relu(
        x, conv.weight, conv.bias, bn.weight, bn.bias,
        bn.running_mean if tracking or not bn.training else None,
        bn.running_var if tracking or not bn.training else None,
        training, bn.momentum, bn.eps, conv.stride, conv.padding, conv.output_padding,
        num_batches_tracked=bn.num_batches_tracked if tracking else None, impl=impl)


class FusedSequential(nn.Sequential):
    """An nn.Sequential whose ConvTranspose2d -> BatchNorm2d -> ReLU runs are fused.

    Made by `fuse`, by changing the class of an existing nn.Sequential: the children stay where
    they were. `_fastgan_runs` holds the first index of each run, `_fastgan_impl` the backend.
    """

    def forward(self, x):
        children = list(self._modules.values())
        i = 0
        while i < len(children):
            if i in self._fastgan_runs:
                x = conv_transpose_bn_relu_modules(children[i], children[i + 1], x, self._fastgan_impl)
                i += 3
            else:
                x = children[i](x)
                i += 1
        return x


def _runs(seq):
    """First indices of the fusable runs of `seq`, left to right, not overlapping."""
    children, runs, i = list(seq._modules.values()), [], 0
    while i + 2 < len(children):
        if _why_not_fusable(*children[i:i + 3]) is None:
            runs.append(i)
            i += 3
        else:
            i += 1
    return runs


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
        runs = _runs(module)
        if not runs:
            continue
        module.__class__ = FusedSequential
        module._fastgan_runs = frozenset(runs)
        module._fastgan_impl = impl
        names = list(module._modules)
        done += [Replacement(path, i, "ConvTranspose2d -> BatchNorm2d -> ReLU", tuple(names[i:i + 3]))
                 for i in runs]
    return done


def unfuse(model):
    """Undo `fuse`: every FusedSequential in `model` becomes a plain nn.Sequential again."""
    for module in model.modules():
        if type(module) is FusedSequential:
            module.__class__ = nn.Sequential
            del module._fastgan_runs, module._fastgan_impl
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


__all__ = ["fuse", "unfuse", "format_report", "FusedSequential", "Replacement",
           "conv_transpose_bn_relu_modules"]
