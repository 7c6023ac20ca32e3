"""Triton kernels of the fastgan ops (the "triton" backend).

Host functions with the signatures and semantics of the kernel-level ops in
csrc/schemas.h: inputs arrive NCHW-contiguous or (4-D) channels-last-contiguous
and outputs come back in the same layout. On CPU tensors they run under the
Triton interpreter (TRITON_INTERPRET=1 set before import).

KERNEL_SPECS lists every kernel with the autotune configs and specializations
it is launched with, for the ahead-of-time compile test (tests/test_triton_aot.py).
"""

from ._common import KernelSpec
from .bias_act import KERNEL_SPECS as _BIAS_ACT_SPECS
from .bias_act import bias_act, bias_act_backward, bias_act_backward_bias
from .bias_act_pixel_norm import KERNEL_SPECS as _BIAS_ACT_PIXEL_NORM_SPECS
from .bias_act_pixel_norm import bias_act_pixel_norm, bias_act_pixel_norm_backward
from .blend_reals import KERNEL_SPECS as _BLEND_REALS_SPECS
from .blend_reals import blend_reals
from .conv_transpose_bn_relu import KERNEL_SPECS as _CONV_TRANSPOSE_BN_RELU_SPECS
from .conv_transpose_bn_relu import (batch_stats, batch_stats_finalize, bn_finalize, bn_gather_finalize, bn_relu,
                                     bn_relu_, bn_relu_backward, bn_relu_backward_elemt, bn_relu_backward_reduce,
                                     conv_transpose, conv_transpose_bias_relu, conv_transpose_stats)
from .convolution import conv2d, conv2d_backward, conv_transpose_backward, to_layout
from .fade_in import KERNEL_SPECS as _FADE_IN_SPECS
from .fade_in import fade_in, fade_in_backward
from .fade_in_from_rgb import KERNEL_SPECS as _FADE_IN_FROM_RGB_SPECS
from .fade_in_from_rgb import fade_in_from_rgb, fade_in_from_rgb_backward, fade_in_from_rgb_double_backward
from .minibatch_discrimination import KERNEL_SPECS as _MINIBATCH_DISCRIMINATION_SPECS
from .minibatch_discrimination import minibatch_discrimination, minibatch_discrimination_backward
from .minibatch_stddev import KERNEL_SPECS as _MINIBATCH_STDDEV_SPECS
from .minibatch_stddev import minibatch_stddev, minibatch_stddev_backward, minibatch_stddev_double_backward
from .pixel_norm import KERNEL_SPECS as _PIXEL_NORM_SPECS
from .pixel_norm import pixel_norm, pixel_norm_backward
from .virtual_batch_norm import KERNEL_SPECS as _VIRTUAL_BATCH_NORM_SPECS
from .virtual_batch_norm import vbn_backward, vbn_forward

KERNEL_SPECS = [
    *_PIXEL_NORM_SPECS,
    *_FADE_IN_SPECS,
    *_BLEND_REALS_SPECS,
    *_CONV_TRANSPOSE_BN_RELU_SPECS,
    *_MINIBATCH_DISCRIMINATION_SPECS,
    *_BIAS_ACT_SPECS,
    *_BIAS_ACT_PIXEL_NORM_SPECS,
    *_MINIBATCH_STDDEV_SPECS,
    *_FADE_IN_FROM_RGB_SPECS,
    *_VIRTUAL_BATCH_NORM_SPECS,
]

__all__ = [
    "pixel_norm",
    "pixel_norm_backward",
    "fade_in",
    "fade_in_backward",
    "blend_reals",
    "KERNEL_SPECS",
    "KernelSpec",
    "conv_transpose_stats",
    "conv_transpose",
    "bn_relu",
    "bn_relu_",
    "bn_relu_backward",
    "bn_relu_backward_reduce",
    "bn_relu_backward_elemt",
    "bn_gather_finalize",
    "batch_stats",
    "batch_stats_finalize",
    "bn_finalize",
    "conv_transpose_bias_relu",
    "conv_transpose_backward",
    "to_layout",
    "conv2d",
    "conv2d_backward",
    "minibatch_discrimination",
    "minibatch_discrimination_backward",
    "bias_act",
    "bias_act_backward",
    "bias_act_backward_bias",
    "bias_act_pixel_norm",
    "bias_act_pixel_norm_backward",
    "minibatch_stddev",
    "minibatch_stddev_backward",
    "minibatch_stddev_double_backward",
    "fade_in_from_rgb",
    "fade_in_from_rgb_backward",
    "fade_in_from_rgb_double_backward",
    "vbn_forward",
    "vbn_backward",
]
