"""Drop-in modules built on `fastgan.ops`."""

from .minibatch_discrimination import MinibatchDiscrimination
from .progressive import FadeIn, PixelNorm

__all__ = ["FadeIn", "MinibatchDiscrimination", "PixelNorm"]
