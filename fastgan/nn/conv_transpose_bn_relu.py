"""The DCGAN generator block as one module: a drop-in for
nn.Sequential(nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU) running the fused op."""

import torch

from .. import ops
from ._conv_bn import block_over, bn_arguments, check_conv_bn


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
        check_conv_bn(conv, bn, torch.nn.ConvTranspose2d)
        return block_over(cls, conv, bn, impl=impl)

    def forward(self, x):
        conv, bn = self._modules["0"], self._modules["1"]
        return ops.conv_transpose_bn_relu(x, conv.weight, conv.bias, bn.weight, bn.bias, training=bn.training,
                                          momentum=bn.momentum, eps=bn.eps, stride=conv.stride, padding=conv.padding,
                                          output_padding=conv.output_padding, impl=self.impl, **bn_arguments(bn))

    def extra_repr(self):
        return f"impl={self.impl!r}" if self.impl is not None else ""
