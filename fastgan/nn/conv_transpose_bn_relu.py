"""The DCGAN generator block as one module: a drop-in for
nn.Sequential(nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU) running the fused op."""

import torch

from .. import ops


class ConvTransposeBNReLU2d(torch.nn.Module):
    """relu(batch_norm(conv_transpose2d(x))) with nn.BatchNorm2d's training and eval semantics.

    Its parameters and buffers live in a real nn.ConvTranspose2d and nn.BatchNorm2d registered as
    submodules "0" and "1" (their forwards are not used), so the state_dict has the Sequential's
    keys ("0.weight", "1.running_mean", ...) and loads from and into it; construction draws the
    same random initialization as the Sequential; train() / eval() act through the "1" submodule.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, bias=True,
                 eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, impl=None, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.add_module("0", torch.nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                                                      output_padding, bias=bias, **factory))
        self.add_module("1", torch.nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats,
                                                  **factory))
        self.impl = impl

    @classmethod
    def from_modules(cls, conv, bn, impl=None):
        """The fused block over an existing ConvTranspose2d and BatchNorm2d, sharing their parameter
        and buffer objects (an optimizer or a state_dict of either sees the same tensors)."""
        if not isinstance(conv, torch.nn.ConvTranspose2d):
            raise TypeError(f"fastgan: conv must be an nn.ConvTranspose2d, got {type(conv).__name__}")
        if not isinstance(bn, torch.nn.BatchNorm2d):
            raise TypeError(f"fastgan: bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
        unsupported = {"groups": (conv.groups, 1), "dilation": (tuple(conv.dilation), (1, 1)),
                       "padding_mode": (conv.padding_mode, "zeros")}
        for name, (got, want) in unsupported.items():
            if got != want:
                raise ValueError(f"fastgan: conv.{name} must be {want!r} for the fused block, got {got!r}")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"fastgan: bn.num_features ({bn.num_features}) must equal conv.out_channels "
                             f"({conv.out_channels})")
        block = cls.__new__(cls)
        torch.nn.Module.__init__(block)
        block.add_module("0", conv)
        block.add_module("1", bn)
        block.impl = impl
        return block

    def forward(self, x):
        conv, bn = self._modules["0"], self._modules["1"]
        tracked = bn.training and bn.track_running_stats
        # As nn.BatchNorm2d.forward: running statistics are used in eval, and updated only when tracked.
        use_running = not bn.training or bn.track_running_stats
        return ops.conv_transpose_bn_relu(
            x, conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean if use_running else None,
            bn.running_var if use_running else None, bn.training, bn.momentum, bn.eps, conv.stride, conv.padding,
            conv.output_padding, num_batches_tracked=bn.num_batches_tracked if tracked else None, impl=self.impl)

    def extra_repr(self):
        return f"impl={self.impl!r}" if self.impl is not None else ""
