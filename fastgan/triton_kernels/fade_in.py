"""Generator fade-in (SPEC 6) and its backward, each one pass over memory:

    out = (1 - alpha) * upsample_nearest_2x(low) + alpha * high
    grad_low = (1 - alpha) * sum_pool_2x2(grad),  grad_high = alpha * grad

A program takes a tile of low-res elements and the 2x2 high-res blocks above
them (`_common.block_2x2_offsets`): the up-sampled tensor never exists.
"""

import torch
import triton
import triton.language as tl

from ._common import autotune_2x2, block_2x2_offsets, check_2x2, check_like, compute_dtype, launch_2x2, spec_2x2


@triton.jit
def _fade_in_kernel(low_ptr, high_ptr, out_ptr, R, X, K, alpha: "fp64",
                    BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_K: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(out_ptr.dtype.element_ty)
    low, top, row, mask = block_2x2_offsets(R, X, K, BLOCK_R, BLOCK_X, BLOCK_K)
    a = tl.cast(alpha, acc_t)
    up = tl.cast(1.0 - alpha, acc_t) * tl.load(low_ptr + low, mask=mask).to(acc_t)
    for dy in tl.static_range(2):
        offs = top + dy * row
        high = tl.load(high_ptr + offs, mask=mask).to(acc_t)
        tl.store(out_ptr + offs, (up + a * high).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fade_in_backward_kernel(grad_ptr, grad_low_ptr, grad_high_ptr, R, X, K, alpha: "fp64",
                             BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_K: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(grad_ptr.dtype.element_ty)
    low, top, row, mask = block_2x2_offsets(R, X, K, BLOCK_R, BLOCK_X, BLOCK_K)
    a = tl.cast(alpha, acc_t)
    block_sum = tl.zeros(top.shape, dtype=acc_t)
    for dy in tl.static_range(2):
        offs = top + dy * row
        grad = tl.load(grad_ptr + offs, mask=mask).to(acc_t)
        tl.store(grad_high_ptr + offs, (a * grad).to(grad_high_ptr.dtype.element_ty), mask=mask)
        block_sum += grad
    grad_low = tl.cast(1.0 - alpha, acc_t) * tl.sum(block_sum, axis=2, keep_dims=True)
    tl.store(grad_low_ptr + low, grad_low.to(grad_low_ptr.dtype.element_ty), mask=mask)


_fade_in = autotune_2x2(_fade_in_kernel)
_fade_in_backward = autotune_2x2(_fade_in_backward_kernel)


def fade_in(rgb_low, rgb_high, alpha):
    """(1 - alpha) * upsample_nearest_2x(rgb_low) + alpha * rgb_high, in rgb_high's layout."""
    high_layout = check_2x2(rgb_high, "rgb_high")
    n, c, h, w = rgb_high.shape
    if tuple(rgb_low.shape) != (n, c, h // 2, w // 2):
        raise ValueError(f"fastgan triton: rgb_low must have shape {(n, c, h // 2, w // 2)} for rgb_high of shape "
                         f"{tuple(rgb_high.shape)}, got {tuple(rgb_low.shape)}")
    check_like(rgb_low, "rgb_low", rgb_high, high_layout)
    out = torch.empty_like(rgb_high)
    if out.numel() > 0:
        launch_2x2(_fade_in, rgb_high, high_layout, (rgb_low, rgb_high, out), alpha)
    return out


def fade_in_backward(grad, alpha):
    """((1 - alpha) * sum_pool_2x2(grad), alpha * grad), both in grad's layout."""
    grad_layout = check_2x2(grad, "grad")
    n, c, h, w = grad.shape
    fmt = torch.contiguous_format if grad_layout == "nchw" else torch.channels_last
    grad_low = torch.empty((n, c, h // 2, w // 2), dtype=grad.dtype, device=grad.device, memory_format=fmt)
    grad_high = torch.empty_like(grad)
    if grad.numel() > 0:
        launch_2x2(_fade_in_backward, grad, grad_layout, (grad, grad_low, grad_high), alpha)
    return grad_low, grad_high


KERNEL_SPECS = [
    spec_2x2("fade_in", _fade_in_kernel, ("low_ptr", "high_ptr", "out_ptr")),
    spec_2x2("fade_in_backward", _fade_in_backward_kernel, ("grad_ptr", "grad_low_ptr", "grad_high_ptr")),
]
