"""Discriminator layers of progressive growing (ProGAN): minibatch stddev and the from-RGB fade-in."""

import math

import torch

from .. import ops


class MinibatchStdDev(torch.nn.Module):
    """Appends num_channels maps of the mean group standard deviation (SPEC 5): [N, C, H, W] -> [N, C + F, H, W].

    Groups are strided (sample n in group n mod N/G, G = min(group_size, N)); a batch that G
    does not divide raises a ValueError.
    """

    def __init__(self, group_size=4, num_channels=1, impl=None):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels
        self.impl = impl

    def forward(self, x):
        return ops.minibatch_stddev(x, self.group_size, self.num_channels, impl=self.impl)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class FadeInFromRGB(torch.nn.Module):
    """The discriminator-side fade-in (SPEC 6): (1 - alpha) * lrelu(from_rgb(avg_pool_2x2(img))) + alpha * x_high.

    from_rgb is an equalized 1x1 conv: `weight` [out, img, 1, 1] ~ N(0, 1) / lr_mul is scaled at
    run time by gain / sqrt(img_channels) * lr_mul, the bias (zeros) by lr_mul; lrelu slope 0.2.
    """

    def __init__(self, img_channels, out_channels, gain=math.sqrt(2), lr_mul=1.0, impl=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_channels, img_channels, 1, 1) / lr_mul)
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))
        self.gain = gain
        self.lr_mul = lr_mul
        self.impl = impl

    def forward(self, img, x_high, alpha):
        return ops.fade_in_from_rgb(img, x_high, self.weight, self.bias, alpha, self.gain, self.lr_mul, impl=self.impl)

    def extra_repr(self):
        out_channels, img_channels = self.weight.shape[:2]
        return f"{img_channels}, {out_channels}, gain={self.gain:.4g}, lr_mul={self.lr_mul}"
