"""Virtual batch normalization (SPEC 10) with its fused activation, and its backward: vbn_forward and
vbn_backward with the signatures and semantics of the cpu kernels (csrc/schemas.h).

z [N, C, H, W] holds the reference batch R (its first m = ref_size samples), then the current ones.
Forward, three launches, no host sync:
  1. per (sample, channel): count, shift, mean of z - shift and M2, Chan merges tile by tile
     (batch_stats's kernel of conv_transpose_bn_relu.py, one partial per sample: in NCHW each row is
     one (sample, channel); channels-last chunks of S = H * W pixel rows are one sample each);
  2. _combine_kernel: R's merged statistics, and each current sample's union with R (Chan's formula
     for groups of equal count), as mean / invstd [N, C];
  3. _normalize_kernel: y = act((z - mean) * gamma * invstd + beta).
Backward (formulas in fastgan/ops/virtual_batch_norm.py), three launches:
  1. _sums_kernel: per (sample, channel) sg = sum g, sgx = sum g * xhat (g = grad_y * act');
  2. _coefficients_kernel: coef [3, N, C] of grad_z = coef0 * g - coef1 - coef2 * (z - mean), and
     grad_gamma = sum sgx, grad_beta = sum sg (fixed order: deterministic, no atomics);
  3. _grad_kernel: grad_z.

Tensors are seen as [R, K] rows as in conv_transpose_bn_relu.py: NCHW R = N * C rows of K = S pixels,
channels-last R = N * S pixel rows of K = C channels.
"""

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, check_like, device_guard, fp64_scalar
from .conv_transpose_bn_relu import (_AFFINE, _affine, _LAYOUT_FLAG, _ROW_BLOCKS, FINALIZE_CONFIG,
                                     _acc_dtype, _batch_stats, _check_vectors, _chunk_grid, _FINALIZE_LAUNCH,
                                     _row_grid, _row_variants, _rows, _rows_autotuned, _rsqrt, _signature)


@triton.jit
def _act(u, slope):
    """u > 0 ? u : slope * u; slope 0 is ReLU exactly (0, not -0 or inf * 0); NaN stays NaN."""
    return tl.where((u > 0.0) | (u != u), u, tl.where(slope != 0.0, u * slope, 0.0))


@triton.jit
def _act_grad(g, u, slope):
    """g * act'(u): slope 0 gives a true 0 where u <= 0, as ReLU's backward."""
    return tl.where(u > 0.0, g, tl.where(slope != 0.0, g * slope, 0.0))


@triton.jit
def _g_and_gxhat(z_ptr, g_ptr, offs, mask, mean, invstd, gamma, beta, slope):
    """The backward sums' terms at a tile, in the statistics' dtype: g = grad_y * act'(u) and g * xhat
    (0 where masked)."""
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(mean.dtype)
    xhat = (z - mean) * invstd
    g = _act_grad(tl.load(g_ptr + offs, mask=mask, other=0.0).to(mean.dtype), xhat * gamma + beta, slope)
    g = tl.where(mask, g, 0.0)
    return g, g * xhat


@triton.jit
def _vbn_tile(R, K, C, S, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Offsets and mask of this program's [BLOCK_R, BLOCK_K] tile, its channels and the index of each
    element's (sample, channel) statistics in [N, C] (both broadcastable to the tile). Rows and
    statistics in int32 (R and N * C are int32): 64-bit divisions are subroutine calls that spilled in
    float64; offsets in int64."""
    pid = tl.program_id(0)
    r_blocks = tl.cdiv(R, BLOCK_R)
    r32 = (pid % r_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = (pid // r_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs = r32.to(tl.int64)[:, None] * K + k[None, :]
    mask = (r32 < R)[:, None] & (k < K)[None, :]
    if CHANNELS_LAST:
        c = k[None, :]
        stat = (r32 // S)[:, None] * C + c
    else:
        c = (r32 % C)[:, None]
        stat = r32[:, None]
    return offs, mask, c, stat


@triton.jit
def _stat_count(R, K, S, CHANNELS_LAST: tl.constexpr):
    """N * C, the (sample, channel) pairs (R * K / S could overflow int32)."""
    if CHANNELS_LAST:
        nc = (R // S) * K
    else:
        nc = R
    return nc


@triton.jit
def _combine_kernel(part_ptr, mean_ptr, invstd_ptr, N, C, S, m, eps: "fp64",
                    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """part [N, 4, C] (count, shift, mean of z - shift, M2) per sample -> mean, invstd [N, C]. One
    shift per channel (z[0, c, 0, 0]) for every sample, so the means are merged relative to it."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    shift = tl.load(part_ptr + C + c, mask=c_ok, other=0.0)
    inv_s = 1.0 / tl.cast(S, acc_t)
    mf = tl.cast(m, acc_t)
    a = 1.0 / (mf + 1.0)
    total = tl.zeros([BLOCK_C], dtype=acc_t)
    for t0 in range(0, m, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        mask = (tt < m)[:, None] & c_ok[None, :]
        offs = tt[:, None].to(tl.int64) * 4 * C + c[None, :]
        total += tl.sum(tl.load(part_ptr + offs + 2 * C, mask=mask, other=0.0), axis=0)
    mean_r = total / mf
    # Chan for m groups of S values: var_R = (sum_j M2_j / S + sum_j (mean_j - mean_R)^2) / m.
    spread = tl.zeros([BLOCK_C], dtype=acc_t)
    for t0 in range(0, m, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        mask = (tt < m)[:, None] & c_ok[None, :]
        offs = tt[:, None].to(tl.int64) * 4 * C + c[None, :]
        d = tl.where(mask, tl.load(part_ptr + offs + 2 * C, mask=mask, other=0.0) - mean_r[None, :], 0.0)
        spread += tl.sum(tl.load(part_ptr + offs + 3 * C, mask=mask, other=0.0) * inv_s + d * d, axis=0)
    var_r = spread / mf
    e = tl.cast(eps, acc_t)
    invstd_r = _rsqrt(var_r + e)
    for t0 in range(0, N, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        mask = (tt < N)[:, None] & c_ok[None, :]
        offs = tt[:, None].to(tl.int64) * 4 * C + c[None, :]
        mu = tl.load(part_ptr + offs + 2 * C, mask=mask, other=0.0)
        m2 = tl.load(part_ptr + offs + 3 * C, mask=mask, other=0.0)
        dm = mu - mean_r[None, :]
        var = a * m2 * inv_s + (1.0 - a) * var_r[None, :] + a * (1.0 - a) * dm * dm
        current = (tt >= m)[:, None]
        mean = tl.where(current, a * mu + (1.0 - a) * mean_r[None, :], mean_r[None, :]) + shift[None, :]
        invstd = tl.where(current, _rsqrt(var + e), invstd_r[None, :])
        out = tt[:, None].to(tl.int64) * C + c[None, :]
        tl.store(mean_ptr + out, mean, mask=mask)
        tl.store(invstd_ptr + out, invstd, mask=mask)


@triton.jit
def _normalize_kernel(z_ptr, y_ptr, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, R, K, C, S,
                      negative_slope: "fp64", AFFINE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """y = act((z - mean) * gamma * invstd + beta), each element with its sample's statistics."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    offs, mask, c, stat = _vbn_tile(R, K, C, S, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    mean = tl.load(mean_ptr + stat, mask=mask, other=0.0)
    invstd = tl.load(invstd_ptr + stat, mask=mask, other=0.0)
    gamma, beta = _affine(gamma_ptr, beta_ptr, c, c < C, invstd, AFFINE)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(acc_t)
    y = _act((z - mean) * (gamma * invstd) + beta, negative_slope.to(acc_t))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sums_kernel(g_ptr, z_ptr, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, sums_ptr, R, K, C, S,
                 negative_slope: "fp64", AFFINE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """sums [2, N, C]: sg = sum g, sgx = sum g * xhat per (sample, channel), g = grad_y * act'(u).
    Channels-last: program (n, j) walks sample n's S pixel rows for channels j * BLOCK_K + ...
    NCHW: program i walks whole rows i * BLOCK_R + ... (row n * C + c is one (sample, channel))."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    slope = negative_slope.to(acc_t)
    nc = _stat_count(R, K, S, CHANNELS_LAST)
    if CHANNELS_LAST:
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = k < K
        stat = tl.program_id(0).to(tl.int64) * C + k
        mean = tl.load(mean_ptr + stat, mask=k_ok, other=0.0)[None, :]
        invstd = tl.load(invstd_ptr + stat, mask=k_ok, other=0.0)[None, :]
        gamma, beta = _affine(gamma_ptr, beta_ptr, k[None, :], k_ok[None, :], invstd, AFFINE)
        s1 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_t)
        s2 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_t)
        # The sample's base once, int32 offsets inside it (S * C < 2**31, checked by the host): 64-bit
        # offsets in the loop spilled registers in float64 on sm_80.
        base = tl.program_id(0).to(tl.int64) * S * K
        g_ptr += base
        z_ptr += base
        for p0 in range(0, S, BLOCK_R):
            p = p0 + tl.arange(0, BLOCK_R)
            mask = (p < S)[:, None] & k_ok[None, :]
            offs = p[:, None] * K + k[None, :]
            g, gx = _g_and_gxhat(z_ptr, g_ptr, offs, mask, mean, invstd, gamma, beta, slope)
            s1 += g
            s2 += gx
        tl.store(sums_ptr + stat, tl.sum(s1, axis=0), mask=k_ok)
        tl.store(sums_ptr + nc + stat, tl.sum(s2, axis=0), mask=k_ok)
    else:
        r32 = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # int32: see _vbn_tile
        r = r32.to(tl.int64)
        r_ok = r32 < R
        mean = tl.load(mean_ptr + r, mask=r_ok, other=0.0)[:, None]
        invstd = tl.load(invstd_ptr + r, mask=r_ok, other=0.0)[:, None]
        gamma, beta = _affine(gamma_ptr, beta_ptr, (r32 % C)[:, None], r_ok[:, None], invstd, AFFINE)
        s1 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_t)
        s2 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_t)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mask = r_ok[:, None] & (k < K)[None, :]
            offs = r[:, None] * K + k[None, :]
            g, gx = _g_and_gxhat(z_ptr, g_ptr, offs, mask, mean, invstd, gamma, beta, slope)
            s1 += g
            s2 += gx
        tl.store(sums_ptr + r, tl.sum(s1, axis=1), mask=r_ok)
        tl.store(sums_ptr + nc + r, tl.sum(s2, axis=1), mask=r_ok)


@triton.jit
def _coefficients_kernel(sums_ptr, mean_ptr, invstd_ptr, gamma_ptr, coef_ptr, grad_gamma_ptr, grad_beta_ptr,
                         N, C, S, m, AFFINE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """coef [3, N, C] of grad_z = coef0 * g - coef1 - coef2 * (z - mean) from sums [2, N, C]:
    current i: (gamma invstd_i, a / S gamma invstd_i sg_i, a / S gamma invstd_i^2 sgx_i);
    R's samples: (gamma invstd_R, k1, k2), k1 / k2 adding what reaches R through every current
    sample's union statistics (fastgan/ops/virtual_batch_norm.py)."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    nc = N * C
    if AFFINE:
        ga = tl.load(gamma_ptr + c, mask=c_ok, other=0.0)
    else:
        ga = tl.full([BLOCK_C], 1.0, acc_t)
    mean_r = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    inv_r = tl.load(invstd_ptr + c, mask=c_ok, other=0.0)
    mf = tl.cast(m, acc_t)
    sf = tl.cast(S, acc_t)
    a = 1.0 / (mf + 1.0)
    w_i = a / sf
    sg_r = tl.zeros([BLOCK_C], dtype=acc_t)
    sgx_r = tl.zeros([BLOCK_C], dtype=acc_t)
    p = tl.zeros([BLOCK_C], dtype=acc_t)
    q = tl.zeros([BLOCK_C], dtype=acc_t)
    tg = tl.zeros([BLOCK_C], dtype=acc_t)
    tb = tl.zeros([BLOCK_C], dtype=acc_t)
    for t0 in range(0, N, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        mask = (tt < N)[:, None] & c_ok[None, :]
        offs = tt[:, None].to(tl.int64) * C + c[None, :]
        sg = tl.load(sums_ptr + offs, mask=mask, other=0.0)
        sgx = tl.load(sums_ptr + nc + offs, mask=mask, other=0.0)
        is_ = tl.load(invstd_ptr + offs, mask=mask, other=0.0)
        mu = tl.load(mean_ptr + offs, mask=mask, other=0.0)
        ref = (tt < m)[:, None]
        sg_r += tl.sum(tl.where(ref, sg, 0.0), axis=0)
        sgx_r += tl.sum(tl.where(ref, sgx, 0.0), axis=0)
        cur = tl.where(ref, 0.0, 1.0)
        # Through sample i's union statistics into R's samples: the mean (p) and variance (q) terms.
        p += tl.sum(cur * is_ * (sg + is_ * sgx * (mean_r[None, :] - mu)), axis=0)
        q += tl.sum(cur * is_ * is_ * sgx, axis=0)
        tg += tl.sum(cur * sgx, axis=0)
        tb += tl.sum(cur * sg, axis=0)
        ci = ga[None, :] * is_
        cur_mask = mask & (tt >= m)[:, None]
        tl.store(coef_ptr + offs, ci, mask=cur_mask)
        tl.store(coef_ptr + nc + offs, w_i * ci * sg, mask=cur_mask)
        tl.store(coef_ptr + 2 * nc + offs, w_i * ci * is_ * sgx, mask=cur_mask)
    w_r = 1.0 / (mf * sf)
    k1 = w_r * ga * (inv_r * sg_r + (1.0 - a) * p)
    k2 = w_r * ga * (inv_r * inv_r * sgx_r + (1.0 - a) * q)
    for t0 in range(0, m, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        mask = (tt < m)[:, None] & c_ok[None, :]
        offs = tt[:, None].to(tl.int64) * C + c[None, :]
        zero = tl.zeros([BLOCK_T, BLOCK_C], dtype=acc_t)
        tl.store(coef_ptr + offs, zero + (ga * inv_r)[None, :], mask=mask)
        tl.store(coef_ptr + nc + offs, zero + k1[None, :], mask=mask)
        tl.store(coef_ptr + 2 * nc + offs, zero + k2[None, :], mask=mask)
    tl.store(grad_gamma_ptr + c, tg + sgx_r, mask=c_ok)
    tl.store(grad_beta_ptr + c, tb + sg_r, mask=c_ok)


@triton.jit
def _grad_kernel(g_ptr, z_ptr, out_ptr, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, coef_ptr, R, K, C, S,
                 negative_slope: "fp64", AFFINE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """grad_z = coef0 * g - coef1 - coef2 * (z - mean), g = grad_y * act'(u) recomputed."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    offs, mask, c, stat = _vbn_tile(R, K, C, S, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    nc = _stat_count(R, K, S, CHANNELS_LAST)
    mean = tl.load(mean_ptr + stat, mask=mask, other=0.0)
    invstd = tl.load(invstd_ptr + stat, mask=mask, other=0.0)
    gamma, beta = _affine(gamma_ptr, beta_ptr, c, c < C, invstd, AFFINE)
    e = tl.load(z_ptr + offs, mask=mask, other=0.0).to(acc_t) - mean
    g = _act_grad(tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_t), e * invstd * gamma + beta,
                  negative_slope.to(acc_t))
    c0 = tl.load(coef_ptr + stat, mask=mask, other=0.0)
    c1 = tl.load(coef_ptr + nc + stat, mask=mask, other=0.0)
    c2 = tl.load(coef_ptr + 2 * nc + stat, mask=mask, other=0.0)
    tl.store(out_ptr + offs, (c0 * g - c1 - c2 * e).to(out_ptr.dtype.element_ty), mask=mask)


_normalize = _rows_autotuned(_normalize_kernel)
_sums = _rows_autotuned(_sums_kernel)
_grad = _rows_autotuned(_grad_kernel)


def _check(z, ref_size, gamma, beta):
    """(layout, R, K, C, S, affine, gamma, beta): gamma / beta both given, or both None (AFFINE off); one
    alone gets the other's identity (1 or 0), which the modules never pass."""
    zl, r, k, c = _rows(z)
    if not z.is_floating_point():
        raise ValueError(f"fastgan triton: z must be a floating-point tensor, got {z.dtype}")
    if z.shape[1] * z.shape[2] * z.shape[3] >= 2**31:
        raise ValueError(f"fastgan triton: z must have fewer than 2**31 elements a sample, got shape {tuple(z.shape)}")
    if isinstance(ref_size, bool) or not 1 <= ref_size <= z.shape[0]:
        raise ValueError(f"fastgan triton: ref_size must be in 1..N = {z.shape[0]}, got {ref_size}")
    # Strided vectors made contiguous, as the cpu kernels do.
    gamma, beta = (None if v is None else v.contiguous() for v in (gamma, beta))
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v is not None:
            _check_vectors(z, **{name: v})
    if (gamma is None) != (beta is None):
        like = beta if gamma is None else gamma
        gamma = torch.ones_like(like) if gamma is None else gamma
        beta = torch.zeros_like(like) if beta is None else beta
    return zl, r, k, c, z.shape[2] * z.shape[3], gamma is not None, gamma, beta


def vbn_forward(z, ref_size, gamma, beta, eps, negative_slope):
    """(y in z's layout, mean [N, C], invstd [N, C]): y = act(virtual_batch_norm(z)), act(u) = u > 0 ? u :
    negative_slope * u; mean / invstd in float32 (float64 for float64 z), what each sample was normalized with."""
    zl, r, k, c, s, affine, gamma, beta = _check(z, ref_size, gamma, beta)
    n = z.shape[0]
    acc = _acc_dtype(z)
    y = torch.empty_like(z)
    mean = torch.empty((n, c), dtype=acc, device=z.device)
    invstd = torch.empty((n, c), dtype=acc, device=z.device)
    if z.numel() == 0:
        return y, mean, invstd
    part = torch.empty((n, 4, c), dtype=acc, device=z.device)
    if zl == "channels_last":
        stats_grid = _chunk_grid(n, k, "z")  # one chunk of S pixel rows per sample
    else:
        def stats_grid(meta):
            return (triton.cdiv(r, meta["BLOCK_R"]),)
    vectors = (gamma, beta) if affine else (mean, mean)  # not read without AFFINE
    flag = _LAYOUT_FLAG[zl]
    with device_guard(z):
        _batch_stats[zl][stats_grid](z, part, r, k, c, s, CHANNELS_LAST=flag)
        _combine_kernel[(triton.cdiv(c, _FINALIZE_LAUNCH.kwargs["BLOCK_C"]),)](
            part, mean, invstd, n, c, s, ref_size, fp64_scalar(eps), **_FINALIZE_LAUNCH.kwargs,
            num_warps=_FINALIZE_LAUNCH.num_warps)
        _normalize[zl][_row_grid(r, k)](z, y, mean, invstd, *vectors, r, k, c, s, fp64_scalar(negative_slope),
                                       AFFINE=affine, CHANNELS_LAST=flag)
    return y, mean, invstd


def vbn_backward(grad_y, z, mean, invstd, ref_size, gamma, beta, negative_slope):
    """(grad_z in z's layout, grad_gamma [C], grad_beta [C]) of vbn_forward's y, given its mean / invstd."""
    zl, r, k, c, s, affine, gamma, beta = _check(z, ref_size, gamma, beta)
    if grad_y.shape != z.shape:
        raise ValueError(f"fastgan triton: grad_y has shape {tuple(grad_y.shape)}, z {tuple(z.shape)}")
    # grad_y may come in either layout (csrc/schemas.h): brought to z's.
    grad_y = grad_y.contiguous(memory_format=torch.contiguous_format if zl == "nchw" else torch.channels_last)
    check_like(grad_y, "grad_y", z, zl)
    n = z.shape[0]
    acc = _acc_dtype(z)
    for name, v in (("mean", mean), ("invstd", invstd)):
        if v.shape != (n, c) or v.dtype != acc or v.device != z.device or not v.is_contiguous():
            raise ValueError(f"fastgan triton: {name} must be a contiguous {acc} [N, C] = [{n}, {c}] tensor on "
                             f"{z.device}, got {v.dtype} of shape {tuple(v.shape)} on {v.device}")
    grad_z = torch.empty_like(z)
    if z.numel() == 0:
        return grad_z, torch.zeros(c, dtype=acc, device=z.device), torch.zeros(c, dtype=acc, device=z.device)
    # Written whole by the coefficients kernel: no fill launches.
    grad_gamma = torch.empty(c, dtype=acc, device=z.device)
    grad_beta = torch.empty(c, dtype=acc, device=z.device)
    sums = torch.empty((2, n, c), dtype=acc, device=z.device)
    coef = torch.empty((3, n, c), dtype=acc, device=z.device)
    if zl == "channels_last":
        sums_grid = _chunk_grid(n, k, "z")
    else:
        def sums_grid(meta):
            return (triton.cdiv(r, meta["BLOCK_R"]),)
    vectors = (gamma, beta) if affine else (mean, mean)
    flag = _LAYOUT_FLAG[zl]
    slope = fp64_scalar(negative_slope)
    with device_guard(z):
        _sums[zl][sums_grid](grad_y, z, mean, invstd, *vectors, sums, r, k, c, s, slope, AFFINE=affine,
                             CHANNELS_LAST=flag)
        _coefficients_kernel[(triton.cdiv(c, _FINALIZE_LAUNCH.kwargs["BLOCK_C"]),)](
            sums, mean, invstd, vectors[0], coef, grad_gamma, grad_beta, n, c, s, ref_size, AFFINE=affine,
            **_FINALIZE_LAUNCH.kwargs, num_warps=_FINALIZE_LAUNCH.num_warps)
        _grad[zl][_row_grid(r, k)](grad_y, z, grad_z, mean, invstd, *vectors, coef, r, k, c, s, slope,
                                   AFFINE=affine, CHANNELS_LAST=flag)
    return grad_z, grad_gamma, grad_beta


# ---------------------------------------------------------------------------
# Ahead-of-time compile specs.

_ROW_INTS = ("R", "K", "C", "S")
_FINALIZE_BLOCKS = ("BLOCK_T", "BLOCK_C")

KERNEL_SPECS = [
    KernelSpec("vbn_combine", _combine_kernel,
               _signature((), ("N", "C", "S", "m"), vector_pointers=("part_ptr", "mean_ptr", "invstd_ptr"),
                          floats=("eps",), constexprs=_FINALIZE_BLOCKS),
               (("default", {}, [FINALIZE_CONFIG]),)),
    KernelSpec("vbn_normalize", _normalize_kernel,
               _signature(("z_ptr", "y_ptr"), _ROW_INTS,
                          vector_pointers=("mean_ptr", "invstd_ptr", "gamma_ptr", "beta_ptr"),
                          floats=("negative_slope",), constexprs=("AFFINE", "CHANNELS_LAST") + _ROW_BLOCKS),
               _row_variants(_AFFINE)),
    KernelSpec("vbn_backward_sums", _sums_kernel,
               _signature(("g_ptr", "z_ptr"), _ROW_INTS,
                          vector_pointers=("mean_ptr", "invstd_ptr", "gamma_ptr", "beta_ptr", "sums_ptr"),
                          floats=("negative_slope",), constexprs=("AFFINE", "CHANNELS_LAST") + _ROW_BLOCKS),
               _row_variants(_AFFINE)),
    KernelSpec("vbn_backward_coefficients", _coefficients_kernel,
               _signature((), ("N", "C", "S", "m"),
                          vector_pointers=("sums_ptr", "mean_ptr", "invstd_ptr", "gamma_ptr", "coef_ptr",
                                           "grad_gamma_ptr", "grad_beta_ptr"),
                          constexprs=("AFFINE",) + _FINALIZE_BLOCKS),
               tuple((f"AFFINE={a['AFFINE']}", a, [FINALIZE_CONFIG]) for a in _AFFINE)),
    KernelSpec("vbn_backward_grad", _grad_kernel,
               _signature(("g_ptr", "z_ptr", "out_ptr"), _ROW_INTS,
                          vector_pointers=("mean_ptr", "invstd_ptr", "gamma_ptr", "beta_ptr", "coef_ptr"),
                          floats=("negative_slope",), constexprs=("AFFINE", "CHANNELS_LAST") + _ROW_BLOCKS),
               _row_variants(_AFFINE)),
]
