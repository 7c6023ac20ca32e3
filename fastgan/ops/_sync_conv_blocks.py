"""The fused convolution + batch-norm blocks with batch statistics synchronized across processes
(issue 17): what conv_transpose_bn_relu and conv2d_bn_leaky_relu run in training when given a
process_group of more than one process.

The same kernel ops as the local blocks, with one collective per pass (_sync_batch_norm.py):
forward conv (+ statistics) -> all-gather of each rank's (count, mean, var) -> bn_gather_finalize
(the rows merged, scale and shift, the running statistics updated with the global mean and
unbiased variance and num_batches_tracked, in one kernel op) -> bn_relu; backward
bn_relu_backward_reduce (the local sums) -> one collective of the two sums (reduce_sums) ->
bn_relu_backward_elemt (grad_z from the global sums and count, the pass the local backward makes
too) -> the convolution's backward. No pass over z or grad_z beyond the local block's.

Runs eagerly: torch.compile breaks the graph around it (torch.compiler.disable); under FakeTensor,
make_fx or torch.func transforms it raises. Double backward (create_graph) is not supported.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._checks import as_layout
from ._batch_norm import (LAYOUT, call, cancelled_bias_grad, dense_weight, layout_of, needs_grad, running_update,
                          stats_dtype)
from ._dispatch import _traced, kernels, to_layout
from ._sync_batch_norm import SyncBatchNormReference, gather_rows, reduce_sums


class Conv2d:
    """The discriminator block's convolution: channels-last z, statistics by batch_stats."""

    def __init__(self, stride, padding):
        self.stride, self.padding = stride, padding

    def forward(self, k, x, weight):
        """(z, local mean, local biased var, x as the kernels took it)."""
        x_k = to_layout(k, x, LAYOUT)
        z = as_layout(k.conv2d(x_k, dense_weight(weight), self.stride, self.padding), LAYOUT)
        mean, var = k.batch_stats(z)
        return z, mean, var, x_k

    def backward(self, grad_z, x_k, weight, need_x, need_w, impl):
        from .conv2d_bn_leaky_relu import _conv2d_backward

        return call(_conv2d_backward, grad_z, x_k, weight, self.stride, self.padding, need_x, need_w, impl)

    def reference(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding)

    def out_channels(self, weight):
        return weight.shape[0]


class ConvTranspose2d:
    """The generator block's convolution: conv_transpose_stats gives z and its statistics in one op."""

    def __init__(self, stride, padding, output_padding):
        self.stride, self.padding, self.output_padding = stride, padding, output_padding

    def forward(self, k, x, weight):
        from .conv_transpose_bn_relu import _layout_for

        fmt = _layout_for(x)
        x_k = to_layout(k, x, fmt)
        z, mean, var = k.conv_transpose_stats(x_k, dense_weight(weight), self.stride, self.padding,
                                              self.output_padding)
        return as_layout(z, fmt), mean, var, x_k

    def backward(self, grad_z, x_k, weight, need_x, need_w, impl):
        from .conv_transpose_bn_relu import _conv_transpose_backward

        return call(_conv_transpose_backward, grad_z, x_k, weight, self.stride, self.padding, self.output_padding,
                    need_x, need_w, impl)

    def reference(self, x, weight, bias):
        return F.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding)

    def out_channels(self, weight):
        return weight.shape[1]


class _Block:
    """What a synchronized block call needs besides its tensors."""

    def __init__(self, conv, eps, negative_slope, impl, group, world_size, update, inplace):
        self.conv, self.eps, self.slope, self.impl = conv, eps, negative_slope, impl
        self.group, self.world_size, self.update, self.inplace = group, world_size, update, inplace


class _SyncBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, block):
        k = kernels(block.impl)
        if x.shape[0]:
            z, mean, var, x_k = block.conv.forward(k, x, weight)
        else:  # an empty local batch (nn.SyncBatchNorm allows it): a row of count 0, no kernels
            z, x_k = block.conv.reference(x, weight, None), x
            mean = var = z.new_zeros(z.shape[1], dtype=stats_dtype(z))
        rows = gather_rows(mean, var, z.numel() // z.shape[1], block.group, block.world_size)
        rm, rv, nbt, momentum = block.update
        mean, _, invstd, scale, shift, total = k.bn_gather_finalize(rows, gamma, beta, block.eps, rm, rv, nbt, bias,
                                                                   momentum)
        if block.inplace:  # nothing will differentiate: y over z
            if z.numel():
                k.bn_relu_(z, mean, scale, shift, block.slope)
            return z
        y = as_layout(k.bn_relu(z, mean, scale, shift, block.slope), _layout(z)) if z.numel() else z
        ctx.save_for_backward(x_k, weight, gamma, beta, z, mean, invstd, total)
        ctx.block, ctx.has_bias = block, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x_k, weight, gamma, beta, z, mean, invstd, total = ctx.saved_tensors
        b = ctx.block
        k = kernels(b.impl)
        need_x, need_w, need_bias = ctx.needs_input_grad[:3]
        empty = z.numel() == 0  # this process's batch; the collective runs all the same
        if empty:
            sum_dy_xhat = sum_dy = torch.zeros_like(mean)
        else:
            grad_y = to_layout(k, grad_y, layout_of(z))  # once, not in both kernel ops
            sum_dy_xhat, sum_dy = k.bn_relu_backward_reduce(grad_y, z, mean, invstd, gamma, beta, b.slope)
        grad_x = grad_w = None
        if need_x or need_w:  # as SyncBatchNorm: the sums are reduced when its input needs a gradient
            global_dy, global_dy_xhat = reduce_sums(sum_dy, sum_dy_xhat, b.group, b.world_size)
            if empty:
                grad_x, grad_w = torch.zeros_like(x_k), torch.zeros_like(weight)
            else:
                grad_z = k.bn_relu_backward_elemt(grad_y, z, mean, invstd, gamma, beta, b.slope, global_dy_xhat,
                                                  global_dy, total)
                grad_x, grad_w = b.conv.backward(as_layout(grad_z, layout_of(z)), x_k, weight, need_x, need_w,
                                                 b.impl)
        grad_bias = cancelled_bias_grad(weight, b.conv.out_channels(weight)) if ctx.has_bias and need_bias else None
        return (grad_x if need_x else None, grad_w if need_w else None, grad_bias,
                sum_dy_xhat if gamma is not None else None, sum_dy if beta is not None else None, None)


def _layout(z):
    return torch.contiguous_format if z.is_contiguous() else LAYOUT


@torch.compiler.disable  # collectives in an autograd.Function: torch.compile runs the block eagerly
def sync_block(conv, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, momentum, eps,
               num_batches_tracked, negative_slope, group, impl):
    """The block's training forward with statistics over `group` = (process group, world size):
    act(batch_norm(conv(x))), act = leaky ReLU of `negative_slope` (0: ReLU)."""
    if _traced():
        raise NotImplementedError("fastgan: process_group (synchronized batch statistics) does not run under "
                                  "FakeTensor, make_fx or torch.func transforms; torch.compile runs it eagerly")
    process_group, world_size = group
    if impl == "reference":
        return _reference(conv, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, momentum, eps,
                          num_batches_tracked, negative_slope, process_group, world_size)
    gamma, beta = (None if t is None else t.to(stats_dtype(x)) for t in (bn_weight, bn_bias))
    update = running_update(True, running_mean, running_var, num_batches_tracked, momentum)
    inplace = not needs_grad(x, weight, bias, bn_weight, bn_bias)
    block = _Block(conv, eps, float(negative_slope), impl, process_group, world_size, update, inplace)
    return _SyncBlock.apply(x, weight, bias, gamma, beta, block)


def _reference(conv, x, weight, bias, bn_weight, bn_bias, running_mean, running_var, momentum, eps,
               num_batches_tracked, negative_slope, process_group, world_size):
    """Eager torch ops: conv, nn.SyncBatchNorm's math (SyncBatchNormReference), the activation."""
    z = conv.reference(x, weight, bias)
    if running_mean is not None:
        if momentum is None and num_batches_tracked is None:
            raise ValueError("fastgan: momentum=None (cumulative average) needs num_batches_tracked")
        running = (running_mean, running_var, num_batches_tracked, momentum)
    else:
        running = (None, None, None, momentum)
    u = SyncBatchNormReference.apply(z, bn_weight, bn_bias, eps, running, process_group, world_size)
    return F.leaky_relu(u, negative_slope) if negative_slope else F.relu(u)
