"""Drop-in modules built on `fastgan.ops`."""

from .discriminator import FadeInFromRGB, MinibatchStdDev
from .progressive import FadeIn, PixelNorm

__all__ = ["FadeIn", "FadeInFromRGB", "MinibatchStdDev", "PixelNorm"]
