"""The benchmark cases: one module per op, each defining `CASE`.

To add an op, write `cases/<op>.py` with a `CASE = Case(...)` and list it in `CASES` below.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class Case:
    """One op to benchmark. Required: name, shapes, quick_shapes, make_inputs, op, reference.
    Shapes are per device: `shapes_for(device, quick)` picks the gpu_* lists on CUDA.

    make_inputs returns the op's tensor arguments, fresh and random. Gradients are taken with
    respect to the ones that require grad; if make_inputs sets none, all of them (buffers such as
    running statistics: leave requires_grad off and set it on the others). The first input that
    requires grad is the one the "double backward" mode differentiates twice (x of a gradient
    penalty). The optional fields add columns or change what is run:
    """
    name: str
    shapes: list          # full run: shape tuples handed to make_inputs
    quick_shapes: list    # --quick and the pytest-benchmark tests
    make_inputs: Callable  # (shape, dtype, device) -> list of fresh random tensors
    op: Callable          # (*inputs, impl=name) -> output: the public fastgan op
    reference: Callable   # (*inputs) -> output: eager PyTorch ("eager", and compiled for "compile")
    min_bytes: Optional[Callable] = None  # (shape, itemsize) -> {mode: bytes}: the least traffic any
    #                       implementation must move per mode ("forward", "backward"; forward+backward
    #                       is their sum): adds GB/s and efficiency against a copy of as many bytes
    modes: tuple = ("forward", "backward", "forward+backward")  # any of harness.MODES
    inference: bool = False  # forward under torch.no_grad (an eval-mode or sampling call); forward only
    flops: Optional[Callable] = None  # (shape) -> {mode: floating-point operations}: adds GFLOP/s
    yardstick: Optional[Callable] = None  # (shape, dtype, device) -> (label, fn, flops): a reference
    #                       computation (a matrix product of the same size, say) timed with the
    #                       forward providers, reported as a row of its own; with flops, rows also
    #                       get the share of their time outside it ("outside %")
    eager_bytes: Optional[Callable] = None  # (shape, itemsize) -> bytes eager needs: where that is
    #                       more than the device has free, eager and compile are reported n/a
    #                       (out of memory) instead of run
    backends: tuple = ("cpu", "triton", "cuda")  # the fastgan backends the op has (others are not run)
    gpu_shapes: Optional[list] = None        # --device cuda: GPU-sized shapes (default: shapes)
    gpu_quick_shapes: Optional[list] = None  # --device cuda --quick (default: quick_shapes): one or two,
    #                       as the GPU CI step has about 50 s for all the ops

    def __post_init__(self):
        # A case without GPU sizes runs its CPU shapes on every device.
        if self.gpu_shapes is None:
            object.__setattr__(self, "gpu_shapes", self.shapes)
        if self.gpu_quick_shapes is None:
            object.__setattr__(self, "gpu_quick_shapes", self.quick_shapes)

    def shapes_for(self, device, quick):
        """The shapes to run on `device` (a torch.device or its name): GPU-sized ones on CUDA."""
        if torch.device(device).type == "cuda":
            return self.gpu_quick_shapes if quick else self.gpu_shapes
        return self.quick_shapes if quick else self.shapes


# Imported after Case is defined: the case modules import it from this package.
from . import (bias_act, bias_act_pixel_norm, blend_reals, conv2d_bn_leaky_relu, conv_transpose_bn_relu,  # noqa: E402
               equalized_conv, fade_in, fade_in_from_rgb, minibatch_discrimination, minibatch_stddev, pixel_norm,
               virtual_batch_norm)

CASES = [
    fade_in.CASE, blend_reals.CASE, pixel_norm.CASE,                # progressive growing (issue 2)
    conv_transpose_bn_relu.TRAIN, conv_transpose_bn_relu.EVAL,      # the DCGAN generator block
    conv2d_bn_leaky_relu.CASE,                                      # the DCGAN discriminator block
    minibatch_discrimination.CASE,
    bias_act.CASE, bias_act_pixel_norm.CASE, equalized_conv.CASE,   # equalized layers
    minibatch_stddev.CASE, fade_in_from_rgb.CASE,                   # the ProGAN discriminator
    virtual_batch_norm.VBN, virtual_batch_norm.BLOCK, virtual_batch_norm.DISC,  # issue 18
]
