"""Real-image blend (SPEC 6), one pass over memory:

    out = (1 - alpha) * upsample_nearest_2x(avg_pool_2x2(x)) + alpha * x

A program reads a tile of 2x2 blocks (`_common.block_2x2_offsets`) and writes
each element blended with its block's mean. The map is self-adjoint: this is
also its backward.
"""

import torch
import triton
import triton.language as tl

from ._common import autotune_2x2, block_2x2_offsets, check_2x2, compute_dtype, launch_2x2, spec_2x2


@triton.jit
def _blend_reals_kernel(x_ptr, out_ptr, R, X, K, alpha: "fp64",
                        BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_K: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    _, top, row, mask = block_2x2_offsets(R, X, K, BLOCK_R, BLOCK_X, BLOCK_K)
    x_top = tl.load(x_ptr + top, mask=mask).to(acc_t)
    x_bottom = tl.load(x_ptr + top + row, mask=mask).to(acc_t)
    # The block mean: [BLOCK_R, BLOCK_X, 1, BLOCK_K], broadcast over the column parity dx below.
    mean = tl.sum(x_top + x_bottom, axis=2, keep_dims=True) * 0.25
    up = tl.cast(1.0 - alpha, acc_t) * mean
    a = tl.cast(alpha, acc_t)
    tl.store(out_ptr + top, (up + a * x_top).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + top + row, (up + a * x_bottom).to(out_ptr.dtype.element_ty), mask=mask)


_blend_reals = autotune_2x2(_blend_reals_kernel)


def blend_reals(x, alpha):
    """(1 - alpha) * upsample_nearest_2x(avg_pool_2x2(x)) + alpha * x, in x's layout."""
    x_layout = check_2x2(x, "x")
    out = torch.empty_like(x)
    if out.numel() > 0:
        launch_2x2(_blend_reals, x, x_layout, (x, out), alpha)
    return out


KERNEL_SPECS = [spec_2x2("blend_reals", _blend_reals_kernel, ("x_ptr", "out_ptr"))]
