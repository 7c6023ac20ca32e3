"""Shared test helpers: backends to test, input layouts, dtype tolerances, and the activation kink."""

import copy
import math

import torch

from fastgan._backend import conv_tf32_allowed
from fastgan.ops.bias_act import sum_except

CPU_BACKENDS = ["cpu", "triton"]  # triton through the interpreter (conftest)
GPU_BACKENDS = ["cuda", "triton"]
LAYOUTS = ["contiguous", "channels_last", "strided", "permuted"]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Unit roundoff u (half the spacing of the numbers in [1, 2)) of each storage dtype, and of TF32: the
# 10-bit mantissa tensor cores round float32 convolution inputs to where TF32 is allowed (cuDNN's
# torch.backends.cudnn.allow_tf32, on by default; the fused blocks' triton and cuda convolutions
# follow the same flag, so that they compute what eager computes).
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11,
                 torch.bfloat16: 2.0**-8}
TF32_UNIT_ROUNDOFF = 2.0**-11  # ~4.9e-4

# Elementwise ops (and short reductions such as pixel norm's mean square over C) against a float64
# reference computed from the same inputs. The error is a few roundings of the result (and of its
# float32 intermediates for float16 / bfloat16), so it is relative to each output; atol for outputs that
# cancel to ~0 from O(1) inputs. Measured on the H200: float32 elementwise ops <= 2e-7 (~3u).
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),  # u = 1.1e-16: generous (1e6 u) yet far below float32's
    torch.float32: dict(rtol=1e-5, atol=1e-5),  # u = 6e-8: 170u, room for sums over a few hundred terms
    torch.float16: dict(rtol=2e-3, atol=2e-3),  # u = 4.9e-4: 4u, the output's rounding and an input's
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),  # u = 3.9e-3: the same 4u
}


def conv_tolerance(dtype, tf32=None):
    """Tolerance of a convolution / GEMM output that batch norm brought to unit scale (the fused blocks'
    y = act(gamma * (z - mean) / sigma + beta), |gamma| <= 1.5 as the tests draw it), against a float64
    reference computed from the same (rounded) inputs.

    With products of inputs rounded to unit roundoff u (TF32 for float32 on a GPU, TF32 being allowed
    by default; the storage dtype for float16 / bfloat16, e.g. the weights eval folds the statistics
    into) and summed in float32, z = sum_k x_k w_k has an error sum_k x_k w_k (d1_k + d2_k), |d| <= u:
    a random walk of standard deviation sqrt(2/3) u sqrt(sum_k (x_k w_k)^2), which grows like
    u sqrt(K). Batch norm divides it by sigma ~ sqrt(K_mean) |x w|, so y's error has standard deviation
    sqrt(2/3) u |gamma| sqrt(K / K_mean) <= 0.82 u * 1.5 * sqrt(2) = 1.7u (border pixels have at most
    half the mean's taps, K / K_mean <= 2): 6 standard deviations are 10.4u. Storing z in float16 /
    bfloat16 adds u |gamma| |z - mean| / sigma <= 1.5 * 6u = 9u, not at the same time as the first (eval
    keeps no z). atol = 12u covers either. rtol = 2u: the output's own rounding, and the statistics'
    share (sums over N*H*W of that error, much smaller). So: float32 on GPU (TF32) and float16 rtol 1e-3,
    atol 5.9e-3; bfloat16 rtol 7.8e-3, atol 4.7e-2; float32 without TF32 (CPU) u = 6e-8, float64 1.1e-16.
    Measured on the H200: relative L2 error of the blocks' outputs 2e-4 to 7e-4 in float32 (TF32).
    """
    if tf32 is None:
        tf32 = dtype == torch.float32 and torch.cuda.is_available() and conv_tf32_allowed()
    u = TF32_UNIT_ROUNDOFF if tf32 else UNIT_ROUNDOFF[dtype]
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)  # K * u64 * sqrt(K) stays < 1e-11 for K <= 4096
    return dict(rtol=2 * u, atol=max(12 * u, TOLERANCES[torch.float32]["atol"]))


def sums_tolerance(dtype, want, tf32=None):
    """A gradient that sums over the batch (a weight's, gamma's, a convolution's input gradient): the
    error of its K terms is conv_tolerance's per term, while the result grows like sqrt(K) or K; so
    the bound is relative to the largest result (|want|.max()), not to each element."""
    tol = conv_tolerance(dtype, tf32)
    return dict(rtol=tol["rtol"], atol=tol["atol"] * max(1.0, want.abs().max().item()))


def assert_conv_close(actual, expected, scale, terms, dtype, tf32=None):
    """A raw convolution output (not normalized) against its float64 reference from the same inputs,
    element by element: |actual - expected| <= 6 sqrt(2/3) u_in scale + 6 2^-24 sqrt(terms / 2) scale
    + 2 u |expected| + 1e-5, where scale = sqrt(sum_k (x_k w_k)^2) of each output (conv_error_scale) and
    terms = K, the products per output. The first term: products of inputs rounded to u_in (TF32's for
    float32 when allowed; 0 otherwise, the inputs being the reference's own), a random walk of standard
    deviation sqrt(2/3) u_in scale (6 of them); the second: float32 accumulation, each partial sum
    rounded; the third: the output's rounding to its dtype (u) twice over; the last: float32's atol."""
    if tf32 is None:
        tf32 = dtype == torch.float32 and actual.is_cuda and conv_tf32_allowed()
    u_in = TF32_UNIT_ROUNDOFF if tf32 else 0.0
    u_acc = UNIT_ROUNDOFF[torch.float64] if dtype == torch.float64 else UNIT_ROUNDOFF[torch.float32]
    bound = (6 * (0.8165 * u_in + u_acc * (terms / 2) ** 0.5) * scale + 2 * UNIT_ROUNDOFF[dtype] * expected.abs()
             + TOLERANCES[dtype]["atol"])
    assert actual.shape == expected.shape
    assert not actual.isnan().any(), "output has NaN: an element was never written"
    err = (actual.double() - expected).abs()
    worst = (err / bound).max().item()
    assert worst <= 1, f"error {worst:.3g} times the bound (max error {err.max().item():.3g})"


def assert_sum_close(actual, expected, abs_sum, dtype):
    """A sum of many terms (a per-channel sum over N*H*W) against its float64 value: each term's
    relative error (dtype's elementwise rtol) and the summation's bound the sum's error by rtol times
    the sum of the terms' magnitudes, abs_sum, which cancellation can make far larger than |expected|."""
    tol = TOLERANCES[dtype]
    assert actual.shape == expected.shape
    assert not actual.isnan().any(), "output has NaN: an element was never written"
    err = (actual.double() - expected).abs()
    bound = tol["rtol"] * abs_sum + tol["atol"]
    assert (err <= bound).all(), f"error {(err / bound).max().item():.3g} times the bound"


def assert_bias_grad_close(got, want, terms, dim, dtype, parts=None):
    """A bias gradient `got` (dtype) against the float64 `want`, both sums over all dims but `dim` of
    `terms` (the float64 per-element gradients). A kernel's term is off by its float32 arithmetic (a
    few roundings of `parts`, the magnitude it works at: |terms| unless it cancels) and its rounding
    to dtype (<= u |term|), errors of either sign: standard deviation at most a third of
    2u |term| + 8 u32 parts. The sum adds u32 per addition on partial sums of K terms (at most
    sqrt(K / 2) times the terms' root sum of squares, for a sequential sum), then rounds once (2u of
    the result). Bound: 2u |want| + 6 standard deviations of the rest."""
    assert not got.isnan().any(), "bias gradient has NaN: an element was never written"
    u = UNIT_ROUNDOFF[dtype]
    u_acc = UNIT_ROUNDOFF[torch.float64 if dtype == torch.float64 else torch.float32]
    k = terms.numel() // max(terms.shape[dim], 1)
    parts = terms.abs() if parts is None else parts
    per_term = sum_except((2 * u * terms.abs() + 8 * u_acc * parts).square(), dim).sqrt() / math.sqrt(3)
    accumulation = u_acc * math.sqrt(k / 2) * sum_except(terms.square(), dim).sqrt() / math.sqrt(3)
    tol = 2 * u * want.abs() + 6 * (per_term + accumulation)
    err = (got.double() - want).abs()
    assert (err <= tol).all(), f"bias gradient off by up to {(err / tol).max().item():.3g} times the tolerance"


def assert_close_to_parts(got, want, parts, dtype):
    """A gradient elementwise: dtype's tolerance (TOLERANCES: a few roundings of the result), plus 8 roundings
    in the kernel's float32 (float64) arithmetic of `parts`, the magnitude it works at, where its terms cancel
    (a pixel norm over C = 1 channel: grad_x ~ eps)."""
    assert not got.isnan().any(), "output has NaN: an element was never written"
    tol = TOLERANCES[dtype]
    u_acc = UNIT_ROUNDOFF[torch.float64 if dtype == torch.float64 else torch.float32]
    bound = tol["atol"] + tol["rtol"] * want.abs() + 8 * u_acc * parts
    err = (got.double() - want).abs()
    assert (err <= bound).all(), f"grad_x off by up to {(err / bound).max().item():.3g} times the tolerance"


def conv_error_scale(conv, x, weight, *args):
    """sqrt(sum_k (x_k w_k)^2) per output element of conv(x, weight, None, *args), in float64: the size
    a convolution's rounding errors scale with (assert_conv_close)."""
    return conv(x.double().square(), weight.double().square(), None, *args).sqrt()


def randn(shape, layout="contiguous", dtype=torch.float32, device="cpu"):
    """Fresh random values in the requested memory layout."""
    shape = tuple(shape)
    if layout == "contiguous":
        t = torch.randn(shape, device=device)
    elif layout == "channels_last":
        t = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every other element of the last dim: no dense layout
        t = torch.randn(*shape[:-1], 2 * shape[-1], device=device)[..., ::2]
    elif layout == "permuted":  # [N, H, C, W] storage seen as [N, C, H, W]
        t = torch.randn(shape[0], *shape[2:3], shape[1], *shape[3:], device=device).transpose(1, 2)
    else:
        raise ValueError(layout)
    return t.to(dtype)


def assert_close(actual, expected, dtype=None, tol=None):
    """actual (in its dtype) against expected (a float64 reference) with dtype's elementwise
    tolerance, or `tol` (e.g. conv_tolerance(dtype))."""
    dtype = dtype or expected.dtype
    assert actual.shape == expected.shape
    assert not actual.isnan().any(), "output has NaN: an element was never written"
    torch.testing.assert_close(actual.to(expected.dtype), expected, **(tol or TOLERANCES[dtype]))


def expected_in(dtype):
    """The dtype the reference runs in: float64 for every dtype and device, so that the oracle is not
    itself rounded (nor computed with TF32 on a GPU) and the tolerance is the tested dtype's alone."""
    return torch.float64


def check_forward_backward(op, reference, inputs, impl, dtype, tol=None):
    """Output and input gradients of `op(*inputs, impl=impl)` against `reference` run in float64 on the
    same inputs (cast, on their device). `tol`: TOLERANCES[dtype] (elementwise) by default; or a dict; or
    a function of each reference tensor giving one (e.g. gemm_tolerance(dtype))."""
    exact = [t.detach().to(expected_in(dtype)).requires_grad_() for t in inputs]
    mine = [t.detach().requires_grad_() for t in inputs]  # keeps each input's strides
    want = reference(*exact)
    got = op(*mine, impl=impl)
    tol_of = tol if callable(tol) else lambda _: tol
    assert_close(got, want, dtype, tol_of(want))
    grad = torch.randn_like(want).to(dtype)  # the gradient both get: representable in dtype
    want_grads = torch.autograd.grad(want, exact, grad.to(want.dtype))
    got_grads = torch.autograd.grad(got, mine, grad)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, dtype, tol_of(w))
    return got


def check_one_affine_parameter(op, reference, impl, x, weight, channels, given, training, **sizes):
    """A fused block's functional op given bn_weight without bn_bias or the other way round
    (`given`; F.batch_norm's defaults, 1 and 0, for the other) against its reference on the same
    float64 inputs: output and gradients. `sizes`: the convolution's stride and padding."""
    dtype = x.dtype
    param = randn((channels,), dtype=dtype) * 0.5 + (1.0 if given == "bn_weight" else 0.0)
    stats = [randn((channels,), dtype=dtype) * 0.1, torch.rand(channels, dtype=dtype) + 0.5]
    inputs = [t.requires_grad_() for t in (x, weight, param)]

    def run(fn, **kw):
        gamma, beta = (inputs[2], None) if given == "bn_weight" else (None, inputs[2])
        y = fn(inputs[0], inputs[1], None, gamma, beta, *[s.clone() for s in stats], training, **sizes, **kw)
        return [y, *torch.autograd.grad(y, inputs, torch.ones_like(y) + y.detach())]

    for got, want in zip(run(op, impl=impl), run(reference)):
        torch.testing.assert_close(got, want, **TOLERANCES[dtype])


def gemm_tolerance(dtype):
    """check_forward_backward's tol for ops with a GEMM inside (float32 GEMMs without TF32: torch.mm's
    default on CUDA, torch.backends.cuda.matmul.allow_tf32 False): a GEMM's K products with both signs
    cancel, so its error is the elementwise one relative to the terms, whose size the largest output
    stands for: TOLERANCES[dtype] with atol times max(1, |want|.max()), as for sums over the batch."""
    def tol(want):
        t = TOLERANCES[dtype]
        return dict(rtol=t["rtol"], atol=t["atol"] * max(1.0, want.abs().max().item()))
    return tol


def check_block_against_float64(seq, fused, x, training, dtype, negative_slope=0.0):
    """A fused conv + BN + activation block (`fused`, brought to dtype) against `seq` =
    nn.Sequential(conv, BatchNorm2d, act) run in float64 on the same inputs: x and seq's parameters
    and buffers rounded to dtype, then widened. Compares the output, x's and the parameters'
    gradients and the buffers. Not against eager float32, whose convolutions run in TF32 on a GPU:
    the tolerances are conv_tolerance's (TF32 for float32 there) and sums_tolerance's. The reference's
    activation takes the side the kernel took (masked_leaky_relu, mask = its output > 0): where the
    normalized z is within the TF32 error of 0 the float64 pre-activation can have the other sign, and
    that element's gradient would differ by (1 - slope) grad_y. (A float16 output can round a positive
    u < 3e-8 to 0: ~1e-7 of the elements.) Returns the block's output."""
    exact = copy.deepcopy(seq).to(dtype).double().train(training)
    fused = fused.to(dtype).train(training)
    xf = x.detach().to(dtype).requires_grad_()
    xe = xf.detach().double().requires_grad_()
    got = fused(xf)
    want = masked_leaky_relu(exact[1](exact[0](xe)), got.detach() > 0, negative_slope)
    assert got.dtype == dtype
    assert_close(got, want, dtype, conv_tolerance(dtype))
    g = torch.randn_like(want).to(dtype)  # the same (rounded) loss gradient for both
    got.backward(g)
    want.backward(g.double())
    assert_close(xf.grad, xe.grad, dtype, sums_tolerance(dtype, xe.grad))
    for (k, a), (_, b) in zip(fused.state_dict().items(), exact.state_dict().items()):
        torch.testing.assert_close(a.to(b.dtype), b, **conv_tolerance(dtype), msg=lambda m: f"{k}: {m}")
    params = dict(exact.named_parameters())
    for k, a in fused.named_parameters():
        b = params[k]
        assert (a.grad is None) == (b.grad is None), k
        if a.grad is not None:  # sums over the batch (the conv bias's: 0 in training, rounding noise in float64)
            assert_close(a.grad, b.grad, dtype, sums_tolerance(dtype, b.grad))
    return got


def fast_backends(device):
    return GPU_BACKENDS if torch.device(device).type == "cuda" else CPU_BACKENDS


# ---------------------------------------------------------------------------
# The activation's kink. A kernel decides ReLU / LeakyReLU's side (u > 0) from its own rounded
# pre-activation u; a float64 reference from the same inputs can land on the other side where |u| is
# within that rounding (TF32 convolutions: ~1e-3 of y's scale), and a gradient element then differs by
# all of grad_y (slope 0) or 0.8 of it (slope 0.2), the batch sums by as much: no tolerance absorbs
# that, and a loose one would hide real errors. Two designs, by what the test controls:
# - the kernel ops (bn_relu_backward), whose z the test makes: keep_off_kink moves the few elements
#   of z whose exact pre-activation is within KINK_MARGIN of 0 away from it, so both sides agree;
# - the fused blocks, whose z comes from the kernel's own (TF32) convolution: the reference takes the
#   side the kernel took, from the kernel's forward output (masked_leaky_relu with mask = y > 0).

# The kernel ops get z, mean and invstd: their float32 u differs from the exact one by the float32
# statistics' error (<= ~log2(N*H*W) * 6e-8 of |z| in the mean, as much relatively in invstd: < 1e-5
# of y's scale for the tests' shapes) and a few roundings of u (~3e-7): 1e-3 leaves a factor > 30.
KINK_MARGIN = 1e-3


def keep_off_kink(z, gamma, beta, eps=1e-5, margin=KINK_MARGIN, max_fraction=0.01):
    """A copy of z (same dtype and strides) whose exact pre-activation u = gamma * (z - mean) / sqrt(var
    + eps) + beta (batch statistics over dims 0, 2, 3 in float64; gamma 1 and beta 0 when None) has
    |u| >= margin everywhere. Elements with |u| < margin are moved to |u| >= 2 * margin (plus the
    rounding to z's dtype) on their side; that shifts the statistics a little, so it repeats until
    none is left. Asserts that the moved elements are a small fraction (the input stays random)."""
    z = z.clone()
    moved = torch.zeros(z.shape, dtype=torch.bool, device=z.device)
    shape = (1, -1, 1, 1)
    g = torch.ones(z.shape[1], dtype=torch.float64, device=z.device) if gamma is None else gamma.double()
    b = torch.zeros_like(g) if beta is None else beta.double()
    g, b = g.view(shape), b.view(shape)
    spacing = torch.finfo(z.dtype).eps  # of z's dtype, relative to |z|
    for _ in range(8):
        zd = z.double()
        var, mean = torch.var_mean(zd, dim=(0, 2, 3), unbiased=False, keepdim=True)
        slope = g * torch.rsqrt(var + eps)  # du / dz
        u = (zd - mean) * slope + b
        near = u.abs() < margin
        if not near.any():
            assert moved.float().mean().item() <= max_fraction, "too many elements at the kink: other inputs"
            return z
        side = torch.where(u >= 0, 1.0, -1.0)
        target = side * (2 * margin + 2 * spacing * (zd.abs() + 1) * slope.abs())  # past z's rounding
        z[near] = (mean + (target - b) / slope).expand_as(zd)[near].to(z.dtype)
        moved |= near
    raise AssertionError("could not move z off the activation's kink")


def masked_leaky_relu(u, mask, negative_slope=0.0):
    """LeakyReLU (ReLU for slope 0) whose side is `mask` (True: u, False: slope * u), not u's sign:
    a float64 reference that follows the kernel's own decision (mask = the kernel's output > 0)."""
    return torch.where(mask, u, u * negative_slope)


def gradchecks(fn, inputs, impl):
    """gradcheck and gradgradcheck in float64. Under the Triton interpreter every launch costs
    milliseconds, so triton checks a random projection of the Jacobians (fast_mode) instead of
    every column: still exact up to the finite-difference error, for any wrong entry."""
    fast = impl == "triton" and not inputs[0].is_cuda
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=fast)
