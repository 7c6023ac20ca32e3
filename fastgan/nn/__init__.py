"""Drop-in modules built on `fastgan.ops`."""

from .conv2d_bn_leaky_relu import Conv2dBNLeakyReLU
from .conv_transpose_bn_relu import ConvTransposeBNReLU2d
from .discriminator import FadeInFromRGB, MinibatchStdDev
from .equalized import EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear
from .minibatch_discrimination import MinibatchDiscrimination
from .progressive import FadeIn, PixelNorm
from .sync_batch_norm import FusedSyncBatchNorm
from .virtual_batch_norm import Conv2dVBNLeakyReLU, ConvTransposeVBNReLU2d, VirtualBatchNorm2d

__all__ = [
    "FadeIn",
    "PixelNorm",
    "ConvTransposeBNReLU2d",
    "Conv2dBNLeakyReLU",
    "MinibatchDiscrimination",
    "EqualizedConv2d",
    "EqualizedConvTranspose2d",
    "EqualizedLinear",
    "FadeInFromRGB",
    "MinibatchStdDev",
    "FusedSyncBatchNorm",
    "VirtualBatchNorm2d",
    "ConvTransposeVBNReLU2d",
    "Conv2dVBNLeakyReLU",
]
