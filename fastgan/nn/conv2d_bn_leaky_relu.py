"""The DCGAN discriminator block as one module: a drop-in for
nn.Sequential(nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU) running the fused op."""

import torch

from .. import ops
from ._conv_bn import block_over, bn_arguments, check_conv_bn


class Conv2dBNLeakyReLU(torch.nn.Module):
    """leaky_relu(batch_norm(conv2d(x)), negative_slope) with nn.BatchNorm2d's training and eval
    semantics.

    As ConvTransposeBNReLU2d: the parameters and buffers live in a real nn.Conv2d and
    nn.BatchNorm2d registered as submodules "0" and "1", so the state_dict has the Sequential's
    keys and loads both ways, construction draws the Sequential's initialization, and train() /
    eval() act through "1". The LeakyReLU has no state: only its slope is kept.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, eps=1e-5,
                 momentum=0.1, affine=True, track_running_stats=True, negative_slope=0.2, impl=None, device=None,
                 dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.add_module("0", torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias,
                                             **factory))
        self.add_module("1", torch.nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats,
                                                  **factory))
        self.negative_slope = negative_slope
        self.impl = impl

    @classmethod
    def from_modules(cls, conv, bn, act=None, impl=None):
        """The fused block over an existing Conv2d and BatchNorm2d (and the LeakyReLU whose slope it
        takes; 0.2 without one), sharing their parameter and buffer objects."""
        if act is not None and not isinstance(act, torch.nn.LeakyReLU):
            raise TypeError(f"fastgan: act must be an nn.LeakyReLU, got {type(act).__name__}")
        check_conv_bn(conv, bn, torch.nn.Conv2d)
        return block_over(cls, conv, bn, negative_slope=0.2 if act is None else act.negative_slope, impl=impl)

    def forward(self, x):
        conv, bn = self._modules["0"], self._modules["1"]
        return ops.conv2d_bn_leaky_relu(x, conv.weight, conv.bias, bn.weight, bn.bias, training=bn.training,
                                        momentum=bn.momentum, eps=bn.eps, stride=conv.stride, padding=conv.padding,
                                        negative_slope=self.negative_slope, impl=self.impl, **bn_arguments(bn))

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (f", impl={self.impl!r}" if self.impl is not None else "")
