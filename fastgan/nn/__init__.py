"""Drop-in modules built on `fastgan.ops`."""

from .conv_transpose_bn_relu import ConvTransposeBNReLU2d
from .progressive import FadeIn, PixelNorm

__all__ = ["ConvTransposeBNReLU2d", "FadeIn", "PixelNorm"]
