"""Minibatch standard deviation (SPEC 5) and its backward.

x [N, C, H, W] in groups of G strided samples (group m holds samples g * M + m) and F
channel groups of K = C/F * H * W values each. A program of the statistics kernels owns
BLOCK values k of channel group j in the G samples of group m: it reads them once for
the mean and again (from L1/L2) for the squared deviations (two-pass).

  forward:  `_stats` copies x into out and writes the sums of s over each CHUNK of values;
            `_fill` adds them up into f[m, j] and writes the F new channels.
  backward: `_grad_f` sums the gradient of the new channels per (m, j); `_backward`
            recomputes mean and s and writes grad_x = grad[:, :C] + A * d / (G * s).
  double backward: `_grad_f` (for d_x); `_double_backward` recomputes mean and s, copies gg into
            d_grad, writes d_x and the sums of u / (G * s) over each CHUNK; `_fill` writes t.

Value k of channel group j sits at e = j * K + k in an NCHW sample (out: the same) and, with
Cf = C/F, at pixel k // Cf, channel j * Cf + k % Cf in a channels-last one.
"""

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, KernelSpec, autotune, compute_dtype, device_guard, layout

EPS = tl.constexpr(1e-8)  # a constexpr: jitted code reads no other globals
# A thread holds 2 or 4 values of each loop-carried vector (8 spill registers in float32 on sm_80).
CONFIGS = [triton.Config({"BLOCK": 256}, num_warps=4), triton.Config({"BLOCK": 1024}, num_warps=8)]
_INTERPRETER_CONFIG = triton.Config({"BLOCK": 8})
# `_stats` writes one partial sum per CHUNK values, whatever its BLOCK: Triton's autotuner runs every
# config on the real buffers, and so each config writes every slot and none leaves stale sums behind
# for `_fill` (with one partial a program, a wide BLOCK left the narrow one's extra slots). CHUNK is
# the narrowest BLOCK that can run here: the interpreter's, or (GPU) the narrowest of CONFIGS.
_CHUNK = _INTERPRETER_CONFIG.kwargs["BLOCK"] if INTERPRET else min(c.kwargs["BLOCK"] for c in CONFIGS)
assert all(c.kwargs["BLOCK"] % _CHUNK == 0 for c in CONFIGS)
_FILL_BLOCK = 256  # pixels, or partial sums, a step of `_fill` and `_grad_f`
_LAYOUT_FLAG = {"nchw": False, "channels_last": True}


@triton.jit
def _value_offsets(k, j, C, F, HW, K, CHANNELS_LAST: tl.constexpr):
    """Offsets of values k of channel group j in an x sample and in an out sample."""
    if CHANNELS_LAST:
        cf = C // F
        pix = k // cf
        ch = j * cf + k % cf
        return pix * C + ch, pix * (C + F) + ch
    e = j * K + k
    return e, e


@triton.jit
def _new_channel_offsets(n, j, p, C, F, HW, CHANNELS_LAST: tl.constexpr):
    """Offsets of pixels p of out's channel C + j in sample n."""
    base = n.to(tl.int64) * (C + F) * HW
    if CHANNELS_LAST:
        return base + p * (C + F) + C + j
    return base + (C + j) * HW + p


@triton.jit
def _group_stats(x_ptr, m, e, mask, M, G, sample, acc_t: tl.constexpr):
    """Mean and s = sqrt(biased variance + eps) over the G samples of group m, two-pass."""
    total = tl.zeros(e.shape, dtype=acc_t)
    for gi in range(G):
        total += tl.load(x_ptr + (gi * M + m) * sample + e, mask=mask, other=0.0).to(acc_t)
    mean = total / G
    ss = tl.zeros(e.shape, dtype=acc_t)
    for gi in range(G):
        d = tl.load(x_ptr + (gi * M + m) * sample + e, mask=mask, other=0.0).to(acc_t) - mean
        ss += d * d
    return mean, tl.sqrt(ss / G + EPS)


@triton.jit
def _program_values(C, HW, F, K, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """This program's (m, j, block index), the offsets of its values in an x and an out sample,
    their mask, and the sizes of an x and an out sample."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(K, BLOCK)
    blk = pid % blocks
    mj = pid // blocks
    j = mj % F
    k = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    e, e_out = _value_offsets(k, j, C, F, HW, K, CHANNELS_LAST)
    return mj // F, j, blk, e, e_out, k < K, tl.cast(C, tl.int64) * HW, tl.cast(C + F, tl.int64) * HW


@triton.jit
def _stats_kernel(x_ptr, out_ptr, partial_ptr, C, HW, M, G, F, K, CHUNKS,
                  CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """Partial c of row (m, j) (of CHUNKS = cdiv(K, CHUNK)): the sum of s over values [c * CHUNK, (c + 1) * CHUNK)."""
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    m, j, blk, e, e_out, mask, sample, out_sample = _program_values(C, HW, F, K, CHANNELS_LAST, BLOCK)
    for gi in range(G):  # the copy of x into out (the statistics re-read these values from cache)
        n = gi * M + m
        v = tl.load(x_ptr + n * sample + e, mask=mask)
        tl.store(out_ptr + n * out_sample + e_out, v, mask=mask)
    _, s = _group_stats(x_ptr, m, e, mask, M, G, sample, acc_t)
    sums = tl.sum(tl.reshape(tl.where(mask, s, 0.0), (BLOCK // CHUNK, CHUNK)), axis=1)
    c = blk * (BLOCK // CHUNK) + tl.arange(0, BLOCK // CHUNK)
    tl.store(partial_ptr + (m * F + j) * CHUNKS + c, sums, mask=c < CHUNKS)


@triton.jit
def _fill_kernel(partial_ptr, out_ptr, C, HW, M, F, K, CHUNKS,
                 CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """Program (n, j): f[n mod M, j] = sum of its CHUNKS partials / K, written over the HW pixels."""
    acc_t: tl.constexpr = partial_ptr.dtype.element_ty
    pid = tl.program_id(0)
    n = pid // F
    j = pid % F
    m = n % M
    i = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], dtype=acc_t)
    for c0 in range(0, CHUNKS, BLOCK):
        total += tl.load(partial_ptr + (m * F + j) * CHUNKS + c0 + i, mask=c0 + i < CHUNKS, other=0.0)
    f = (tl.sum(total, axis=0) / K).to(out_ptr.dtype.element_ty)
    for p0 in range(0, HW, BLOCK):
        p = p0 + i
        offs = _new_channel_offsets(n, j, p, C, F, HW, CHANNELS_LAST)
        tl.store(out_ptr + offs, tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty) + f, mask=p < HW)


@triton.jit
def _grad_f_kernel(grad_ptr, a_ptr, C, HW, M, G, F, K,
                   CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """Program (m, j): a[m, j] = sum of grad's channel C + j over group m's samples and pixels / (K * G)."""
    acc_t: tl.constexpr = a_ptr.dtype.element_ty
    pid = tl.program_id(0)
    m = pid // F
    j = pid % F
    i = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], dtype=acc_t)
    for gi in range(G):
        for p0 in range(0, HW, BLOCK):
            p = p0 + i
            offs = _new_channel_offsets(gi * M + m, j, p, C, F, HW, CHANNELS_LAST)
            total += tl.load(grad_ptr + offs, mask=p < HW, other=0.0).to(acc_t)
    tl.store(a_ptr + pid, tl.sum(total, axis=0) / K / G)  # K * G in int32 can wrap (K < 2**31 alone)


@triton.jit
def _backward_kernel(grad_ptr, x_ptr, a_ptr, gx_ptr, C, HW, M, G, F, K,
                     CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    m, j, blk, e, e_out, mask, sample, out_sample = _program_values(C, HW, F, K, CHANNELS_LAST, BLOCK)
    mean, s = _group_stats(x_ptr, m, e, mask, M, G, sample, acc_t)
    coef = tl.load(a_ptr + m * F + j) / s
    for gi in range(G):
        n = gi * M + m
        x = tl.load(x_ptr + n * sample + e, mask=mask, other=0.0).to(acc_t)
        g = tl.load(grad_ptr + n * out_sample + e_out, mask=mask, other=0.0).to(acc_t)
        tl.store(gx_ptr + n * sample + e, (g + coef * (x - mean)).to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _double_backward_kernel(gg_ptr, x_ptr, a_ptr, dgrad_ptr, dx_ptr, partial_ptr, C, HW, M, G, F, K, CHUNKS,
                            NEED_GRAD: tl.constexpr, NEED_X: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                            BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """d_grad = [gg, t] (here: gg copied, and partial c of row (m, j) the sum of u / (G * s) over
    values [c * CHUNK, (c + 1) * CHUNK), as `_stats`'s) and d_x = A / (G * s) * (gg - mean_g(gg) -
    u * d / (G * s^2)), u = sum_g(gg * d)."""
    acc_t: tl.constexpr = compute_dtype(x_ptr.dtype.element_ty)
    m, j, blk, e, e_out, mask, sample, out_sample = _program_values(C, HW, F, K, CHANNELS_LAST, BLOCK)
    mean, s = _group_stats(x_ptr, m, e, mask, M, G, sample, acc_t)
    gsum = tl.zeros([BLOCK], dtype=acc_t)
    u = tl.zeros([BLOCK], dtype=acc_t)
    for gi in range(G):
        n = gi * M + m
        gv = tl.load(gg_ptr + n * sample + e, mask=mask, other=0.0)
        if NEED_GRAD:
            tl.store(dgrad_ptr + n * out_sample + e_out, gv, mask=mask)
        x = tl.load(x_ptr + n * sample + e, mask=mask, other=0.0).to(acc_t)
        if NEED_X:  # only d_x needs mean_g(gg)
            gsum += gv.to(acc_t)
        u += gv.to(acc_t) * (x - mean)
    t = u / G / s
    if NEED_GRAD:
        sums = tl.sum(tl.reshape(tl.where(mask, t, 0.0), (BLOCK // CHUNK, CHUNK)), axis=1)
        c = blk * (BLOCK // CHUNK) + tl.arange(0, BLOCK // CHUNK)
        tl.store(partial_ptr + (m * F + j) * CHUNKS + c, sums, mask=c < CHUNKS)
    if NEED_X:
        coef = tl.load(a_ptr + m * F + j) / s
        gmean = gsum / G
        w = t / s
        for gi in range(G):
            n = gi * M + m
            x = tl.load(x_ptr + n * sample + e, mask=mask, other=0.0).to(acc_t)
            gv = tl.load(gg_ptr + n * sample + e, mask=mask, other=0.0).to(acc_t)
            tl.store(dx_ptr + n * sample + e, (coef * (gv - gmean - w * (x - mean))).to(dx_ptr.dtype.element_ty),
                     mask=mask)


_stats = autotune(CONFIGS, _INTERPRETER_CONFIG, key=["C", "HW", "G", "F", "CHANNELS_LAST"])(_stats_kernel)
# 8 warps for the narrow block too: with 4 its float64 sm_80 build spilled 4 bytes (ptxas -v).
_DOUBLE_BACKWARD_CONFIGS = [triton.Config({"BLOCK": 256}, num_warps=8), CONFIGS[1]]
assert all(c.kwargs["BLOCK"] % _CHUNK == 0 for c in _DOUBLE_BACKWARD_CONFIGS)
_double_backward = autotune(_DOUBLE_BACKWARD_CONFIGS, _INTERPRETER_CONFIG,
                            key=["C", "HW", "G", "F", "NEED_GRAD", "NEED_X", "CHANNELS_LAST"])(_double_backward_kernel)
_backward = autotune(CONFIGS, _INTERPRETER_CONFIG, key=["C", "HW", "G", "F", "CHANNELS_LAST"])(_backward_kernel)


def _geometry(x, group_size, num_channels):
    if x.dim() != 4:
        raise ValueError(f"fastgan triton: x must be 4-D, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if group_size < 1 or n % group_size or num_channels < 1 or c % num_channels:
        raise ValueError(f"fastgan triton: group_size ({group_size}) must divide the batch ({n}) and "
                         f"num_channels ({num_channels}) the channels ({c})")
    if c == 0:
        raise ValueError(f"fastgan triton: x must have channels to take the deviation of, got {tuple(x.shape)}")
    if (c + num_channels) * h * w >= 2**31:  # _new_channel_offsets: int32 within a sample
        raise ValueError(f"fastgan triton: a sample of the output must have fewer than 2**31 values, got "
                         f"{c + num_channels} x {h} x {w}")
    fmt = layout(x, "x")
    return dict(C=c, HW=h * w, M=n // group_size, G=group_size, F=num_channels, K=c // num_channels * h * w), fmt


def _acc_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _program_grid(geo):
    return lambda meta: (geo["M"] * geo["F"] * triton.cdiv(geo["K"], meta["BLOCK"]),)


def minibatch_stddev(x, group_size, num_channels):
    """cat([x, f broadcast], dim 1), in x's layout."""
    geo, fmt = _geometry(x, group_size, num_channels)
    n, c, h, w = x.shape
    memory_format = torch.contiguous_format if fmt == "nchw" else torch.channels_last
    out = torch.empty((n, c + num_channels, h, w), dtype=x.dtype, device=x.device, memory_format=memory_format)
    if x.numel() == 0:
        return out
    flag = _LAYOUT_FLAG[fmt]
    chunks = triton.cdiv(geo["K"], _CHUNK)
    partial = torch.empty(geo["M"] * geo["F"] * chunks, dtype=_acc_dtype(x), device=x.device)  # every slot written
    with device_guard(x):
        _stats[_program_grid(geo)](x, out, partial, **geo, CHUNKS=chunks, CHANNELS_LAST=flag, CHUNK=_CHUNK)
        _fill_kernel[(n * num_channels,)](partial, out, geo["C"], geo["HW"], geo["M"], geo["F"], geo["K"], chunks,
                                          CHANNELS_LAST=flag, BLOCK=_FILL_BLOCK)
    return out


def _check_like(t, name, shape, x, fmt):
    if tuple(t.shape) != shape or t.dtype != x.dtype or t.device != x.device or layout(t, name) != fmt:
        raise ValueError(f"fastgan triton: {name} must be {shape} of {x.dtype} on {x.device}, laid out like x, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device} with strides {t.stride()}")


def _grad_shape(x, num_channels):
    n, c, h, w = x.shape
    return n, c + num_channels, h, w


def minibatch_stddev_backward(grad, x, group_size, num_channels):
    """grad_x = grad[:, :C] + A * (x - mean) / (G * s), in x's layout."""
    geo, fmt = _geometry(x, group_size, num_channels)
    _check_like(grad, "grad", _grad_shape(x, num_channels), x, fmt)
    gx = torch.empty_like(x)
    if x.numel() == 0:
        return gx
    flag = _LAYOUT_FLAG[fmt]
    a = torch.empty(geo["M"] * geo["F"], dtype=_acc_dtype(x), device=x.device)
    # `_backward` only reads grad, x and a and overwrites all of gx: the autotuner's runs of each
    # config leave nothing that changes the final one.
    with device_guard(x):
        _grad_f_kernel[(geo["M"] * geo["F"],)](grad, a, **geo, CHANNELS_LAST=flag, BLOCK=_FILL_BLOCK)
        _backward[_program_grid(geo)](grad, x, a, gx, **geo, CHANNELS_LAST=flag)
    return gx


def minibatch_stddev_double_backward(gg, grad, x, group_size, num_channels, need_grad, need_x):
    """(d_grad, d_x) in x's layout (see csrc/schemas.h); the one not asked for is empty."""
    geo, fmt = _geometry(x, group_size, num_channels)
    _check_like(grad, "grad", _grad_shape(x, num_channels), x, fmt)
    _check_like(gg, "gg", tuple(x.shape), x, fmt)
    memory_format = torch.contiguous_format if fmt == "nchw" else torch.channels_last
    d_grad = (torch.empty(_grad_shape(x, num_channels), dtype=x.dtype, device=x.device, memory_format=memory_format)
              if need_grad else x.new_empty(0))
    d_x = torch.empty_like(x) if need_x else x.new_empty(0)
    if x.numel() == 0 or not (need_grad or need_x):
        return d_grad, d_x
    flag = _LAYOUT_FLAG[fmt]
    chunks = triton.cdiv(geo["K"], _CHUNK)
    acc = _acc_dtype(x)
    a = torch.empty(geo["M"] * geo["F"] if need_x else 0, dtype=acc, device=x.device)
    partial = torch.empty(geo["M"] * geo["F"] * chunks if need_grad else 0, dtype=acc, device=x.device)
    # As `_stats` and `_backward`: every config overwrites d_grad, d_x and each partial slot, and
    # reads only gg, x and a: the autotuner's runs leave nothing behind.
    with device_guard(x):
        if need_x:
            _grad_f_kernel[(geo["M"] * geo["F"],)](grad, a, **geo, CHANNELS_LAST=flag, BLOCK=_FILL_BLOCK)
        _double_backward[_program_grid(geo)](gg, x, a, d_grad, d_x, partial, **geo, CHUNKS=chunks,
                                             NEED_GRAD=bool(need_grad), NEED_X=bool(need_x), CHANNELS_LAST=flag,
                                             CHUNK=_CHUNK)
        if need_grad:
            _fill_kernel[(x.shape[0] * num_channels,)](partial, d_grad, geo["C"], geo["HW"], geo["M"], geo["F"],
                                                       geo["K"], chunks, CHANNELS_LAST=flag, BLOCK=_FILL_BLOCK)
    return d_grad, d_x


def _kernel_spec(name, fn, signature_order, configs, constexprs=None, extra_variants=({},)):
    """`signature_order`: (argument, type) in the kernel's order; `constexprs`: those fixed on every path."""
    return KernelSpec(name, fn, dict(signature_order),
                      tuple((lay + "".join(f"-{k}={v}" for k, v in extra.items()),
                             {"CHANNELS_LAST": flag, **(constexprs or {}), **extra}, configs)
                            for lay, flag in _LAYOUT_FLAG.items() for extra in extra_variants))


_GEOMETRY = [("C", "i32"), ("HW", "i32"), ("M", "i32"), ("G", "i32"), ("F", "i32"), ("K", "i32")]
_CONSTEXPRS = [("CHANNELS_LAST", "constexpr"), ("BLOCK", "constexpr")]
_FILL_CONFIGS = [triton.Config({"BLOCK": _FILL_BLOCK}, num_warps=4)]
# The partial sums and `a` are float32, float64 for float64 tensors; compiled here as float32
# in every dtype (the kernels load, add and store through them).
KERNEL_SPECS = [
    _kernel_spec("minibatch_stddev_stats", _stats_kernel,
                 [("x_ptr", "*{dtype}"), ("out_ptr", "*{dtype}"), ("partial_ptr", "*fp32"), *_GEOMETRY,
                  ("CHUNKS", "i32"), *_CONSTEXPRS, ("CHUNK", "constexpr")],
                 CONFIGS, {"CHUNK": _CHUNK}),
    _kernel_spec("minibatch_stddev_fill", _fill_kernel,
                 [("partial_ptr", "*fp32"), ("out_ptr", "*{dtype}"), ("C", "i32"), ("HW", "i32"), ("M", "i32"),
                  ("F", "i32"), ("K", "i32"), ("CHUNKS", "i32"), *_CONSTEXPRS], _FILL_CONFIGS),
    _kernel_spec("minibatch_stddev_grad_f", _grad_f_kernel,
                 [("grad_ptr", "*{dtype}"), ("a_ptr", "*fp32"), *_GEOMETRY, *_CONSTEXPRS], _FILL_CONFIGS),
    _kernel_spec("minibatch_stddev_backward", _backward_kernel,
                 [("grad_ptr", "*{dtype}"), ("x_ptr", "*{dtype}"), ("a_ptr", "*fp32"), ("gx_ptr", "*{dtype}"),
                  *_GEOMETRY, *_CONSTEXPRS], CONFIGS),
    _kernel_spec("minibatch_stddev_double_backward", _double_backward_kernel,
                 [("gg_ptr", "*{dtype}"), ("x_ptr", "*{dtype}"), ("a_ptr", "*fp32"), ("dgrad_ptr", "*{dtype}"),
                  ("dx_ptr", "*{dtype}"), ("partial_ptr", "*fp32"), *_GEOMETRY, ("CHUNKS", "i32"),
                  ("NEED_GRAD", "constexpr"), ("NEED_X", "constexpr"), *_CONSTEXPRS, ("CHUNK", "constexpr")],
                 _DOUBLE_BACKWARD_CONFIGS, {"CHUNK": _CHUNK},
                 extra_variants=[{"NEED_GRAD": g, "NEED_X": x} for g, x in ((True, True), (True, False),
                                                                             (False, True))]),
]
