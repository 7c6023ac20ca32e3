"""The convolutions' ATen-backed kernel ops (csrc/schemas.h) for the triton backend: the
discriminator's direct convolution and its backward, and the transposed convolution's backward
(and to_layout, a plain copy on the GPU).
cuDNN does them, channels-last, results in x's layout. No Triton kernel: a GEMM library's job (the
fused work around them, statistics and normalize + activation, is Triton's; so is the generator's
forward GEMM, which carries the statistics in its epilogue)."""

import torch

CL = torch.channels_last


def _format_of(x):
    return torch.contiguous_format if x.is_contiguous() else CL


def _backward(grad, x, weight, stride, padding, transposed, output_padding, need_x, need_weight):
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        grad.contiguous(memory_format=CL), x.contiguous(memory_format=CL), weight.contiguous(memory_format=CL),
        None, stride, padding, [1, 1], transposed, output_padding, 1, [need_x, need_weight, False])
    none = x.new_empty((0,))
    return (grad_x.contiguous(memory_format=_format_of(x)) if need_x else none,
            grad_w.contiguous(memory_format=_format_of(weight)) if need_weight else none)


def to_layout(t, channels_last):
    if t.dim() != 4:
        raise ValueError(f"fastgan: to_layout: t must be 4-D, got {tuple(t.shape)}")
    return t.contiguous(memory_format=CL if channels_last else torch.contiguous_format)


def conv2d(x, weight, stride, padding):
    z = torch.nn.functional.conv2d(x.contiguous(memory_format=CL), weight.contiguous(memory_format=CL), None,
                                   stride, padding)
    return z.contiguous(memory_format=_format_of(x))


def conv2d_backward(grad, x, weight, stride, padding, need_x, need_weight):
    return _backward(grad, x, weight, stride, padding, False, [0, 0], need_x, need_weight)


def conv_transpose_backward(grad, x, weight, stride, padding, output_padding, need_x, need_weight):
    return _backward(grad, x, weight, stride, padding, True, output_padding, need_x, need_weight)
