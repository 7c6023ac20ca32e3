"""Equalized-learning-rate layers (SPEC 3, Karras et al. 2018; StyleGAN2's options):

    y = clamp(act(op(x, w) * w_mul + bias * bias_mul) * act_gain)
    w_mul = gain / sqrt(fan_in) * lr_mul,  stored w ~ N(0, 1) / lr_mul

op is the framework's linear / conv2d / conv_transpose2d on the raw stored
weight; the runtime scales, the bias, the activation and its gain are one fused
`bias_act` pass over op's output (the weight scale enters as bias_act's input
multiplier: no scaled copy of the weight per step). ProGAN: gain sqrt(2) (the
default), 1 for to-RGB and the last discriminator layer, sqrt(2) / 4 for the
generator's first dense layer, act_gain 1; StyleGAN2: act_gain sqrt(2).
"""

import math

import torch
import torch.nn.functional as F

from .. import ops
from ..ops._autocast import lower
from ..ops.bias_act import act_params


class _Equalized(torch.nn.Module):
    """The parameters and the fused epilogue shared by the three layers."""

    def __init__(self, weight_shape, fan_in, out_features, bias, gain, lr_mul, bias_mul, activation, alpha,
                 act_gain, bias_init, clamp, impl):
        super().__init__()
        act_params(activation, alpha, act_gain, clamp)  # checks them now, not at the first call
        if not lr_mul > 0:
            raise ValueError(f"fastgan: lr_mul must be positive, got {lr_mul}")
        self.weight = torch.nn.Parameter(torch.randn(weight_shape) / lr_mul)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.w_mul = gain / math.sqrt(fan_in) * lr_mul
        self.bias_mul = lr_mul if bias_mul is None else float(bias_mul)
        self.activation, self.alpha, self.act_gain, self.clamp, self.impl = activation, alpha, act_gain, clamp, impl

    def epilogue(self, z, dim=1):
        """act(z * w_mul + bias * bias_mul) * act_gain, clamped: one fused pass over z. Under
        torch.autocast the bias is cast with z, as autocast casts a convolution's or linear's bias."""
        (bias,) = lower(z.device.type, self.bias)
        return ops.bias_act(z, bias, self.activation, self.alpha, self.act_gain, self.clamp, dim=dim,
                            x_mul=self.w_mul, b_mul=self.bias_mul, impl=self.impl)

    def extra_repr(self):
        return (f"w_mul={self.w_mul:.4g}, bias={self.bias is not None}, bias_mul={self.bias_mul}, "
                f"activation={self.activation}, act_gain={self.act_gain}, clamp={self.clamp}")


class EqualizedLinear(_Equalized):
    """y = act((x @ w^T) * w_mul + bias * bias_mul) * act_gain; x [..., in_features]."""

    def __init__(self, in_features, out_features, bias=True, gain=math.sqrt(2), lr_mul=1.0, bias_mul=None,
                 activation="linear", alpha=0.2, act_gain=1.0, bias_init=0.0, clamp=None, impl=None):
        super().__init__([out_features, in_features], in_features, out_features, bias, gain, lr_mul, bias_mul,
                         activation, alpha, act_gain, bias_init, clamp, impl)

    def forward(self, x):
        return self.epilogue(F.linear(x, self.weight), dim=-1)


class EqualizedConv2d(_Equalized):
    """y = act(conv2d(x, w) * w_mul + bias * bias_mul) * act_gain; fan_in = in_channels * k * k."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, gain=math.sqrt(2),
                 lr_mul=1.0, bias_mul=None, activation="linear", alpha=0.2, act_gain=1.0, bias_init=0.0,
                 clamp=None, impl=None):
        k = torch.nn.modules.utils._pair(kernel_size)
        super().__init__([out_channels, in_channels, *k], in_channels * k[0] * k[1], out_channels, bias, gain,
                         lr_mul, bias_mul, activation, alpha, act_gain, bias_init, clamp, impl)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return self.epilogue(F.conv2d(x, self.weight, None, self.stride, self.padding))


class EqualizedConvTranspose2d(_Equalized):
    """y = act(conv_transpose2d(x, w) * w_mul + bias * bias_mul) * act_gain (the generator's
    up-sampling conv); w [in_channels, out_channels, k, k], fan_in = in_channels * k * k."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, bias=True,
                 gain=math.sqrt(2), lr_mul=1.0, bias_mul=None, activation="linear", alpha=0.2, act_gain=1.0,
                 bias_init=0.0, clamp=None, impl=None):
        k = torch.nn.modules.utils._pair(kernel_size)
        super().__init__([in_channels, out_channels, *k], in_channels * k[0] * k[1], out_channels, bias, gain,
                         lr_mul, bias_mul, activation, alpha, act_gain, bias_init, clamp, impl)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding

    def forward(self, x):
        return self.epilogue(F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, self.output_padding))
