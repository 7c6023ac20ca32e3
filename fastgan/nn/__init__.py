"""Drop-in modules built on `fastgan.ops`."""

from .progressive import FadeIn, PixelNorm

__all__ = ["FadeIn", "PixelNorm"]
