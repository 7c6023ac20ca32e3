"""fastgan's functional API. Every op takes `impl=` ("reference", "cpu", "triton", "cuda")."""

from .bias_act import bias_act, bias_act_reference
from .bias_act_pixel_norm import bias_act_pixel_norm, bias_act_pixel_norm_reference
from .blend_reals import blend_reals, blend_reals_reference
from .conv2d_bn_leaky_relu import conv2d_bn_leaky_relu, conv2d_bn_leaky_relu_reference
from .conv_transpose_bn_relu import conv_transpose_bn_relu, conv_transpose_bn_relu_reference
from .fade_in import fade_in, fade_in_reference
from .fade_in_from_rgb import fade_in_from_rgb, fade_in_from_rgb_reference
from .minibatch_discrimination import (minibatch_discrimination, minibatch_discrimination_reference,
                                       minibatch_features, minibatch_features_reference)
from .minibatch_stddev import minibatch_stddev, minibatch_stddev_reference
from .pixel_norm import pixel_norm, pixel_norm_reference
from .schedule import fade_alpha
from .virtual_batch_norm import virtual_batch_norm, virtual_batch_norm_reference
from .conv_vbn import (conv2d_vbn_leaky_relu, conv2d_vbn_leaky_relu_reference, conv_transpose_vbn_relu,
                       conv_transpose_vbn_relu_reference)
from ._sync_batch_norm import WORLD

__all__ = [
    "WORLD",
    "blend_reals",
    "blend_reals_reference",
    "fade_in",
    "fade_in_reference",
    "pixel_norm",
    "pixel_norm_reference",
    "fade_alpha",
    "conv_transpose_bn_relu",
    "conv_transpose_bn_relu_reference",
    "conv2d_bn_leaky_relu",
    "conv2d_bn_leaky_relu_reference",
    "minibatch_discrimination",
    "minibatch_discrimination_reference",
    "minibatch_features",
    "minibatch_features_reference",
    "bias_act",
    "bias_act_reference",
    "bias_act_pixel_norm",
    "bias_act_pixel_norm_reference",
    "fade_in_from_rgb",
    "fade_in_from_rgb_reference",
    "minibatch_stddev",
    "minibatch_stddev_reference",
    "virtual_batch_norm",
    "virtual_batch_norm_reference",
    "conv_transpose_vbn_relu",
    "conv_transpose_vbn_relu_reference",
    "conv2d_vbn_leaky_relu",
    "conv2d_vbn_leaky_relu_reference",
]
