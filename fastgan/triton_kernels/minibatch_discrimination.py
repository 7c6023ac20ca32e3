"""Minibatch discrimination (SPEC 2) on the projection M [N, B, C], and its backward.

    o[i, b]     = sum_{j != i} exp(-D[i, j, b]),   D[i, j, b] = sum_c |M[i, b, c] - M[j, b, c]|
    dM[i, b, c] = -sum_{j != i} (g[i, b] + g[j, b]) exp(-D[i, j, b]) sign(M[i, b, c] - M[j, b, c])

A program owns BLOCK_I rows i and BLOCK_B kernels b and loops over blocks of
BLOCK_J rows j, forming the [BLOCK_I, BLOCK_J, BLOCK_B] distances in registers,
one coordinate c at a time (C is a compile-time constant: the loop unrolls):
nothing of size N x N reaches memory, and no tile carries a C axis except the
backward's [BLOCK_I, BLOCK_B, BLOCK_C] accumulator (BLOCK_C = C rounded up to a
power of two). The self term j == i is masked out. Float32 accumulation (float64
for float64 M).
"""

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, autotune, compute_dtype, device_guard

# Tiles of BLOCK_I x BLOCK_J x BLOCK_B pairs and kernels, 1024 each: 8 values a thread.
CONFIGS = [
    triton.Config({"BLOCK_I": 16, "BLOCK_J": 16, "BLOCK_B": 4}, num_warps=4),
    triton.Config({"BLOCK_I": 32, "BLOCK_J": 16, "BLOCK_B": 2}, num_warps=4),
    triton.Config({"BLOCK_I": 16, "BLOCK_J": 32, "BLOCK_B": 2}, num_warps=4),
    triton.Config({"BLOCK_I": 32, "BLOCK_J": 32, "BLOCK_B": 1}, num_warps=4),
]
_INTERPRETER_CONFIG = triton.Config({"BLOCK_I": 4, "BLOCK_J": 4, "BLOCK_B": 2})


@triton.jit
def _program_rows(N, BLOCK_I: tl.constexpr, BLOCK_B: tl.constexpr):
    """Rows i and kernels b of program i_block + (N / BLOCK_I) * b_block: one grid axis, as the
    others allow only 65535 programs (B / BLOCK_B would cap B at 65535 kernels)."""
    pid = tl.program_id(0)
    i_blocks = tl.cdiv(N, BLOCK_I)
    return (pid % i_blocks) * BLOCK_I + tl.arange(0, BLOCK_I), (pid // i_blocks) * BLOCK_B + tl.arange(0, BLOCK_B)


@triton.jit
def _column(m_ptr, rows, b, c, N, B, C: tl.constexpr):
    """M[rows, b, c] of one coordinate c as a [BLOCK_R, BLOCK_B] tile in the compute dtype, zero outside."""
    offs = (rows[:, None].to(tl.int64) * B + b[None, :]) * C + c
    mask = (rows[:, None] < N) & (b[None, :] < B)
    return tl.load(m_ptr + offs, mask=mask, other=0.0).to(compute_dtype(m_ptr.dtype.element_ty))


@triton.jit
def _difference(m_ptr, i, j, b, c, N, B, C: tl.constexpr):
    """M[i, b, c] - M[j, b, c] as [BLOCK_I, BLOCK_J, BLOCK_B]."""
    return _column(m_ptr, i, b, c, N, B, C)[:, None, :] - _column(m_ptr, j, b, c, N, B, C)[None, :, :]


@triton.jit
def _pair_terms(m_ptr, i, j0, b, N, B, C: tl.constexpr, BLOCK_J: tl.constexpr):
    """For the rows j0 .. j0 + BLOCK_J: exp(-D) [BLOCK_I, BLOCK_J, BLOCK_B] with the pairs that do
    not count (j >= N, j == i) zeroed, and the rows j."""
    j = j0 + tl.arange(0, BLOCK_J)
    d = tl.abs(_difference(m_ptr, i, j, b, 0, N, B, C))
    for c in tl.static_range(1, C):
        d += tl.abs(_difference(m_ptr, i, j, b, c, N, B, C))
    keep = (j[None, :] < N) & (j[None, :] != i[:, None])
    return tl.where(keep[:, :, None], tl.exp(-d), 0.0), j


@triton.jit
def _features_kernel(m_ptr, o_ptr, N, B, C: tl.constexpr,
                     BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr, INCLUDE_SELF: tl.constexpr):
    i, b = _program_rows(N, BLOCK_I, BLOCK_B)
    acc = tl.zeros([BLOCK_I, BLOCK_B], dtype=compute_dtype(m_ptr.dtype.element_ty))
    for j0 in range(0, N, BLOCK_J):
        e, _ = _pair_terms(m_ptr, i, j0, b, N, B, C, BLOCK_J)
        acc += tl.sum(e, axis=1)
    if INCLUDE_SELF:
        acc += 1.0  # the j == i term, exp(0), exactly
    offs = i[:, None].to(tl.int64) * B + b[None, :]
    tl.store(o_ptr + offs, acc.to(o_ptr.dtype.element_ty), mask=(i[:, None] < N) & (b[None, :] < B))


@triton.jit
def _features_backward_kernel(g_ptr, m_ptr, dm_ptr, N, B, C: tl.constexpr, BLOCK_C: tl.constexpr,
                              BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr):
    i, b = _program_rows(N, BLOCK_I, BLOCK_B)
    acc_t: tl.constexpr = compute_dtype(m_ptr.dtype.element_ty)
    gi = _column(g_ptr, i, b, 0, N, B, 1)[:, None, :]
    lane = tl.arange(0, BLOCK_C)[None, None, :]
    acc = tl.zeros([BLOCK_I, BLOCK_B, BLOCK_C], dtype=acc_t)  # acc[:, :, c] = -dM[i, b, c]
    for j0 in range(0, N, BLOCK_J):
        e, j = _pair_terms(m_ptr, i, j0, b, N, B, C, BLOCK_J)
        w = (gi + _column(g_ptr, j, b, 0, N, B, 1)[None, :, :]) * e
        for c in tl.static_range(C):
            diff = _difference(m_ptr, i, j, b, c, N, B, C)
            sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)).to(acc_t)  # sign(0) = 0
            acc += tl.where(lane == c, tl.sum(w * sign, axis=1)[:, :, None], 0.0)
    r = i[:, None, None]
    offs = (r.to(tl.int64) * B + b[None, :, None]) * C + lane
    mask = (r < N) & (b[None, :, None] < B) & (lane < C)
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
        kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_I"]) * triton.cdiv(b, meta["BLOCK_B"]),)](
            *tensors, n, b, C=c, **constexprs)


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
        _launch(_features_backward, M, (grad, M, dm), BLOCK_C=triton.next_power_of_2(M.shape[2]))
    return dm


_BLOCKS = {"BLOCK_I": "constexpr", "BLOCK_J": "constexpr", "BLOCK_B": "constexpr"}
_C5 = {"C": 5}  # the paper's kernel dimension

KERNEL_SPECS = [
    KernelSpec("minibatch_discrimination", _features_kernel,
               {"m_ptr": "*{dtype}", "o_ptr": "*{dtype}", "N": "i32", "B": "i32", "C": "constexpr", **_BLOCKS,
                "INCLUDE_SELF": "constexpr"},
               (("c5", {**_C5, "INCLUDE_SELF": False}, CONFIGS),
                ("c5_include_self", {**_C5, "INCLUDE_SELF": True}, CONFIGS))),
    KernelSpec("minibatch_discrimination_backward", _features_backward_kernel,
               {"g_ptr": "*{dtype}", "m_ptr": "*{dtype}", "dm_ptr": "*{dtype}", "N": "i32", "B": "i32",
                "C": "constexpr", "BLOCK_C": "constexpr", **_BLOCKS},
               (("c5", {**_C5, "BLOCK_C": 8}, CONFIGS),)),
]
