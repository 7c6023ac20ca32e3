"""fastgan's functional API. Every op takes `impl=` ("reference", "cpu", "triton", "cuda")."""

from .blend_reals import blend_reals, blend_reals_reference
from .conv_transpose_bn_relu import conv_transpose_bn_relu, conv_transpose_bn_relu_reference
from .fade_in import fade_in, fade_in_reference
from .pixel_norm import pixel_norm, pixel_norm_reference
from .schedule import fade_alpha

__all__ = [
    "blend_reals", "blend_reals_reference",
    "conv_transpose_bn_relu", "conv_transpose_bn_relu_reference",
    "fade_in", "fade_in_reference",
    "pixel_norm", "pixel_norm_reference",
    "fade_alpha",
]
