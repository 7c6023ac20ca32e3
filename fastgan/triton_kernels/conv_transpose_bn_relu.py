"""The DCGAN generator block (SPEC 1): ConvTranspose2d + BatchNorm2d + ReLU, as the kernel-level
ops of csrc/schemas.h; the normalize + activation ops also serve the discriminator's Conv2d +
BatchNorm2d + LeakyReLU block (SPEC 7), with batch_stats for the statistics of its convolution.

conv_transpose_stats: an implicit-GEMM transposed convolution with tl.dot. Rows are output pixels
(n, oh, ow), columns output channels, the reduction runs over (kh, kw, ci). Output pixels are
split by phase (oh % s_h, ow % s_w): the taps landing on one phase are kh = ph + s_h * j (and the
same along w), so each program only walks the taps that contribute. x is read channels-last and the
weight as [kH, kW, C_in, C_out] (both copied so on the host: the GEMM operands are then row-major
tiles). z is stored channels-last. The epilogue writes per-tile, per-channel partial statistics
(count, tile mean, M2 = sum of squared deviations from the tile mean, from the registers: never a
sum of squares; the tile mean is kept as a rounded shift plus a small offset), and a tiny finalize
kernel merges them (Chan) into mean and biased variance.
The statistics are those of z as stored (rounded to its dtype), as the reference computes them.

conv_transpose: z alone, from the same kernel (eval with the running statistics applied after).
conv_transpose_bias_relu: the same GEMM with a bias + ReLU epilogue (eval, BN folded by the caller).

batch_stats: the per-channel mean and biased variance of a given z, in the same (count, shift,
offset, M2) partials as conv_transpose_stats and merged by the same finalize kernel: each program
walks a chunk of z, Welford-style by tiles (two passes over each tile in registers, Chan merges
between tiles), of z minus a value of its channel (z[0, c, 0, 0], the shift of every partial).

bn_relu / bn_relu_: y = act((z - mean) * scale + shift), act(u) = u > 0 ? u : negative_slope * u
(ReLU for slope 0, LeakyReLU otherwise), a separate pass: a later fused chain can apply the same
per-channel scale, shift and activation while loading the next block's input tile.

bn_relu_backward: pass 1 writes per-chunk partial sums s1 = sum(gm), s2 = sum(gm * xhat) per channel
(gm = grad_y * (u > 0 ? 1 : negative_slope), u recomputed from z), a tiny kernel adds them in a
fixed order (deterministic, no atomics) and forms the coefficients, pass 2 writes
grad_z = gamma * invstd * (gm - s1 / n - xhat * s2 / n).

The slope is a runtime float64 scalar (not a constexpr: one compiled kernel serves every slope),
rounded to the compute type in the kernel as eager's leaky_relu rounds it to the tensor's.

z, y, grad tensors are seen as [R, K] rows: channels-last R = N*H*W pixels and K = C channels;
NCHW R = N*C (sample, channel) rows and K = H*W.
"""

import torch
import triton
import triton.language as tl

from .._backend import conv_tf32_allowed
from .._chan import merge_rows
from .pixel_norm import _rsqrt
from ._common import INTERPRET, KernelSpec, autotune, check_like, compute_dtype, device_guard, fp64_scalar, layout

# ---------------------------------------------------------------------------
# Configurations. Every GEMM tile must fit each dtype (float64 too) in registers and shared memory.
# Tensor-core tiles (tl.dot) for float16, bfloat16, float64 (IEEE products) and TF32; exact float32
# (TF32 off) runs tl.dot's IEEE float32 path on the CUDA cores, whose register use wants smaller tiles.
# Larger tiles (128 x 64, 64 x 128) spill in float64 without 16-byte alignment (tests/test_triton_aot.py).

MMA_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
]
FMA_CONFIGS = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
]
_CONV_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 8, "BLOCK_K": 4})
# The most tiles a conv launch can have per phase: partial statistics are allocated for it.
_CONV_LAUNCHED = [_CONV_INTERPRETER_CONFIG] if INTERPRET else MMA_CONFIGS + FMA_CONFIGS
_MIN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in _CONV_LAUNCHED)
_MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _CONV_LAUNCHED)

# [BLOCK_R, BLOCK_K] tiles of the elementwise and reduction passes, long along the contiguous K;
# 8 warps: with 4, ptxas spills a few bytes in float64 without 16-byte alignment.
ROW_CONFIGS = {
    "nchw": [
        triton.Config({"BLOCK_R": 4, "BLOCK_K": 256}, num_warps=8),
        triton.Config({"BLOCK_R": 16, "BLOCK_K": 64}, num_warps=8),
        triton.Config({"BLOCK_R": 64, "BLOCK_K": 16}, num_warps=8),
    ],
    "channels_last": [
        triton.Config({"BLOCK_R": 32, "BLOCK_K": 32}, num_warps=8),
        triton.Config({"BLOCK_R": 16, "BLOCK_K": 64}, num_warps=8),
        triton.Config({"BLOCK_R": 8, "BLOCK_K": 128}, num_warps=8),
    ],
}
STATS_ROW_CONFIGS = ROW_CONFIGS
_ROW_INTERPRETER_CONFIG = triton.Config({"BLOCK_R": 4, "BLOCK_K": 8})
_LAYOUT_FLAG = {"nchw": False, "channels_last": True}

# Rows of one channels-last chunk of the backward's pass 1 (one partial sum per chunk and channel).
_CHUNK_ROWS = 8 if INTERPRET else 256

# Finalize kernels: [BLOCK_T, BLOCK_C] tiles of the partials (smaller under the interpreter, so that
# tiny tests span several).
FINALIZE_CONFIG = triton.Config({"BLOCK_T": 64, "BLOCK_C": 16}, num_warps=4)
_FINALIZE_LAUNCH = triton.Config({"BLOCK_T": 8, "BLOCK_C": 4}, num_warps=4) if INTERPRET else FINALIZE_CONFIG


# ---------------------------------------------------------------------------
# The implicit GEMM.


@triton.jit
def _chan_combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s merge of (count, mean, M2) pairs; a zero count leaves the other side as is."""
    n = n_a + n_b
    w = n_b / tl.maximum(n, 1.0)
    d = mean_b - mean_a
    return n, mean_a + d * w, m2_a + m2_b + d * d * n_a * w


# The interpreter's bfloat16 tl.dot returns garbage (triton 3.8, ~1e10 off); bfloat16 products are
# exact in float32, which it multiplies correctly: the same result, on CPU only.
_DOT_BF16_AS_FP32: tl.constexpr = tl.constexpr(INTERPRET)


@triton.jit
def _dot_operand(v):
    if _DOT_BF16_AS_FP32 and v.dtype == tl.bfloat16:
        v = v.to(tl.float32)
    return v


@triton.jit(do_not_specialize=["relu"])  # one binary for relu 0 and 1 (Triton makes an int equal to 1 a constant)
def _conv_transpose_kernel(x_ptr, w_ptr, z_ptr, bias_ptr, part_ptr,
                           N, C_in, H_in, W_in, C_out, H_out, W_out, Hq, Wq,
                           stride_h, stride_w, pad_h, pad_w, kH, kW, w_s_ci, w_s_co, w_s_kh, w_s_kw, relu,
                           STATS: tl.constexpr, FP32_MMA: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """x [N, H_in, W_in, C_in] (channels-last), w [C_in, C_out, kH, kW] channels-last (its strides
    w_s_*, w_s_co = 1: C_out contiguous), z [N, H_out, W_out, C_out].
    Program (t, j): output channels j * BLOCK_N + ..., and the t-th tile of BLOCK_M pixels in phase
    order: phase (rh, rw) holds the pixels (rh + s_h * qh, rw + s_w * qw), qh < Hq, qw < Wq.
    STATS: store z and the tile's partial statistics to part [tiles, 4, C_out];
    else store z + bias, through a ReLU where `relu` is nonzero (a runtime flag, not a constexpr:
    eval's z + bias is rare, and a variant would double the compiles)."""
    acc_t: tl.constexpr = compute_dtype(z_ptr.dtype.element_ty)
    t = tl.program_id(0)
    m_tiles = tl.cdiv(N * Hq * Wq, BLOCK_M)
    phase = t // m_tiles
    rh = phase // stride_w
    rw = phase % stride_w
    # Taps of this phase: kh = ph + s_h * jh lands on input row ih = qh + dh - jh.
    ph = (rh + pad_h) % stride_h
    dh = (rh + pad_h) // stride_h
    pw = (rw + pad_w) % stride_w
    dw = (rw + pad_w) // stride_w

    # Pixels in (qh, qw, n) order: a tile spans few positions, so x rows are gathered from few taps.
    m = (t % m_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    n_img = m % N
    qw = (m // N) % Wq
    qh = m // (N * Wq)
    oh = rh + stride_h * qh
    ow = rw + stride_w * qw
    row_ok = (qh < Hq) & (oh < H_out) & (ow < W_out)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < C_out
    ck = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=acc_t)
    # One flat loop over (tap, channel block), which Triton pipelines as a whole.
    taps_w = tl.maximum(tl.cdiv(kW - pw, stride_w), 0)
    c_blocks = tl.cdiv(C_in, BLOCK_K)
    for it in range(0, tl.maximum(tl.cdiv(kH - ph, stride_h), 0) * taps_w * c_blocks):
        tap = it // c_blocks
        jh = tap // taps_w
        jw = tap % taps_w
        ih = qh + dh - jh
        iw = qw + dw - jw
        ok = row_ok & (ih >= 0) & (ih < H_in) & (iw >= 0) & (iw < W_in)
        # Rows whose tap falls outside x read nothing (offset 0, masked). int32 offsets: the
        # host checks that x and the weight have fewer than 2**31 elements.
        x_row = tl.where(ok, ((n_img * H_in + ih) * W_in + iw) * C_in, 0)
        ci = (it % c_blocks) * BLOCK_K + ck
        ci_ok = ci < C_in
        w_row = (ph + stride_h * jh) * w_s_kh + (pw + stride_w * jw) * w_s_kw + ci * w_s_ci
        a = _dot_operand(tl.load(x_ptr + x_row[:, None] + ci[None, :], mask=ok[:, None] & ci_ok[None, :], other=0.0))
        b = _dot_operand(tl.load(w_ptr + w_row[:, None] + co[None, :] * w_s_co, mask=ci_ok[:, None] & co_ok[None, :],
                                 other=0.0))
        if FP32_MMA:
            acc = tl.dot(a, b, acc, input_precision="tf32", out_dtype=acc_t)
        else:  # exact float32 products (on the CUDA cores); other dtypes are unaffected
            acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc_t)

    out_row = ((n_img.to(tl.int64) * H_out + oh) * W_out + ow) * C_out
    out_offs = out_row[:, None] + co[None, :]
    out_mask = row_ok[:, None] & co_ok[None, :]
    if STATS:
        z = acc.to(z_ptr.dtype.element_ty)
        tl.store(z_ptr + out_offs, z, mask=out_mask)
        # The statistics of z as stored; rows past the image count for nothing. The tile mean is
        # kept as shift + offset: the rounded mean (an exact reference value) and the mean of the
        # deviations from it, so that its rounding (|mean| >> std) does not reach the merges.
        zs = tl.where(row_ok[:, None], z.to(acc_t), 0.0)
        count = tl.sum(row_ok.to(acc_t), axis=0)
        shift = tl.sum(zs, axis=0) / tl.maximum(count, 1.0)
        dev = tl.where(row_ok[:, None], zs - shift[None, :], 0.0)
        offset = tl.sum(dev, axis=0) / tl.maximum(count, 1.0)
        dev = tl.where(row_ok[:, None], dev - offset[None, :], 0.0)
        part = part_ptr + t.to(tl.int64) * 4 * C_out + co
        tl.store(part, tl.zeros([BLOCK_N], dtype=acc_t) + count, mask=co_ok)
        tl.store(part + C_out, shift, mask=co_ok)
        tl.store(part + 2 * C_out, offset, mask=co_ok)
        tl.store(part + 3 * C_out, tl.sum(dev * dev, axis=0), mask=co_ok)
    else:
        bias = tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(acc_t)
        y = acc + bias[None, :]
        if relu:
            y = tl.where((y > 0) | (y != y), y, 0.0)  # NaN stays NaN, as in torch's relu
        tl.store(z_ptr + out_offs, y.to(z_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _finalize_stats_kernel(part_ptr, mean_ptr, var_ptr, T, C, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merges the partials [T, 4, C] (count, shift, offset, M2) of each channel, BLOCK_T tiles at a
    time in a fixed order. Tile means are taken relative to tile 0's shift (never empty: it holds
    pixel (0, 0)); shift - shift_0 is exact when |mean| >> std, so the merges see accurate means."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    shift0 = tl.load(part_ptr + C + c, mask=c_ok, other=0.0)
    n = tl.zeros([BLOCK_C], dtype=acc_t)
    mean = tl.zeros([BLOCK_C], dtype=acc_t)  # relative to shift0
    m2 = tl.zeros([BLOCK_C], dtype=acc_t)
    for t0 in range(0, T, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        mask = (tt < T)[:, None] & c_ok[None, :]
        offs = tt[:, None].to(tl.int64) * 4 * C + c[None, :]
        n_b = tl.load(part_ptr + offs, mask=mask, other=0.0)
        shift_b = tl.load(part_ptr + offs + C, mask=mask, other=0.0)
        mean_b = (shift_b - shift0[None, :]) + tl.load(part_ptr + offs + 2 * C, mask=mask, other=0.0)
        # An empty tile (count 0, shift 0) adds nothing in whatever order tl.reduce combines it.
        mean_b = tl.where(n_b > 0, mean_b, 0.0)
        m2_b = tl.load(part_ptr + offs + 3 * C, mask=mask, other=0.0)
        n_b, mean_b, m2_b = tl.reduce((n_b, mean_b, m2_b), 0, _chan_combine)
        n, mean, m2 = _chan_combine(n, mean, m2, n_b, mean_b, m2_b)
    tl.store(mean_ptr + c, shift0 + mean, mask=c_ok)
    tl.store(var_ptr + c, m2 / tl.maximum(n, 1.0), mask=c_ok)  # n >= 1 in every real channel


_CONV_KEY = ["N", "C_in", "H_in", "W_in", "C_out", "H_out", "W_out", "stride_h", "stride_w", "kH", "kW"]
# {FP32_MMA: the kernel autotuned over its tiles}
_conv_transpose = {mma: autotune(configs, _CONV_INTERPRETER_CONFIG, key=_CONV_KEY)(_conv_transpose_kernel)
                   for mma, configs in ((True, MMA_CONFIGS), (False, FMA_CONFIGS))}


def _check_conv(x, weight, stride, padding, output_padding):
    if x.dim() != 4:
        raise ValueError(f"fastgan triton: x must be 4-D, got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"fastgan triton: weight must be [C_in, C_out, kH, kW] with C_in = {x.shape[1]}, "
                         f"got shape {tuple(weight.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"fastgan triton: weight is {weight.dtype} on {weight.device}, "
                         f"expected {x.dtype} on {x.device}")
    if (any(s < 1 for s in stride) or any(p < 0 for p in padding)
            or any(not 0 <= op < s for op, s in zip(output_padding, stride))):
        raise ValueError(f"fastgan triton: bad stride {list(stride)}, padding {list(padding)} or "
                         f"output_padding {list(output_padding)} (which must be smaller than the stride)")
    h_out, w_out = ((i - 1) * s - 2 * p + k + op for i, s, p, k, op in
                    zip(x.shape[2:], stride, padding, weight.shape[2:], output_padding))
    if h_out < 1 or w_out < 1:
        raise ValueError(f"fastgan triton: the output size {h_out}x{w_out} is too small")
    return h_out, w_out


def _launch_conv(x, weight, bias, stride, padding, output_padding, stats, relu=True):
    """z (or z + bias, through a ReLU for `relu`), channels-last, and for `stats` the partials and
    their tile count."""
    h_out, w_out = _check_conv(x, weight, stride, padding, output_padding)
    n, c_in, h_in, w_in = x.shape
    c_out, kh, kw = weight.shape[1:]
    (sh, sw), (ph, pw) = stride, padding
    hq, wq = triton.cdiv(h_out, sh), triton.cdiv(w_out, sw)
    x = x.contiguous(memory_format=torch.channels_last)
    # C_out contiguous: a channels-last weight (what the models keep on a GPU) is read as it is.
    w = weight.contiguous(memory_format=torch.channels_last)
    z = torch.empty((n, c_out, h_out, w_out), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    phases = sh * sw
    max_tiles = phases * triton.cdiv(n * hq * wq, _MIN_BLOCK_M)
    part = torch.empty((max_tiles, 4, c_out) if stats else (0,), dtype=_acc_dtype(x), device=x.device)
    if z.numel() == 0:
        return z, part, 0
    # Channel blocks go on grid axis 1, which allows 65535 programs (a flat grid spilled registers in float64).
    if triton.cdiv(c_out, _MIN_BLOCK_N) > 65535:
        raise ValueError(f"fastgan triton: weight has {c_out} output channels; at most {65535 * _MIN_BLOCK_N}")
    if x.numel() >= 2**31 or weight.numel() >= 2**31:
        raise ValueError(f"fastgan triton: x and weight must have fewer than 2**31 elements, got {x.numel()} "
                         f"and {weight.numel()}")
    # TF32 where PyTorch's own convolutions may use it (cuDNN's setting, on by default). The
    # interpreter computes tl.dot in exact float32 either way.
    fp32_mma = conv_tf32_allowed()

    def grid(meta):
        return (phases * triton.cdiv(n * hq * wq, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]))

    with device_guard(x):
        _conv_transpose[fp32_mma][grid](x, w, z, bias if bias is not None else z, part,
                              n, c_in, h_in, w_in, c_out, h_out, w_out, hq, wq, sh, sw, ph, pw, kh, kw,
                              *w.stride(), int(relu), STATS=stats, FP32_MMA=fp32_mma)
    tiles = phases * triton.cdiv(n * hq * wq, _conv_transpose[fp32_mma].best_config.kwargs["BLOCK_M"])
    return z, part, tiles


def _acc_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def conv_transpose_stats(x, weight, stride, padding, output_padding):
    """(z, mean, var): z = conv_transpose2d(x, weight) channels-last, with the per-channel mean and
    biased variance of z over (N, H, W)."""
    z, part, tiles = _launch_conv(x, weight, None, stride, padding, output_padding, stats=True)
    return (z, *_finalize_stats(z, part, tiles))


def conv_transpose(x, weight, stride, padding, output_padding, bias=None):
    """z = conv_transpose2d(x, weight) channels-last: conv_transpose_stats's kernel (its statistics
    epilogue costs little next to the GEMM), the partials left unmerged; with a bias, the bias
    epilogue's kernel without its ReLU."""
    if bias is None:
        return _launch_conv(x, weight, None, stride, padding, output_padding, stats=True)[0]
    _check_bias(x, weight, bias)
    return _launch_conv(x, weight, bias.contiguous(), stride, padding, output_padding, stats=False, relu=False)[0]


def _check_bias(x, weight, bias):
    if bias.dim() != 1 or bias.shape[0] != weight.shape[1] or bias.dtype != x.dtype or bias.device != x.device:
        raise ValueError(f"fastgan triton: bias must be a {x.dtype} vector of C_out = {weight.shape[1]} values "
                         f"on {x.device}, got {bias.dtype} of shape {tuple(bias.shape)} on {bias.device}")


def _finalize_stats(z, part, tiles):
    """(mean, var) of z from its `tiles` partials [T, 4, C] (NaN for an empty z)."""
    c = z.shape[1]
    mean = torch.empty(c, dtype=part.dtype, device=z.device)
    var = torch.empty(c, dtype=part.dtype, device=z.device)
    if z.numel() == 0:
        return mean.fill_(float("nan")), var.fill_(float("nan"))
    with device_guard(z):
        _finalize_stats_kernel[(triton.cdiv(c, _FINALIZE_LAUNCH.kwargs["BLOCK_C"]),)](
            part, mean, var, tiles, c, **_FINALIZE_LAUNCH.kwargs, num_warps=_FINALIZE_LAUNCH.num_warps)
    return mean, var


def conv_transpose_bias_relu(x, weight, bias, stride, padding, output_padding):
    """relu(conv_transpose2d(x, weight, bias)), channels-last."""
    _check_bias(x, weight, bias)
    y, _, _ = _launch_conv(x, weight, bias.contiguous(), stride, padding, output_padding, stats=False)
    return y


# ---------------------------------------------------------------------------
# Normalize + activation, its backward and batch_stats, over [R, K] rows.


@triton.jit
def _row_tile(R, K, C, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Offsets, mask and channels of this program's [BLOCK_R, BLOCK_K] tile (channels broadcastable
    to the tile: along K for channels-last, along R for NCHW). Program i + (R / BLOCK_R) * j has row
    block i and column block j: one grid axis, as the others allow only 65535 programs."""
    pid = tl.program_id(0)
    r_blocks = tl.cdiv(R, BLOCK_R)
    r = (pid % r_blocks).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = (pid // r_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs = r[:, None] * K + k[None, :]
    mask = (r < R)[:, None] & (k < K)[None, :]
    if CHANNELS_LAST:
        c = k[None, :]
    else:
        c = (r % C).to(tl.int32)[:, None]
    return offs, mask, c


@triton.jit
def _bn_relu_kernel(z_ptr, y_ptr, mean_ptr, scale_ptr, shift_ptr, R, K, C, negative_slope: "fp64",
                    CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """y = act((z - mean) * scale + shift), act(u) = u > 0 ? u : negative_slope * u (NaN stays NaN);
    y may be z."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    offs, mask, c = _row_tile(R, K, C, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    c_ok = c < C
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + c, mask=c_ok, other=0.0)
    shift = tl.load(shift_ptr + c, mask=c_ok, other=0.0)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(acc_t)
    u = (z - mean) * scale + shift
    slope = negative_slope.to(acc_t)
    # slope 0 is ReLU exactly: 0 (not -0 or inf * 0) where u <= 0; NaN stays NaN
    y = tl.where((u > 0.0) | (u != u), u, tl.where(slope != 0.0, u * slope, 0.0))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _masked_grad(g_ptr, z_ptr, offs, mask, mean, invstd, gamma, beta, slope):
    """(gm, xhat): grad_y * (u > 0 ? 1 : slope), u = xhat * gamma + beta (0 outside the mask)."""
    acc_t: tl.constexpr = mean.dtype
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(acc_t)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_t)
    xhat = (z - mean) * invstd
    low = tl.where(slope != 0.0, g * slope, 0.0)  # slope 0: a true 0, as ReLU's backward
    gm = tl.where(mask, tl.where(xhat * gamma + beta > 0.0, g, low), 0.0)
    return gm, xhat


@triton.jit
def _affine(gamma_ptr, beta_ptr, c, ok, like, AFFINE: tl.constexpr):
    """gamma and beta at channels c, or 1 and 0 shaped and typed like `like` without affine."""
    if AFFINE:
        gamma = tl.load(gamma_ptr + c, mask=ok, other=0.0)
        beta = tl.load(beta_ptr + c, mask=ok, other=0.0)
    else:
        gamma = tl.full(like.shape, 1.0, like.dtype)
        beta = tl.zeros(like.shape, like.dtype)
    return gamma, beta


@triton.jit
def _channel_params(mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, c, c_ok, AFFINE: tl.constexpr):
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    invstd = tl.load(invstd_ptr + c, mask=c_ok, other=0.0)
    gamma, beta = _affine(gamma_ptr, beta_ptr, c, c_ok, mean, AFFINE)
    return mean, invstd, gamma, beta


@triton.jit
def _bn_relu_sums_kernel(g_ptr, z_ptr, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, part_ptr, R, K, C, chunk_rows,
                         negative_slope: "fp64", AFFINE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pass 1 of the backward: partial sums s1 = sum(gm), s2 = sum(gm * xhat) into part [T, 2, C].
    Channels-last: program (t, j) sums rows t * chunk_rows ... of channels j * BLOCK_K + ...
    NCHW: program i sums whole rows i * BLOCK_R + ... (row n * C + c goes to part[n, :, c])."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    slope = negative_slope.to(acc_t)
    if CHANNELS_LAST:
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = k < K
        mean, invstd, gamma, beta = _channel_params(mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, k[None, :],
                                                    k_ok[None, :], AFFINE)
        s1 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_t)
        s2 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_t)
        start = tl.program_id(0).to(tl.int64) * chunk_rows
        for r0 in range(0, chunk_rows, BLOCK_R):
            r = start + r0 + tl.arange(0, BLOCK_R)
            mask = ((r < R) & (r0 + tl.arange(0, BLOCK_R) < chunk_rows))[:, None] & k_ok[None, :]
            gm, xhat = _masked_grad(g_ptr, z_ptr, r[:, None] * K + k[None, :], mask, mean, invstd, gamma, beta,
                                    slope)
            s1 += gm
            s2 += gm * xhat
        part = part_ptr + tl.program_id(0).to(tl.int64) * 2 * C + k
        tl.store(part, tl.sum(s1, axis=0), mask=k_ok)
        tl.store(part + C, tl.sum(s2, axis=0), mask=k_ok)
    else:
        r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = r < R
        c = (r % C).to(tl.int32)
        mean, invstd, gamma, beta = _channel_params(mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, c[:, None],
                                                    r_ok[:, None], AFFINE)
        s1 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_t)
        s2 = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_t)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mask = r_ok[:, None] & (k < K)[None, :]
            gm, xhat = _masked_grad(g_ptr, z_ptr, r[:, None] * K + k[None, :], mask, mean, invstd, gamma, beta,
                                    slope)
            s1 += gm
            s2 += gm * xhat
        part = part_ptr + (r // C) * 2 * C + c
        tl.store(part, tl.sum(s1, axis=1), mask=r_ok)
        tl.store(part + C, tl.sum(s2, axis=1), mask=r_ok)


@triton.jit
def _finalize_backward_kernel(part_ptr, invstd_ptr, gamma_ptr, grad_gamma_ptr, grad_beta_ptr, coef_ptr, T, C, n,
                              AFFINE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Adds the partials [T, 2, C] in a fixed order: grad_gamma = s2, grad_beta = s1, and coef [3, C] =
    (gamma * invstd, s1 / n, s2 / n), the coefficients of grad_z."""
    acc_t: tl.constexpr = invstd_ptr.dtype.element_ty
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    s1 = tl.zeros([BLOCK_C], dtype=acc_t)
    s2 = tl.zeros([BLOCK_C], dtype=acc_t)
    for t0 in range(0, T, BLOCK_T):
        tt = t0 + tl.arange(0, BLOCK_T)
        mask = (tt < T)[:, None] & c_ok[None, :]
        offs = tt[:, None].to(tl.int64) * 2 * C + c[None, :]
        s1 += tl.sum(tl.load(part_ptr + offs, mask=mask, other=0.0), axis=0)
        s2 += tl.sum(tl.load(part_ptr + offs + C, mask=mask, other=0.0), axis=0)
    tl.store(grad_gamma_ptr + c, s2, mask=c_ok)
    tl.store(grad_beta_ptr + c, s1, mask=c_ok)
    k = tl.load(invstd_ptr + c, mask=c_ok, other=0.0)
    if AFFINE:
        k *= tl.load(gamma_ptr + c, mask=c_ok, other=0.0)
    count = tl.cast(n, acc_t)
    tl.store(coef_ptr + c, k, mask=c_ok)
    tl.store(coef_ptr + C + c, s1 / count, mask=c_ok)
    tl.store(coef_ptr + 2 * C + c, s2 / count, mask=c_ok)


@triton.jit
def _bn_relu_grad_kernel(g_ptr, z_ptr, mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, coef_ptr, out_ptr, R, K, C,
                         negative_slope: "fp64", AFFINE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Pass 2 of the backward: grad_z = coef[0] * (gm - coef[1] - xhat * coef[2])."""
    offs, mask, c = _row_tile(R, K, C, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    c_ok = c < C
    mean, invstd, gamma, beta = _channel_params(mean_ptr, invstd_ptr, gamma_ptr, beta_ptr, c, c_ok, AFFINE)
    gm, xhat = _masked_grad(g_ptr, z_ptr, offs, mask, mean, invstd, gamma, beta, negative_slope.to(mean.dtype))
    k = tl.load(coef_ptr + c, mask=c_ok, other=0.0)
    a = tl.load(coef_ptr + C + c, mask=c_ok, other=0.0)
    b = tl.load(coef_ptr + 2 * C + c, mask=c_ok, other=0.0)
    tl.store(out_ptr + offs, (k * (gm - a - xhat * b)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_tile(n, mean, m2, v, valid, count, AXIS: tl.constexpr):
    """The running (n, mean, M2) along AXIS with the tile v added, `count` valid values a lane (counted
    by the caller). The tile's deviations from the running mean, D = sum(v - mean) and
    Q = sum((v - mean)^2), give mean + D / n' and M2 + Q - D^2 / n' (Chan's merge, with no division:
    float64 divisions are subroutine calls that made ptxas spill; 1 / n' is a float32 reciprocal
    refined by two Newton steps, good to an ulp). Q - D^2 / n' >= M2 of the
    tile and cancels only as far as the running mean is off the tile's (a few std at most): never
    E[z^2] - E[z]^2."""
    dev = tl.where(valid, v - tl.expand_dims(mean, AXIS), 0.0)
    d = tl.sum(dev, axis=AXIS)
    q = tl.sum(dev * dev, axis=AXIS)
    n = n + count
    nn = tl.maximum(n, 1.0)
    inv = (1.0 / nn.to(tl.float32)).to(nn.dtype)
    inv = inv * (2.0 - nn * inv)
    inv = inv * (2.0 - nn * inv)
    return n, mean + d * inv, m2 + tl.maximum(q - d * d * inv, 0.0)


@triton.jit
def _batch_stats_kernel(z_ptr, part_ptr, R, K, C, chunk_rows,
                        CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """The partials [T, 4, C] (count, shift, offset, M2) of batch_stats, merged by _finalize_stats_kernel:
    the statistics of z - shift, shift = z[0, c, 0, 0] for every partial of channel c (so the running
    means stay small when |mean| >> std, and the finalize's shift differences are exactly 0), tile by
    tile with Chan merges.
    Channels-last: program (t, j) walks rows t * chunk_rows ... of channels j * BLOCK_K + ... -> part[t].
    NCHW: program i walks whole rows i * BLOCK_R + ... (row n * C + c -> part[n, :, c])."""
    acc_t: tl.constexpr = compute_dtype(z_ptr.dtype.element_ty)
    if CHANNELS_LAST:
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = k < K
        shift = tl.load(z_ptr + k, mask=k_ok, other=0.0).to(acc_t)  # row 0
        n = tl.zeros([BLOCK_K], dtype=acc_t)
        mean = tl.zeros([BLOCK_K], dtype=acc_t)
        m2 = tl.zeros([BLOCK_K], dtype=acc_t)
        start = tl.program_id(0).to(tl.int64) * chunk_rows
        for r0 in range(0, chunk_rows, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R)
            r = start + rr
            mask = ((r < R) & (rr < chunk_rows))[:, None] & k_ok[None, :]
            v = tl.load(z_ptr + r[:, None] * K + k[None, :], mask=mask, other=0.0).to(acc_t) - shift[None, :]
            rows = tl.maximum(tl.minimum(tl.minimum(R - (start + r0), chunk_rows - r0), BLOCK_R), 0)
            n, mean, m2 = _add_tile(n, mean, m2, v, mask, tl.where(k_ok, rows, 0).to(acc_t), 0)
        part = part_ptr + tl.program_id(0).to(tl.int64) * 4 * C + k
        ok = k_ok
    else:
        # Rows in int32 (R = N * C is an int32): 64-bit divisions are subroutine calls (a spill in float64).
        r32 = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = r32 < R
        c = r32 % C
        r = r32.to(tl.int64)
        shift = tl.load(z_ptr + c.to(tl.int64) * K, mask=r_ok, other=0.0).to(acc_t)  # sample 0, pixel 0
        n = tl.zeros([BLOCK_R], dtype=acc_t)
        mean = tl.zeros([BLOCK_R], dtype=acc_t)
        m2 = tl.zeros([BLOCK_R], dtype=acc_t)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mask = r_ok[:, None] & (k < K)[None, :]
            v = tl.load(z_ptr + r[:, None] * K + k[None, :], mask=mask, other=0.0).to(acc_t) - shift[:, None]
            n, mean, m2 = _add_tile(n, mean, m2, v, mask, tl.where(r_ok, tl.minimum(K - k0, BLOCK_K), 0).to(acc_t), 1)
        part = part_ptr + (r32 // C).to(tl.int64) * 4 * C + c
        ok = r_ok
    tl.store(part, n, mask=ok)
    tl.store(part + C, shift, mask=ok)
    tl.store(part + 2 * C, mean, mask=ok)
    tl.store(part + 3 * C, m2, mask=ok)


def _rows_autotuned(kernel, row_configs=ROW_CONFIGS, restore_value=None):
    """{layout: `kernel` autotuned over that layout's row tiles}."""
    return {name: autotune(configs, _ROW_INTERPRETER_CONFIG, key=["R", "K", "C"], restore_value=restore_value)(kernel)
            for name, configs in row_configs.items()}


# bn_relu_ passes y = z: autotuning runs every config on it, so each must start from the same z.
_bn_relu = _rows_autotuned(_bn_relu_kernel, restore_value=["y_ptr"])
_bn_relu_sums = _rows_autotuned(_bn_relu_sums_kernel)
_bn_relu_grad = _rows_autotuned(_bn_relu_grad_kernel)
_batch_stats = _rows_autotuned(_batch_stats_kernel, STATS_ROW_CONFIGS)


def _rows(z, name="z"):
    """(layout, R, K, C) of a 4-D z seen as [R, K] rows."""
    if z.dim() != 4:
        raise ValueError(f"fastgan triton: {name} must be 4-D, got shape {tuple(z.shape)}")
    n, c, h, w = z.shape
    zl = layout(z, name)
    return (zl, n * h * w, c, c) if zl == "channels_last" else (zl, n * c, h * w, c)


def _check_vectors(z, **vectors):
    want = _acc_dtype(z)
    for name, v in vectors.items():
        if v.dim() != 1 or v.shape[0] != z.shape[1] or v.dtype != want or v.device != z.device or v.stride(0) != 1:
            raise ValueError(f"fastgan triton: {name} must be a contiguous {want} vector of {z.shape[1]} values on "
                             f"{z.device}, got {v.dtype} of shape {tuple(v.shape)} on {v.device}")


def _row_grid(r, k):
    """The grid of `_row_tile`'s programs over [r, k] rows."""
    return lambda meta: (triton.cdiv(r, meta["BLOCK_R"]) * triton.cdiv(k, meta["BLOCK_K"]),)


# The channels-last chunk kernels (batch_stats, the backward's pass 1): t chunks of rows on grid axis 0,
# channel blocks on axis 1, which allows 65535 programs (a flat grid spilled registers in float64 on sm_80).
_MAX_CHUNK_CHANNELS = 65535 * min(c.kwargs["BLOCK_K"] for c in
                                  ([_ROW_INTERPRETER_CONFIG] if INTERPRET else ROW_CONFIGS["channels_last"]))


def _chunk_grid(t, k, name):
    if k > _MAX_CHUNK_CHANNELS:
        raise ValueError(f"fastgan triton: {name} has {k} channels; channels-last batch statistics and their "
                         f"backward take at most {_MAX_CHUNK_CHANNELS}")
    return lambda meta: (t, triton.cdiv(k, meta["BLOCK_K"]))


def _bn_relu_into(z, y, mean, scale, shift, negative_slope):
    zl, r, k, c = _rows(z)
    _check_vectors(z, mean=mean, scale=scale, shift=shift)
    if z.numel() > 0:
        with device_guard(z):
            _bn_relu[zl][_row_grid(r, k)](z, y, mean, scale, shift, r, k, c, fp64_scalar(negative_slope),
                                         CHANNELS_LAST=_LAYOUT_FLAG[zl])
    return y


def bn_relu(z, mean, scale, shift, negative_slope):
    """act((z - mean) * scale + shift) per channel, in z's layout; act(u) = u > 0 ? u : negative_slope * u."""
    return _bn_relu_into(z, torch.empty_like(z), mean, scale, shift, negative_slope)


def bn_relu_(z, mean, scale, shift, negative_slope):
    """bn_relu in place: z <- act((z - mean) * scale + shift)."""
    _bn_relu_into(z, z, mean, scale, shift, negative_slope)


@triton.jit
def _bn_finalize_kernel(mean_ptr, var_ptr, gamma_ptr, beta_ptr, invstd_ptr, scale_ptr, shift_ptr, rmean_ptr, rvar_ptr,
                        nbt_ptr, bias_ptr, C, eps: "fp64", momentum: "fp64", unbias: "fp64",
                        HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr, UPDATE: tl.constexpr, HAS_NBT: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """bn_finalize (csrc/schemas.h) in one program: it reads num_batches_tracked before it writes it
    (a grid of programs could read it after)."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    m = momentum
    if UPDATE and HAS_NBT:
        n = tl.load(nbt_ptr) + 1
        if momentum < 0:
            m = 1.0 / n.to(tl.float64)
        tl.debug_barrier()  # every thread has read the count before it changes
        tl.store(nbt_ptr, n)
    a = m.to(acc_t)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ok = c < C
        var = tl.load(var_ptr + c, mask=ok, other=1.0)
        invstd = _rsqrt(var + tl.cast(eps, acc_t))
        scale = invstd
        if HAS_GAMMA:
            scale = tl.load(gamma_ptr + c, mask=ok, other=1.0) * invstd
        shift = tl.zeros([BLOCK_C], dtype=acc_t)
        if HAS_BETA:
            shift = tl.load(beta_ptr + c, mask=ok, other=0.0)
        tl.store(invstd_ptr + c, invstd, mask=ok)
        tl.store(scale_ptr + c, scale, mask=ok)
        tl.store(shift_ptr + c, shift, mask=ok)
        if UPDATE:
            batch_mean = tl.load(mean_ptr + c, mask=ok, other=0.0)
            if HAS_BIAS:
                batch_mean += tl.load(bias_ptr + c, mask=ok, other=0.0).to(acc_t)
            rm = tl.load(rmean_ptr + c, mask=ok, other=0.0).to(acc_t)
            rv = tl.load(rvar_ptr + c, mask=ok, other=0.0).to(acc_t)
            _store_running(rmean_ptr + c, rm + a * (batch_mean - rm), ok)
            _store_running(rvar_ptr + c, rv + a * (var * tl.cast(unbias, acc_t) - rv), ok)


@triton.jit
def _store_running(ptr, v, mask):
    # float64 to bfloat16 through float32 (a second rounding: one bfloat16 ulp off at most, in rare
    # ties), as the interpreter turns a direct cast into garbage.
    if v.dtype == tl.float64 and ptr.dtype.element_ty == tl.bfloat16:
        v = v.to(tl.float32)
    tl.store(ptr, v.to(ptr.dtype.element_ty), mask=mask)


_FINALIZE_BLOCK_C = 4 if INTERPRET else 256  # several loop iterations on tiny test shapes


def _finalize_vector(t, name, like, own_dtype=False):
    ok = t.dim() == 1 and t.shape[0] == like.shape[0] and t.device == like.device and t.stride(0) == 1
    if not ok or (not t.is_floating_point() if own_dtype else t.dtype != like.dtype):
        want = "a floating" if own_dtype else str(like.dtype)
        raise ValueError(f"fastgan triton: {name} must be a contiguous {want} vector of {like.shape[0]} values on "
                         f"{like.device}, got {t.dtype} of shape {tuple(t.shape)} on {t.device}")


def bn_finalize(mean, var, gamma, beta, eps, running_mean, running_var, num_batches_tracked, bias, momentum, count):
    """(invstd, scale, shift) of the batch statistics, and nn.BatchNorm2d's running-statistics update in place
    (csrc/schemas.h), in one launch."""
    if mean.dim() != 1 or mean.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"fastgan triton: mean must be a float32 or float64 vector, got {mean.dtype} "
                         f"of shape {tuple(mean.shape)}")
    for name, t in (("mean", mean), ("var", var), ("gamma", gamma), ("beta", beta)):
        if t is not None:
            _finalize_vector(t, name, mean)
    update = running_mean is not None
    if update != (running_var is not None):
        raise ValueError("fastgan triton: running_mean and running_var must be given together")
    if update:
        _finalize_vector(running_mean, "running_mean", mean, own_dtype=True)
        _finalize_vector(running_var, "running_var", mean, own_dtype=True)
        if count <= 1:
            raise ValueError(f"fastgan triton: count must be > 1 to update the running variance, got {count}")
        if momentum < 0 and num_batches_tracked is None:
            raise ValueError("fastgan triton: momentum < 0 (the cumulative average) needs num_batches_tracked")
    if num_batches_tracked is not None and (num_batches_tracked.numel() != 1 or
                                            num_batches_tracked.dtype != torch.int64 or
                                            num_batches_tracked.device != mean.device):
        raise ValueError("fastgan triton: num_batches_tracked must be a one-element int64 tensor on mean's device")
    if bias is not None:
        _finalize_vector(bias, "bias", mean, own_dtype=True)
    invstd, scale, shift = (torch.empty_like(mean) for _ in range(3))
    c = mean.shape[0]
    if c == 0:
        return invstd, scale, shift
    # Pointers a variant does not read get `mean` (never dereferenced).
    with device_guard(mean):
        _bn_finalize_kernel[(1,)](
            mean, var, mean if gamma is None else gamma, mean if beta is None else beta, invstd, scale, shift,
            running_mean if update else mean, running_var if update else mean,
            mean if num_batches_tracked is None else num_batches_tracked, mean if bias is None else bias, c,
            fp64_scalar(eps), fp64_scalar(momentum), fp64_scalar(count / (count - 1) if update else 1.0),
            HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None, UPDATE=update,
            HAS_NBT=num_batches_tracked is not None, HAS_BIAS=bias is not None, BLOCK_C=_FINALIZE_BLOCK_C)
    return invstd, scale, shift


def batch_stats(z):
    """(mean, var): the per-channel mean and biased variance of a 4-D z over (N, H, W), float32
    (float64 for float64 z); NaN for an empty z."""
    zl, r, k, c = _rows(z)
    if not z.is_floating_point():
        raise ValueError(f"fastgan triton: z must be a floating-point tensor, got {z.dtype}")
    if zl == "channels_last":
        t = triton.cdiv(r, _CHUNK_ROWS)
        grid = _chunk_grid(t, k, "z")
    else:
        t = z.shape[0]

        def grid(meta):
            return (triton.cdiv(r, meta["BLOCK_R"]),)
    part = torch.empty((t, 4, c), dtype=_acc_dtype(z), device=z.device)
    if z.numel() > 0:
        with device_guard(z):
            _batch_stats[zl][grid](z, part, r, k, c, _CHUNK_ROWS, CHANNELS_LAST=_LAYOUT_FLAG[zl])
    return _finalize_stats(z, part, t)


def batch_stats_finalize(z, gamma, beta, eps, running_mean, running_var, num_batches_tracked, bias, momentum):
    """(mean, var, invstd, scale, shift): batch_stats, then bn_finalize with count = N * H * W."""
    if z.dim() == 4 and z.numel() == 0:
        raise ValueError(f"fastgan triton: batch_stats_finalize of an empty z {tuple(z.shape)}")
    mean, var = batch_stats(z)
    invstd, scale, shift = bn_finalize(mean, var, gamma, beta, eps, running_mean, running_var, num_batches_tracked,
                                       bias, momentum, z.numel() // z.shape[1])
    return mean, var, invstd, scale, shift


def _backward_inputs(grad_y, z, mean, invstd, gamma, beta):
    """(grad_y in z's layout, gamma, beta, affine) checked; gamma and beta are `mean` (not read)
    without affine."""
    zl = _rows(z)[0]
    if grad_y.shape != z.shape:
        raise ValueError(f"fastgan triton: grad_y has shape {tuple(grad_y.shape)}, z {tuple(z.shape)}")
    # grad_y may come in either layout (csrc/schemas.h): brought to z's.
    grad_y = grad_y.contiguous(memory_format=torch.contiguous_format if z.is_contiguous() else torch.channels_last)
    check_like(grad_y, "grad_y", z, zl)
    _check_vectors(z, mean=mean, invstd=invstd)
    given = {name: t for name, t in (("gamma", gamma), ("beta", beta)) if t is not None}
    affine = bool(given)
    if affine:  # one of them alone: the other as BatchNorm2d's default (gamma 1, beta 0), as cpu and cuda
        _check_vectors(z, **given)
        gamma = torch.ones_like(beta) if gamma is None else gamma
        beta = torch.zeros_like(gamma) if beta is None else beta
    else:
        gamma = beta = mean  # not read
    return grad_y, gamma, beta, affine


def _backward_sums(grad_y, z, mean, invstd, gamma, beta, affine, negative_slope):
    """(grad_gamma, grad_beta, coef): the reduce pass and its merge, coef [3, C] the coefficients of
    grad_z; a non-empty z."""
    zl, r, k, c = _rows(z)
    # Written whole by the finalize kernel: no fill launches.
    grad_gamma = torch.empty(c, dtype=mean.dtype, device=z.device)
    grad_beta = torch.empty(c, dtype=mean.dtype, device=z.device)
    if zl == "channels_last":
        t = triton.cdiv(r, _CHUNK_ROWS)
        sums_grid = _chunk_grid(t, k, "z")
    else:
        t = z.shape[0]

        def sums_grid(meta):
            return (triton.cdiv(r, meta["BLOCK_R"]),)
    part = torch.empty((t, 2, c), dtype=mean.dtype, device=z.device)
    coef = torch.empty((3, c), dtype=mean.dtype, device=z.device)
    with device_guard(z):
        _bn_relu_sums[zl][sums_grid](
            grad_y, z, mean, invstd, gamma, beta, part, r, k, c, _CHUNK_ROWS, fp64_scalar(negative_slope),
            AFFINE=affine, CHANNELS_LAST=_LAYOUT_FLAG[zl])
        _finalize_backward_kernel[(triton.cdiv(c, _FINALIZE_LAUNCH.kwargs["BLOCK_C"]),)](
            part, invstd, gamma, grad_gamma, grad_beta, coef, t, c, r * k // c, AFFINE=affine,
            **_FINALIZE_LAUNCH.kwargs, num_warps=_FINALIZE_LAUNCH.num_warps)
    return grad_gamma, grad_beta, coef


def _backward_grad_z(grad_y, z, mean, invstd, gamma, beta, affine, negative_slope, coef):
    """grad_z = coef[0] * (gm - coef[1] - xhat * coef[2])."""
    zl, r, k, c = _rows(z)
    grad_z = torch.empty_like(z)
    with device_guard(z):
        _bn_relu_grad[zl][_row_grid(r, k)](grad_y, z, mean, invstd, gamma, beta, coef, grad_z, r, k, c,
                                          fp64_scalar(negative_slope), AFFINE=affine, CHANNELS_LAST=_LAYOUT_FLAG[zl])
    return grad_z


def bn_relu_backward(grad_y, z, mean, invstd, gamma, beta, negative_slope):
    """(grad_z, grad_gamma, grad_beta) of y = act((z - mean) * invstd * gamma + beta), batch statistics;
    act's derivative is 1 where its input is positive, else negative_slope."""
    grad_y, gamma, beta, affine = _backward_inputs(grad_y, z, mean, invstd, gamma, beta)
    if z.numel() == 0:
        return torch.empty_like(z), torch.zeros_like(mean), torch.zeros_like(mean)
    grad_gamma, grad_beta, coef = _backward_sums(grad_y, z, mean, invstd, gamma, beta, affine, negative_slope)
    grad_z = _backward_grad_z(grad_y, z, mean, invstd, gamma, beta, affine, negative_slope, coef)
    return grad_z, grad_gamma, grad_beta


def bn_relu_backward_reduce(grad_y, z, mean, invstd, gamma, beta, negative_slope):
    """(sum_dy_xhat, sum_dy): bn_relu_backward's (grad_gamma, grad_beta) without grad_z."""
    grad_y, gamma, beta, affine = _backward_inputs(grad_y, z, mean, invstd, gamma, beta)
    if z.numel() == 0:
        return torch.zeros_like(mean), torch.zeros_like(mean)
    return _backward_sums(grad_y, z, mean, invstd, gamma, beta, affine, negative_slope)[:2]


def bn_relu_backward_elemt(grad_y, z, mean, invstd, gamma, beta, negative_slope, sum_dy_xhat, sum_dy, count):
    """grad_z from the sums over `count` values (a one-element tensor): the statistics of several
    processes' batches (csrc/schemas.h). The coefficients in torch ops."""
    grad_y, gamma, beta, affine = _backward_inputs(grad_y, z, mean, invstd, gamma, beta)
    _check_vectors(z, sum_dy_xhat=sum_dy_xhat, sum_dy=sum_dy)
    if count.numel() != 1 or count.dtype != mean.dtype or count.device != z.device:
        raise ValueError(f"fastgan triton: count must be a one-element {mean.dtype} tensor on z's device, got "
                         f"{count.dtype} of shape {tuple(count.shape)} on {count.device}")
    if z.numel() == 0:
        return torch.empty_like(z)
    k = invstd * gamma if affine else invstd
    coef = torch.stack((k, sum_dy / count, sum_dy_xhat / count))
    return _backward_grad_z(grad_y, z, mean, invstd, gamma, beta, affine, negative_slope, coef)


def bn_gather_finalize(stats, gamma, beta, eps, running_mean, running_var, num_batches_tracked, bias, momentum):
    """(mean, var, invstd, scale, shift, count): the processes' rows of stats [P, 2C + 1] = (count,
    mean, var) merged in row order (Chan), then bn_finalize (csrc/schemas.h). The merge in torch ops;
    the running variance takes the merged count on the device through bn_finalize's count 2, which
    multiplies by 2 / (2 - 1) exactly."""
    if (stats.dim() != 2 or stats.shape[0] == 0 or stats.shape[1] < 3 or stats.shape[1] % 2 == 0
            or stats.dtype not in (torch.float32, torch.float64) or not stats.is_contiguous()):
        raise ValueError("fastgan triton: stats must be a contiguous float32 or float64 tensor [P, 2C + 1] (a row "
                         f"of count, mean, var per process), got {stats.dtype} of shape {tuple(stats.shape)}")
    mean, var, count = merge_rows(stats)
    invstd, scale, shift = bn_finalize(mean, var, gamma, beta, eps, None, None, None, None, momentum, 0)
    if running_mean is not None or running_var is not None:
        bn_finalize(mean, var * (count / (count - 1)) * 0.5, None, None, eps, running_mean, running_var,
                    num_batches_tracked, bias, momentum, 2)
    return mean, var, invstd, scale, shift, count


# ---------------------------------------------------------------------------
# Ahead-of-time compile specs.


class _AccPointer(str):
    """The signature type of a per-channel vector: the AOT test formats each type with the tensor
    dtype, and these are float32 for every input dtype but float64."""

    def format(self, dtype):
        return "*fp64" if dtype == "fp64" else "*fp32"


def _signature(pointers, ints, vector_pointers=(), constexprs=(), floats=()):
    """Tensor pointers in the input dtype, per-channel vectors in its accumulation dtype, float64
    scalars (in the kernels' argument order: pointers, vectors, integers, floats, constexprs)."""
    sig = {p: "*{dtype}" for p in pointers}
    sig.update({p: _AccPointer("*{acc}") for p in vector_pointers})
    sig.update({i: "i32" for i in ints})
    sig.update({f: "fp64" for f in floats})
    sig.update({c: "constexpr" for c in constexprs})
    return sig


_CONV_INTS = ("N", "C_in", "H_in", "W_in", "C_out", "H_out", "W_out", "Hq", "Wq",
              "stride_h", "stride_w", "pad_h", "pad_w", "kH", "kW", "w_s_ci", "w_s_kh", "w_s_kw")
_ROW_BLOCKS = ("BLOCK_R", "BLOCK_K")


def _row_variants(extra=({},), row_configs=ROW_CONFIGS):
    return tuple((f"{name}{'-' + '-'.join(f'{k}={v}' for k, v in e.items()) if e else ''}",
                  {"CHANNELS_LAST": flag, **e}, row_configs[name])
                 for name, flag in _LAYOUT_FLAG.items() for e in extra)


_AFFINE = ({"AFFINE": True}, {"AFFINE": False})

KERNEL_SPECS = [
    KernelSpec("conv_transpose", _conv_transpose_kernel,
               _signature(("x_ptr", "w_ptr", "z_ptr", "bias_ptr"), _CONV_INTS + ("relu",),
                          vector_pointers=("part_ptr",),
                          constexprs=("w_s_co", "STATS", "FP32_MMA", "BLOCK_M", "BLOCK_N", "BLOCK_K")),
               tuple((f"{'stats' if stats else 'bias'}-{'tf32' if mma else 'fp32'}",
                      {"w_s_co": 1, "STATS": stats, "FP32_MMA": mma}, MMA_CONFIGS if mma else FMA_CONFIGS)
                     for stats in (True, False) for mma in (True, False)), dots=True),
    KernelSpec("conv_transpose_finalize_stats", _finalize_stats_kernel,
               _signature((), ("T", "C"), vector_pointers=("part_ptr", "mean_ptr", "var_ptr"),
                          constexprs=("BLOCK_T", "BLOCK_C")),
               (("default", {}, [FINALIZE_CONFIG]),)),
    KernelSpec("bn_relu", _bn_relu_kernel,
               _signature(("z_ptr", "y_ptr"), ("R", "K", "C"), vector_pointers=("mean_ptr", "scale_ptr", "shift_ptr"),
                          floats=("negative_slope",), constexprs=("CHANNELS_LAST",) + _ROW_BLOCKS),
               _row_variants()),
    KernelSpec("bn_finalize", _bn_finalize_kernel,
               {**_signature((), ("C",), vector_pointers=("mean_ptr", "var_ptr", "gamma_ptr", "beta_ptr", "invstd_ptr",
                                                          "scale_ptr", "shift_ptr", "rmean_ptr", "rvar_ptr"),
                             floats=("eps", "momentum", "unbias")),
                "nbt_ptr": "*i64", "bias_ptr": "*{dtype}",
                **dict.fromkeys(("HAS_GAMMA", "HAS_BETA", "UPDATE", "HAS_NBT", "HAS_BIAS", "BLOCK_C"), "constexpr")},
               tuple((name, {"HAS_GAMMA": affine, "HAS_BETA": affine, "UPDATE": update, "HAS_NBT": update,
                             "HAS_BIAS": update, "BLOCK_C": 256}, [triton.Config({})])
                     for name, affine, update in (("train", True, True), ("train-no-affine", False, True),
                                                  ("no-update", True, False)))),
    KernelSpec("batch_stats", _batch_stats_kernel,
               _signature(("z_ptr",), ("R", "K", "C", "chunk_rows"), vector_pointers=("part_ptr",),
                          constexprs=("CHANNELS_LAST",) + _ROW_BLOCKS),
               _row_variants(row_configs=STATS_ROW_CONFIGS)),
    KernelSpec("bn_relu_backward_sums", _bn_relu_sums_kernel,
               _signature(("g_ptr", "z_ptr"), ("R", "K", "C", "chunk_rows"),
                          vector_pointers=("mean_ptr", "invstd_ptr", "gamma_ptr", "beta_ptr", "part_ptr"),
                          floats=("negative_slope",), constexprs=("AFFINE", "CHANNELS_LAST") + _ROW_BLOCKS),
               _row_variants(_AFFINE)),
    KernelSpec("bn_relu_backward_finalize", _finalize_backward_kernel,
               _signature((), ("T", "C", "n"), vector_pointers=("part_ptr", "invstd_ptr", "gamma_ptr", "grad_gamma_ptr",
                                                               "grad_beta_ptr", "coef_ptr"),
                          constexprs=("AFFINE", "BLOCK_T", "BLOCK_C")),
               tuple((f"AFFINE={a['AFFINE']}", a, [FINALIZE_CONFIG]) for a in _AFFINE)),
    KernelSpec("bn_relu_backward_grad", _bn_relu_grad_kernel,
               _signature(("g_ptr", "z_ptr", "out_ptr"), ("R", "K", "C"),
                          vector_pointers=("mean_ptr", "invstd_ptr", "gamma_ptr", "beta_ptr", "coef_ptr"),
                          floats=("negative_slope",), constexprs=("AFFINE", "CHANNELS_LAST") + _ROW_BLOCKS),
               _row_variants(_AFFINE)),
]
