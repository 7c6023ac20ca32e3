"""Minibatch discrimination (SPEC 2) on the projection M [N, B, C], and its backward.

    o[i, b]     = sum_{j != i} exp(-D[i, j, b]),   D[i, j, b] = sum_c |M[i, b, c] - M[j, b, c]|
    dM[i, b, c] = -sum_{j != i} (g[i, b] + g[j, b]) exp(-D[i, j, b]) sign(M[i, b, c] - M[j, b, c])

A program owns BLOCK_I rows i and BLOCK_B kernels b, holds their M values in
registers as a [BLOCK_I, 1, BLOCK_B, BLOCK_C] tile (all of C: BLOCK_C is C rounded
up to a power of two, the padding lanes zero on both sides of every difference),
and loops over blocks of BLOCK_J rows j, forming the [BLOCK_I, BLOCK_J, BLOCK_B]
distances in registers: nothing of size N x N reaches memory. The self term
j == i is masked out. Float32 accumulation (float64 for float64 M).
"""

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, autotune, compute_dtype, device_guard

# Tiles of BLOCK_I x BLOCK_J x BLOCK_B pairs and kernels, 1024 each (8 per thread),
# times BLOCK_C = 8 for the paper's C = 5.
CONFIGS = [
    triton.Config({"BLOCK_I": 16, "BLOCK_J": 16, "BLOCK_B": 4}, num_warps=4),
    triton.Config({"BLOCK_I": 32, "BLOCK_J": 16, "BLOCK_B": 2}, num_warps=4),
    triton.Config({"BLOCK_I": 16, "BLOCK_J": 32, "BLOCK_B": 2}, num_warps=4),
    triton.Config({"BLOCK_I": 8, "BLOCK_J": 16, "BLOCK_B": 8}, num_warps=4),
]
_INTERPRETER_CONFIG = triton.Config({"BLOCK_I": 4, "BLOCK_J": 4, "BLOCK_B": 2})


@triton.jit
def _tile(m_ptr, rows, b, c, N, B, C: tl.constexpr):
    """M[rows, b, c] as a [BLOCK_R, BLOCK_B, BLOCK_C] tile in the compute dtype, zero outside."""
    r = rows[:, None, None]
    offs = (r.to(tl.int64) * B + b[None, :, None]) * C + c[None, None, :]
    mask = (r < N) & (b[None, :, None] < B) & (c[None, None, :] < C)
    return tl.load(m_ptr + offs, mask=mask, other=0.0).to(compute_dtype(m_ptr.dtype.element_ty))


@triton.jit
def _pair_block(m_ptr, mi, i, j0, N, B, b, c, C: tl.constexpr, BLOCK_J: tl.constexpr):
    """For rows j0 .. j0 + BLOCK_J: the differences M_i - M_j [BLOCK_I, BLOCK_J, BLOCK_B, BLOCK_C],
    exp(-D) [BLOCK_I, BLOCK_J, BLOCK_B], and the mask of the pairs that count (j < N, j != i)."""
    j = j0 + tl.arange(0, BLOCK_J)
    diff = mi[:, None, :, :] - _tile(m_ptr, j, b, c, N, B, C)[None, :, :, :]
    e = tl.exp(-tl.sum(tl.abs(diff), axis=3))
    keep = (j[None, :] < N) & (j[None, :] != i[:, None])
    return diff, e, keep[:, :, None], j


@triton.jit
def _features_kernel(m_ptr, o_ptr, N, B, C: tl.constexpr, BLOCK_C: tl.constexpr,
                     BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr, INCLUDE_SELF: tl.constexpr):
    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    c = tl.arange(0, BLOCK_C)
    mi = _tile(m_ptr, i, b, c, N, B, C)
    acc = tl.zeros([BLOCK_I, BLOCK_B], dtype=mi.dtype)
    for j0 in range(0, N, BLOCK_J):
        _, e, keep, _ = _pair_block(m_ptr, mi, i, j0, N, B, b, c, C, BLOCK_J)
        acc += tl.sum(tl.where(keep, e, 0.0), axis=1)
    if INCLUDE_SELF:
        acc += 1.0  # the j == i term, exp(0), exactly
    offs = i[:, None].to(tl.int64) * B + b[None, :]
    tl.store(o_ptr + offs, acc.to(o_ptr.dtype.element_ty), mask=(i[:, None] < N) & (b[None, :] < B))


@triton.jit
def _features_backward_kernel(g_ptr, m_ptr, dm_ptr, N, B, C: tl.constexpr, BLOCK_C: tl.constexpr,
                              BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr):
    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    c = tl.arange(0, BLOCK_C)
    mi = _tile(m_ptr, i, b, c, N, B, C)
    acc_t: tl.constexpr = mi.dtype
    b_mask = b[None, :] < B
    gi = tl.load(g_ptr + i[:, None].to(tl.int64) * B + b[None, :], mask=(i[:, None] < N) & b_mask, other=0.0)
    gi = gi.to(acc_t)[:, None, :]
    acc = tl.zeros([BLOCK_I, BLOCK_B, BLOCK_C], dtype=acc_t)
    for j0 in range(0, N, BLOCK_J):
        diff, e, keep, j = _pair_block(m_ptr, mi, i, j0, N, B, b, c, C, BLOCK_J)
        gj = tl.load(g_ptr + j[:, None].to(tl.int64) * B + b[None, :], mask=(j[:, None] < N) & b_mask, other=0.0)
        w = tl.where(keep, (gi + gj.to(acc_t)[None, :, :]) * e, 0.0)
        sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)).to(acc_t)  # sign(0) = 0
        acc += tl.sum(w[:, :, :, None] * sign, axis=1)
    r = i[:, None, None]
    offs = (r.to(tl.int64) * B + b[None, :, None]) * C + c[None, None, :]
    mask = (r < N) & (b[None, :, None] < B) & (c[None, None, :] < C)
    tl.store(dm_ptr + offs, (-acc).to(dm_ptr.dtype.element_ty), mask=mask)


_features = autotune(CONFIGS, _INTERPRETER_CONFIG, key=["N", "B"])(_features_kernel)
_features_backward = autotune(CONFIGS, _INTERPRETER_CONFIG, key=["N", "B"])(_features_backward_kernel)


def _check_m(M):
    if M.dim() != 3 or not M.is_contiguous():
        raise ValueError(f"fastgan triton: M must be a contiguous [N, B, C] tensor, got shape {tuple(M.shape)} "
                         f"and strides {M.stride()}")


def _launch(kernel, M, tensors, **constexprs):
    n, b, c = M.shape
    with device_guard(M):
        kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_I"]), triton.cdiv(b, meta["BLOCK_B"]))](
            *tensors, n, b, C=c, BLOCK_C=triton.next_power_of_2(c), **constexprs)


def minibatch_discrimination(M, include_self):
    """o [N, B]: sum over j != i of exp(-L1 distance of M[i, b] and M[j, b]) (+ 1 with include_self)."""
    _check_m(M)
    o = torch.empty(M.shape[:2], dtype=M.dtype, device=M.device)
    if o.numel() > 0:
        _launch(_features, M, (M, o), INCLUDE_SELF=bool(include_self))
    return o


def minibatch_discrimination_backward(grad, M):
    """dM [N, B, C] from the gradient of o [N, B]."""
    _check_m(M)
    if tuple(grad.shape) != tuple(M.shape[:2]) or not grad.is_contiguous():
        raise ValueError(f"fastgan triton: grad must be a contiguous [N, B] = {list(M.shape[:2])} tensor, "
                         f"got shape {tuple(grad.shape)} and strides {grad.stride()}")
    if grad.dtype != M.dtype or grad.device != M.device:
        raise ValueError(f"fastgan triton: grad is {grad.dtype} on {grad.device}, expected {M.dtype} on {M.device}")
    dm = torch.empty_like(M)
    if dm.numel() > 0:
        _launch(_features_backward, M, (grad, M, dm))
    return dm


_SIGNATURE = {"N": "i32", "B": "i32", "C": "constexpr", "BLOCK_C": "constexpr",
              "BLOCK_I": "constexpr", "BLOCK_J": "constexpr", "BLOCK_B": "constexpr"}
_PAPER = {"C": 5, "BLOCK_C": 8}  # the paper's kernel dimension

KERNEL_SPECS = [
    KernelSpec("minibatch_discrimination", _features_kernel,
               {"m_ptr": "*{dtype}", "o_ptr": "*{dtype}", **_SIGNATURE, "INCLUDE_SELF": "constexpr"},
               (("c5", {**_PAPER, "INCLUDE_SELF": False}, CONFIGS),
                ("c5_include_self", {**_PAPER, "INCLUDE_SELF": True}, CONFIGS))),
    KernelSpec("minibatch_discrimination_backward", _features_backward_kernel,
               {"g_ptr": "*{dtype}", "m_ptr": "*{dtype}", "dm_ptr": "*{dtype}", **_SIGNATURE},
               (("c5", _PAPER, CONFIGS),)),
]
