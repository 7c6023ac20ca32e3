"""Virtual batch normalization (SPEC 10) as modules: VirtualBatchNorm2d, and the DCGAN blocks
ConvTranspose2d -> VirtualBatchNorm2d -> ReLU and Conv2d -> VirtualBatchNorm2d -> LeakyReLU fused."""

import torch

from .. import ops
from ._conv_bn import block_over, check_conv, check_normalization


class VirtualBatchNorm2d(torch.nn.Module):
    """Normalizes an input [N, C, H, W] whose first `ref_size` samples are the reference batch: R's
    samples with R's statistics, each other sample with those of R united with it alone (SPEC 10).

    gamma / beta ("weight" / "bias") as in nn.BatchNorm2d; no running statistics, so eval computes
    the same as training (where it also accepts R alone, ref_size == N).
    """

    def __init__(self, num_features, ref_size, eps=1e-5, affine=True, impl=None, device=None, dtype=None):
        super().__init__()
        if not isinstance(ref_size, int) or isinstance(ref_size, bool) or ref_size < 1:
            raise ValueError(f"fastgan: ref_size must be an int >= 1, got {ref_size!r}")
        self.num_features, self.ref_size, self.eps, self.affine, self.impl = num_features, ref_size, eps, affine, impl
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = torch.nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return ops.virtual_batch_norm(x, self.ref_size, self.weight, self.bias, self.eps, training=self.training,
                                      impl=self.impl)

    def extra_repr(self):
        s = f"{self.num_features}, ref_size={self.ref_size}, eps={self.eps}, affine={self.affine}"
        return s + (f", impl={self.impl!r}" if self.impl is not None else "")


def _check_conv_vbn(conv, vbn, conv_type):
    check_conv(conv, conv_type)
    if not isinstance(vbn, VirtualBatchNorm2d):
        raise TypeError(f"fastgan: vbn must be a fastgan.nn.VirtualBatchNorm2d, got {type(vbn).__name__}")
    check_normalization(vbn, "vbn", conv)


class ConvTransposeVBNReLU2d(torch.nn.Module):
    """relu(virtual_batch_norm(conv_transpose2d(x))): a drop-in for nn.Sequential(nn.ConvTranspose2d,
    VirtualBatchNorm2d, nn.ReLU), its modules registered as "0" and "1" (the Sequential's state_dict keys)."""

    def __init__(self, in_channels, out_channels, kernel_size, ref_size, stride=1, padding=0, output_padding=0,
                 bias=True, eps=1e-5, affine=True, impl=None, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.add_module("0", torch.nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding,
                                                      output_padding, bias=bias, **factory))
        self.add_module("1", VirtualBatchNorm2d(out_channels, ref_size, eps, affine, **factory))
        self.impl = impl

    @classmethod
    def from_modules(cls, conv, vbn, impl=None):
        _check_conv_vbn(conv, vbn, torch.nn.ConvTranspose2d)
        return block_over(cls, conv, vbn, impl=impl)

    def forward(self, x):
        conv, vbn = self._modules["0"], self._modules["1"]
        return ops.conv_transpose_vbn_relu(x, conv.weight, conv.bias, vbn.weight, vbn.bias, vbn.ref_size, vbn.eps,
                                           conv.stride, conv.padding, conv.output_padding, training=vbn.training,
                                           impl=self.impl)

    def extra_repr(self):
        return f"impl={self.impl!r}" if self.impl is not None else ""


class Conv2dVBNLeakyReLU(torch.nn.Module):
    """leaky_relu(virtual_batch_norm(conv2d(x)), negative_slope): a drop-in for nn.Sequential(nn.Conv2d,
    VirtualBatchNorm2d, nn.LeakyReLU)."""

    def __init__(self, in_channels, out_channels, kernel_size, ref_size, stride=1, padding=0, bias=True, eps=1e-5,
                 affine=True, negative_slope=0.2, impl=None, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.add_module("0", torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias,
                                             **factory))
        self.add_module("1", VirtualBatchNorm2d(out_channels, ref_size, eps, affine, **factory))
        self.negative_slope = negative_slope
        self.impl = impl

    @classmethod
    def from_modules(cls, conv, vbn, act=None, impl=None):
        if act is not None and not isinstance(act, torch.nn.LeakyReLU):
            raise TypeError(f"fastgan: act must be an nn.LeakyReLU, got {type(act).__name__}")
        _check_conv_vbn(conv, vbn, torch.nn.Conv2d)
        return block_over(cls, conv, vbn, negative_slope=0.2 if act is None else act.negative_slope, impl=impl)

    def forward(self, x):
        conv, vbn = self._modules["0"], self._modules["1"]
        return ops.conv2d_vbn_leaky_relu(x, conv.weight, conv.bias, vbn.weight, vbn.bias, vbn.ref_size, vbn.eps,
                                         conv.stride, conv.padding, self.negative_slope, training=vbn.training,
                                         impl=self.impl)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}" + (f", impl={self.impl!r}" if self.impl is not None else "")
