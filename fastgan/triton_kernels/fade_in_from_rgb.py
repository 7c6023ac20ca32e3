"""Discriminator-side fade-in (SPEC 6) and its backward:

    out = (1 - alpha) * lrelu(z) + alpha * x_high,  z = w_mul * W p + b_mul * bias,  p = avg_pool_2x2(img)
    gz  = (1 - alpha) * lrelu'(z) * grad:  grad_img = up_2x(w_mul * W^T gz) / 4,  grad_x_high = alpha * grad,
          grad_weight = w_mul * sum gz p^T,  grad_bias = b_mul * sum gz

The double backward's gradient-penalty terms (schemas.h) run as the backward's programs,
pooling gg_img as well.

A program owns BLOCK_P low-resolution pixels (flattened over N, H, W) and pools their
Ci colours. The 1x1 conv is unrolled over the CI colours as 2-D multiply-adds on
[BLOCK_O, BLOCK_P] tiles, z = bias + sum_i W[:, i] p_i; not a broadcast product summed
over the colour axis, tl.sum(w[:, :, None] * p[None], axis=1): Triton's combine pass
rewrites that into a tl.dot in TF32, which Triton 3.6 lowers (K = CI_PAD = 4) to a k = 8
MMA fed the 4 values twice, doubling the sum on GPU (the interpreter runs it as written).
The forward's programs also split the Co channels in BLOCK_O blocks; a backward program
keeps p [CI_PAD, BLOCK_P], walks all the channel blocks, accumulates grad_p, writes
grad_img, and stores its sums for the weight and bias in a row of partials that
`_reduce_kernel` adds up in order.
Tensors are addressed through their strides (either layout); a stride of 1 is
specialized by Triton, so the contiguous axis is known at compile time.
"""

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, KernelSpec, autotune, check_like, compute_dtype, device_guard, fp64_scalar, layout

# [BLOCK_O, BLOCK_P] output tiles.
CONFIGS = [
    triton.Config({"BLOCK_O": 16, "BLOCK_P": 64}, num_warps=4),
    triton.Config({"BLOCK_O": 32, "BLOCK_P": 32}, num_warps=4),
]
_INTERPRETER_CONFIG = triton.Config({"BLOCK_O": 4, "BLOCK_P": 4})
_REDUCE_BLOCK = 64


@triton.jit
def _pooled(img_ptr, q, q_mask, HW, W, is_n, is_c, is_h, is_w, CI: tl.constexpr, CI_PAD: tl.constexpr,
            acc_t: tl.constexpr):
    """p [CI_PAD, BLOCK_P] of pixels q (zero in the padding rows), the offsets and mask of the
    top-left image values of their 2x2 blocks, and the pixels' (n, h, w)."""
    n = q // HW
    hw = q % HW
    h = hw // W
    w = hw % W
    i = tl.arange(0, CI_PAD)
    offs = i[:, None].to(tl.int64) * is_c + (n * is_n + 2 * h * is_h + 2 * w * is_w)[None, :]
    mask = (i < CI)[:, None] & q_mask[None, :]
    total = tl.load(img_ptr + offs, mask=mask, other=0.0).to(acc_t)
    total += tl.load(img_ptr + offs + is_w, mask=mask, other=0.0).to(acc_t)
    total += tl.load(img_ptr + offs + is_h, mask=mask, other=0.0).to(acc_t)
    total += tl.load(img_ptr + offs + is_h + is_w, mask=mask, other=0.0).to(acc_t)
    return 0.25 * total, offs, mask, n, h, w


@triton.jit
def _pooled_row(img_ptr, top, is_h, is_w, mask, acc_t: tl.constexpr):
    """avg_pool_2x2 of one colour, [BLOCK_P]: `top` holds the offsets of the 2x2 blocks' top-left values."""
    total = tl.load(img_ptr + top, mask=mask, other=0.0).to(acc_t)
    total += tl.load(img_ptr + top + is_w, mask=mask, other=0.0).to(acc_t)
    total += tl.load(img_ptr + top + is_h, mask=mask, other=0.0).to(acc_t)
    total += tl.load(img_ptr + top + is_h + is_w, mask=mask, other=0.0).to(acc_t)
    return 0.25 * total


@triton.jit
def _row(t, r, ROWS: tl.constexpr):
    """Row r of a [ROWS, BLOCK] tile, as a [BLOCK] vector."""
    return tl.sum(tl.where(tl.arange(0, ROWS)[:, None] == r, t, 0.0), axis=0)


@triton.jit
def _weight(w_ptr, o, i, CO, w_mul, CI: tl.constexpr, acc_t: tl.constexpr):
    """w_mul * W[o, i], [BLOCK_O] (zero for o >= CO)."""
    return w_mul * tl.load(w_ptr + o * CI + i, mask=o < CO, other=0.0).to(acc_t)


@triton.jit
def _bias_tile(b_ptr, o, CO, b_mul, BLOCK_P: tl.constexpr, acc_t: tl.constexpr):
    """b_mul * bias[o] broadcast to [BLOCK_O, BLOCK_P]."""
    bias = b_mul * tl.load(b_ptr + o, mask=o < CO, other=0.0).to(acc_t)
    return bias[:, None] + tl.zeros([1, BLOCK_P], dtype=acc_t)


@triton.jit
def _conv(w_ptr, b_ptr, p, o, CO, w_mul, b_mul, CI: tl.constexpr, CI_PAD: tl.constexpr, BLOCK_P: tl.constexpr,
          acc_t: tl.constexpr):
    """z [BLOCK_O, BLOCK_P] of channels o from the tile p: b_mul * bias + sum_i w_mul * W[:, i] p_i."""
    z = _bias_tile(b_ptr, o, CO, b_mul, BLOCK_P, acc_t)
    for i in tl.static_range(CI):
        z += _weight(w_ptr, o, i, CO, w_mul, CI, acc_t)[:, None] * _row(p, i, CI_PAD)[None, :]
    return z


@triton.jit
def _forward_kernel(img_ptr, xh_ptr, w_ptr, b_ptr, out_ptr, P, HW, W, CO,
                    is_n, is_c, is_h, is_w, xs_n, xs_c, xs_h, xs_w,
                    alpha: "fp64", w_mul: "fp64", b_mul: "fp64", slope: "fp64",
                    CI: tl.constexpr, CI_PAD: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(out_ptr.dtype.element_ty)
    q = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    q_mask = q < P
    n = q // HW
    h = q % HW // W
    w = q % W
    top = n * is_n + 2 * h * is_h + 2 * w * is_w
    z = _bias_tile(b_ptr, o, CO, tl.cast(b_mul, acc_t), BLOCK_P, acc_t)
    for i in tl.static_range(CI):  # colour by colour: with a [CI_PAD, BLOCK_P] tile, ptxas spills (float16)
        pi = _pooled_row(img_ptr, top + i * is_c, is_h, is_w, q_mask, acc_t)
        z += _weight(w_ptr, o, i, CO, tl.cast(w_mul, acc_t), CI, acc_t)[:, None] * pi[None, :]
    y = tl.where(z > 0, z, z * tl.cast(slope, acc_t))
    offs = o[:, None].to(tl.int64) * xs_c + (n * xs_n + h * xs_h + w * xs_w)[None, :]
    mask = (o < CO)[:, None] & q_mask[None, :]
    xh = tl.load(xh_ptr + offs, mask=mask, other=0.0).to(acc_t)
    a = tl.cast(alpha, acc_t)
    tl.store(out_ptr + offs, ((1.0 - a) * y + a * xh).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(grad_ptr, img_ptr, w_ptr, b_ptr, gimg_ptr, gxh_ptr, partial_ptr, P, HW, W, CO,
                     is_n, is_c, is_h, is_w, xs_n, xs_c, xs_h, xs_w,
                     alpha: "fp64", w_mul: "fp64", b_mul: "fp64", slope: "fp64",
                     CI: tl.constexpr, CI_PAD: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_t: tl.constexpr = compute_dtype(grad_ptr.dtype.element_ty)
    pid = tl.program_id(0)
    q = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    q_mask = q < P
    p, img_offs, img_mask, n, h, w = _pooled(img_ptr, q, q_mask, HW, W, is_n, is_c, is_h, is_w, CI, CI_PAD, acc_t)
    a = tl.cast(alpha, acc_t)
    sl = tl.cast(slope, acc_t)
    wm = tl.cast(w_mul, acc_t)
    pix = (n * xs_n + h * xs_h + w * xs_w)[None, :]
    rows = tl.arange(0, CI_PAD)[:, None]
    row = partial_ptr + pid.to(tl.int64) * CO * (CI + 1)  # [o * (CI + 1) + i]: weight sums; + CI: bias
    gp = tl.zeros([CI_PAD, BLOCK_P], dtype=acc_t)
    for o0 in range(0, CO, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        o_mask = o < CO
        z = _conv(w_ptr, b_ptr, p, o, CO, wm, tl.cast(b_mul, acc_t), CI, CI_PAD, BLOCK_P, acc_t)
        offs = o[:, None].to(tl.int64) * xs_c + pix
        mask = o_mask[:, None] & q_mask[None, :]
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_t)
        tl.store(gxh_ptr + offs, (a * g).to(gxh_ptr.dtype.element_ty), mask=mask)
        gz = (1.0 - a) * g * tl.where(z > 0, 1.0, sl)  # zero outside the mask, as g is
        o_sums = row + o.to(tl.int64) * (CI + 1)
        for i in tl.static_range(CI):
            gp_i = tl.sum(_weight(w_ptr, o, i, CO, wm, CI, acc_t)[:, None] * gz, axis=0)
            gp += tl.where(rows == i, gp_i[None, :], 0.0)
            tl.store(o_sums + i, tl.sum(gz * _row(p, i, CI_PAD)[None, :], axis=1), mask=o_mask)
        tl.store(o_sums + CI, tl.sum(gz, axis=1), mask=o_mask)
    v = (0.25 * gp).to(gimg_ptr.dtype.element_ty)
    tl.store(gimg_ptr + img_offs, v, mask=img_mask)
    tl.store(gimg_ptr + img_offs + is_w, v, mask=img_mask)
    tl.store(gimg_ptr + img_offs + is_h, v, mask=img_mask)
    tl.store(gimg_ptr + img_offs + is_h + is_w, v, mask=img_mask)


@triton.jit
def _reduce_kernel(partial_ptr, gw_ptr, gb_ptr, ROWS, CO, w_mul: "fp64", b_mul: "fp64",
                   CI: tl.constexpr, BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """Columns col = o * (CI + BIAS) + i of the partials, summed over the rows in order, scaled:
    the weight's (i < CI) and, with BIAS, the bias's (i == CI)."""
    acc_t: tl.constexpr = partial_ptr.dtype.element_ty
    WIDTH: tl.constexpr = CI + BIAS
    col = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.cast(CO, tl.int64) * WIDTH
    mask = col < cols
    total = tl.zeros([BLOCK], dtype=acc_t)
    for r in range(ROWS):
        total += tl.load(partial_ptr + r * cols + col, mask=mask, other=0.0)
    o = col // WIDTH
    i = col % WIDTH
    tl.store(gw_ptr + o * CI + i, (tl.cast(w_mul, acc_t) * total).to(gw_ptr.dtype.element_ty), mask=mask & (i < CI))
    if BIAS:
        tl.store(gb_ptr + o, (tl.cast(b_mul, acc_t) * total).to(gb_ptr.dtype.element_ty), mask=mask & (i == CI))


@triton.jit
def _double_backward_kernel(grad_ptr, img_ptr, ggimg_ptr, w_ptr, b_ptr, dgrad_ptr, partial_ptr, P, HW, W, CO,
                            is_n, is_c, is_h, is_w, xs_n, xs_c, xs_h, xs_w,
                            alpha: "fp64", w_mul: "fp64", b_mul: "fp64", slope: "fp64",
                            NEED_GRAD: tl.constexpr, NEED_WEIGHT: tl.constexpr, CI: tl.constexpr,
                            CI_PAD: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr):
    """The gradient penalty's terms (schemas.h: fade_in_from_rgb_double_backward), programs as the
    backward's: d_grad = (1 - alpha) * m * w_mul * W q, and the rows of partials [o * CI + i] of
    sum m * grad * q_i, with q = avg_pool_2x2(gg_img) (img's strides) and m = lrelu'(z)."""
    acc_t: tl.constexpr = compute_dtype(grad_ptr.dtype.element_ty)
    pid = tl.program_id(0)
    q = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    q_mask = q < P
    p, _, _, n, h, w = _pooled(img_ptr, q, q_mask, HW, W, is_n, is_c, is_h, is_w, CI, CI_PAD, acc_t)
    gq, _, _, _, _, _ = _pooled(ggimg_ptr, q, q_mask, HW, W, is_n, is_c, is_h, is_w, CI, CI_PAD, acc_t)
    a = tl.cast(alpha, acc_t)
    sl = tl.cast(slope, acc_t)
    wm = tl.cast(w_mul, acc_t)
    pix = (n * xs_n + h * xs_h + w * xs_w)[None, :]
    row = partial_ptr + pid.to(tl.int64) * CO * CI
    for o0 in range(0, CO, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        o_mask = o < CO
        z = _conv(w_ptr, b_ptr, p, o, CO, wm, tl.cast(b_mul, acc_t), CI, CI_PAD, BLOCK_P, acc_t)
        m = tl.where(z > 0, 1.0, sl)
        offs = o[:, None].to(tl.int64) * xs_c + pix
        mask = o_mask[:, None] & q_mask[None, :]
        if NEED_GRAD:
            t = tl.zeros([BLOCK_O, BLOCK_P], dtype=acc_t)
            for i in tl.static_range(CI):
                t += _weight(w_ptr, o, i, CO, wm, CI, acc_t)[:, None] * _row(gq, i, CI_PAD)[None, :]
            tl.store(dgrad_ptr + offs, ((1.0 - a) * m * t).to(dgrad_ptr.dtype.element_ty), mask=mask)
        if NEED_WEIGHT:
            gm = m * tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_t)  # zero outside the mask
            o_sums = row + o.to(tl.int64) * CI
            for i in tl.static_range(CI):
                tl.store(o_sums + i, tl.sum(gm * _row(gq, i, CI_PAD)[None, :], axis=1), mask=o_mask)


_forward = autotune(CONFIGS, _INTERPRETER_CONFIG, key=["P", "CO", "is_c", "xs_c"])(_forward_kernel)
_MAX_CO = 65535 * min(c.kwargs["BLOCK_O"] for c in CONFIGS)  # channel blocks on grid axis 1: 65535 programs
# The backward is not autotuned: its grid and its partials (one row a program) depend on BLOCK_P.
_BACKWARD_GPU_CONFIG = triton.Config({"BLOCK_O": 16, "BLOCK_P": 32}, num_warps=8)
_BACKWARD_CONFIG = _INTERPRETER_CONFIG if INTERPRET else _BACKWARD_GPU_CONFIG


def _check(img, x_high, weight, bias, x_name):
    if img.dim() != 4 or x_high.dim() != 4:
        raise ValueError(f"fastgan triton: img and {x_name} must be 4-D, got {tuple(img.shape)}, {tuple(x_high.shape)}")
    n, co, h, w = x_high.shape
    ci = img.shape[1]
    if tuple(img.shape) != (n, ci, 2 * h, 2 * w) or tuple(weight.shape) != (co, ci, 1, 1) or \
            tuple(bias.shape) != (co,):
        raise ValueError(f"fastgan triton: shapes img {tuple(img.shape)}, {x_name} {tuple(x_high.shape)}, weight "
                         f"{tuple(weight.shape)}, bias {tuple(bias.shape)} do not match")
    check_like(img, "img", x_high, layout(x_high, x_name))
    check_like(weight, "weight", x_high, "nchw")
    check_like(bias, "bias", x_high, "nchw")
    return n * h * w, h * w, w, co, ci


def _scalars(alpha, w_mul, b_mul, slope):
    return [fp64_scalar(v) for v in (alpha, w_mul, b_mul, slope)]


def fade_in_from_rgb(img, x_high, weight, bias, alpha, w_mul, b_mul, slope):
    """(1 - alpha) * lrelu(w_mul * W avg_pool_2x2(img) + b_mul * bias) + alpha * x_high, in x_high's layout."""
    p, hw, w, co, ci = _check(img, x_high, weight, bias, "x_high")
    out = torch.empty_like(x_high)
    if out.numel() == 0:
        return out
    if co > _MAX_CO:
        raise ValueError(f"fastgan triton: x_high has {co} channels; at most {_MAX_CO}")
    with device_guard(x_high):
        _forward[lambda meta: (triton.cdiv(p, meta["BLOCK_P"]), triton.cdiv(co, meta["BLOCK_O"]))](
            img, x_high, weight, bias, out, p, hw, w, co, *img.stride(), *x_high.stride(),
            *_scalars(alpha, w_mul, b_mul, slope), CI=ci, CI_PAD=triton.next_power_of_2(ci))
    return out


def fade_in_from_rgb_backward(grad, img, weight, bias, alpha, w_mul, b_mul, slope):
    """(grad_img, grad_x_high, grad_weight, grad_bias); the first two in grad's layout."""
    p, hw, w, co, ci = _check(img, grad, weight, bias, "grad")
    g_img = torch.empty_like(img)
    g_xh = torch.empty_like(grad)
    g_weight = torch.empty_like(weight)
    g_bias = torch.empty_like(bias)
    if grad.numel() == 0:
        return g_img.zero_(), g_xh, g_weight.zero_(), g_bias.zero_()
    config = _BACKWARD_CONFIG
    rows = triton.cdiv(p, config.kwargs["BLOCK_P"])
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    partial = torch.empty(rows * co * (ci + 1), dtype=acc, device=grad.device)
    with device_guard(grad):
        _backward_kernel[(rows,)](grad, img, weight, bias, g_img, g_xh, partial, p, hw, w, co, *img.stride(),
                                  *grad.stride(), *_scalars(alpha, w_mul, b_mul, slope), CI=ci,
                                  CI_PAD=triton.next_power_of_2(ci), num_warps=config.num_warps, **config.kwargs)
        _reduce_kernel[(triton.cdiv(co * (ci + 1), _REDUCE_BLOCK),)](
            partial, g_weight, g_bias, rows, co, fp64_scalar(w_mul), fp64_scalar(b_mul), CI=ci, BIAS=True,
            BLOCK=_REDUCE_BLOCK)
    return g_img, g_xh, g_weight, g_bias


def fade_in_from_rgb_double_backward(grad, img, gg_img, weight, bias, alpha, w_mul, b_mul, slope, need_grad,
                                     need_weight):
    """(d_grad in grad's layout, d_weight), each an empty [0] when not asked for (schemas.h)."""
    p, hw, w, co, ci = _check(img, grad, weight, bias, "grad")
    if tuple(gg_img.shape) != tuple(img.shape):
        raise ValueError(f"fastgan triton: gg_img must have img's shape {tuple(img.shape)}, got {tuple(gg_img.shape)}")
    check_like(gg_img, "gg_img", grad, layout(grad, "grad"))
    d_grad = torch.empty_like(grad) if need_grad else grad.new_empty(0)
    d_weight = torch.empty_like(weight) if need_weight else weight.new_empty(0)
    if grad.numel() == 0 or not (need_grad or need_weight):
        return d_grad, d_weight.zero_()
    config = _BACKWARD_CONFIG
    rows = triton.cdiv(p, config.kwargs["BLOCK_P"])
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    partial = torch.empty(rows * co * ci if need_weight else 1, dtype=acc, device=grad.device)
    with device_guard(grad):
        _double_backward_kernel[(rows,)](
            grad, img, gg_img, weight, bias, d_grad if need_grad else grad, partial, p, hw, w, co, *img.stride(),
            *grad.stride(), *_scalars(alpha, w_mul, b_mul, slope), NEED_GRAD=need_grad, NEED_WEIGHT=need_weight,
            CI=ci, CI_PAD=triton.next_power_of_2(ci), num_warps=config.num_warps, **config.kwargs)
        if need_weight:
            _reduce_kernel[(triton.cdiv(co * ci, _REDUCE_BLOCK),)](
                partial, d_weight, d_weight, rows, co, fp64_scalar(w_mul * (1.0 - alpha)), fp64_scalar(b_mul), CI=ci,
                BIAS=False, BLOCK=_REDUCE_BLOCK)
    return d_grad, d_weight


def _variants(configs):
    """NCHW has unit strides along W, channels-last along C (specialized to 1 by Triton at launch)."""
    return (("nchw", {"is_w": 1, "xs_w": 1, "CI": 3, "CI_PAD": 4}, configs),
            ("channels_last", {"is_c": 1, "xs_c": 1, "CI": 3, "CI_PAD": 4}, configs))


_STRIDES = {name: "i64" for name in ("is_n", "is_c", "is_h", "is_w", "xs_n", "xs_c", "xs_h", "xs_w")}
_SCALARS = {"alpha": "fp64", "w_mul": "fp64", "b_mul": "fp64", "slope": "fp64"}
_TILE = {"CI": "constexpr", "CI_PAD": "constexpr", "BLOCK_O": "constexpr", "BLOCK_P": "constexpr"}
_SIZES = {"P": "i32", "HW": "i32", "W": "i32", "CO": "i32"}
KERNEL_SPECS = [
    KernelSpec("fade_in_from_rgb", _forward_kernel,
               {"img_ptr": "*{dtype}", "xh_ptr": "*{dtype}", "w_ptr": "*{dtype}", "b_ptr": "*{dtype}",
                "out_ptr": "*{dtype}", **_SIZES, **_STRIDES, **_SCALARS, **_TILE}, _variants(CONFIGS)),
    KernelSpec("fade_in_from_rgb_backward", _backward_kernel,
               {"grad_ptr": "*{dtype}", "img_ptr": "*{dtype}", "w_ptr": "*{dtype}", "b_ptr": "*{dtype}",
                "gimg_ptr": "*{dtype}", "gxh_ptr": "*{dtype}", "partial_ptr": "*fp32", **_SIZES, **_STRIDES,
                **_SCALARS, **_TILE}, _variants([_BACKWARD_GPU_CONFIG])),
    KernelSpec("fade_in_from_rgb_double_backward", _double_backward_kernel,
               {"grad_ptr": "*{dtype}", "img_ptr": "*{dtype}", "ggimg_ptr": "*{dtype}", "w_ptr": "*{dtype}",
                "b_ptr": "*{dtype}", "dgrad_ptr": "*{dtype}", "partial_ptr": "*fp32", **_SIZES, **_STRIDES,
                **_SCALARS, "NEED_GRAD": "constexpr", "NEED_WEIGHT": "constexpr", **_TILE},
               tuple((name, {**constexprs, "NEED_GRAD": True, "NEED_WEIGHT": True}, configs)
                     for name, constexprs, configs in _variants([_BACKWARD_GPU_CONFIG]))),
    KernelSpec("fade_in_from_rgb_reduce", _reduce_kernel,
               {"partial_ptr": "*fp32", "gw_ptr": "*{dtype}", "gb_ptr": "*{dtype}", "ROWS": "i32", "CO": "i32",
                "w_mul": "fp64", "b_mul": "fp64", "CI": "constexpr", "BIAS": "constexpr", "BLOCK": "constexpr"},
               tuple((name, {"CI": 3, "BIAS": bias}, [triton.Config({"BLOCK": _REDUCE_BLOCK}, num_warps=4)])
                     for name, bias in (("weight and bias", True), ("weight", False)))),
]
