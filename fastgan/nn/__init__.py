"""Drop-in modules built on `fastgan.ops`."""

from .equalized import EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear
from .progressive import FadeIn, PixelNorm

__all__ = ["EqualizedConv2d", "EqualizedConvTranspose2d", "EqualizedLinear", "FadeIn", "PixelNorm"]
