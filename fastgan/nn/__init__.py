"""Drop-in modules built on `fastgan.ops`."""

from .discriminator import FadeInFromRGB, MinibatchStdDev
from .equalized import EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear
from .minibatch_discrimination import MinibatchDiscrimination
from .progressive import FadeIn, PixelNorm

__all__ = [
    "FadeIn",
    "PixelNorm",
    "MinibatchDiscrimination",
    "EqualizedConv2d",
    "EqualizedConvTranspose2d",
    "EqualizedLinear",
    "FadeInFromRGB",
    "MinibatchStdDev",
]
