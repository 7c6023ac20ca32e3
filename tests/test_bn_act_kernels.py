"""The BN + activation kernel ops with their negative slope, and batch_stats (csrc/schemas.h, SPEC 1
and the discriminator block's SPEC 7), called directly on every backend:

- bn_relu, bn_relu_ (in place) and bn_relu_backward (all three outputs, affine and gamma/beta None)
  for slope 0 (ReLU) and 0.2 (LeakyReLU), against eager F.batch_norm + F.leaky_relu in float64
  (the backward differentiated by autograd);
- batch_stats against the float64 mean and biased variance, also far from zero (z + 1e4), where
  E[z^2] - E[z]^2 in float32 would be useless;
- bn_finalize (invstd, scale, shift and the running-statistics update) against float64 and against
  eager F.batch_norm's own update of running statistics, momentum given and None (cumulative);
- batch_stats_finalize against the same references and bitwise against batch_stats + bn_finalize;
- the synchronized block's kernels (issue 17): bn_relu_backward_reduce + _elemt on a batch split
  into two processes' parts against the whole batch's float64 gradient, bn_gather_finalize on the
  parts' rows against batch_stats_finalize of the whole.

NCHW and channels-last z, outputs in the input's layout. The cpu and triton (interpreted) backends
run here; the gpu-marked tests run the cuda and triton kernels on a CUDA device.
"""

import pytest
import torch
import torch.nn.functional as F

from fastgan.ops._dispatch import kernels
from helpers import CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, TOLERANCES, keep_off_kink, randn

EPS = 1e-5
SLOPES = [0.0, 0.2]
SHAPES = [(2, 5, 6, 7), (3, 40, 9, 11)]
GPU_SHAPES = SHAPES + [(64, 256, 8, 8), (33, 64, 32, 32), (7, 3, 13, 11), (16, 512, 4, 4)]
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def acc_dtype(dtype):
    """The dtype of the per-channel vectors: float64 for float64 z, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_channel(v):
    return v.view(1, -1, 1, 1)


def make_z(shape, layout, dtype, device, offset=3.0):
    """z of std ~2 around `offset`, in the layout (NCHW-contiguous or channels-last)."""
    z = randn(shape, "contiguous", torch.float64, device) * 2 + offset
    return z.to(dtype).contiguous(memory_format=LAYOUTS[layout])


def bn_inputs(shape, layout, dtype, affine, device, off_kink=False):
    """z and its batch statistics (mean, var, invstd) in the accumulation dtype, with gamma and beta.
    off_kink: no element's exact pre-activation within KINK_MARGIN of 0 (helpers.keep_off_kink), for
    the backward, whose mask the kernel decides from its own float32 pre-activation."""
    z = make_z(shape, layout, dtype, device)
    acc = acc_dtype(dtype)
    c = shape[1]
    gamma = torch.rand(c, dtype=acc, device=device) + 0.5 if affine else None
    beta = torch.randn(c, dtype=acc, device=device) if affine else None
    if off_kink:
        z = keep_off_kink(z, gamma, beta, EPS)
    var, mean = torch.var_mean(z.to(acc), dim=(0, 2, 3), unbiased=False)
    return z, mean, var, torch.rsqrt(var + EPS), gamma, beta


def other_layout(layout):
    return "contiguous" if layout == "channels_last" else "channels_last"


def tolerance(dtype, factor=1):
    tol = TOLERANCES[dtype]
    return dict(rtol=tol["rtol"] * factor, atol=tol["atol"] * factor)


# ---------------------------------------------------------------------------
# The checks, shared by the CPU and GPU tests.


def check_forward(ops, shape, layout, dtype, slope, device="cpu"):
    z, mean, var, invstd, gamma, beta = bn_inputs(shape, layout, dtype, True, device)
    scale, shift = gamma * invstd, beta
    want = F.leaky_relu(F.batch_norm(z.double(), mean.double(), var.double(), gamma.double(), beta.double(),
                                     False, 0.0, EPS), slope)
    z_before = z.clone()
    y = ops.bn_relu(z, mean, scale, shift, slope)
    assert y.dtype == z.dtype and y.shape == z.shape
    assert y.is_contiguous(memory_format=LAYOUTS[layout])
    assert torch.equal(z, z_before)  # not in place
    torch.testing.assert_close(y.double(), want, **tolerance(dtype))
    if slope > 0:
        assert (y < 0).any()  # the negative side is really exercised
    else:
        assert (y >= 0).all()

    ptr = z.data_ptr()
    assert ops.bn_relu_(z, mean, scale, shift, slope) is None
    assert z.data_ptr() == ptr and z.is_contiguous(memory_format=LAYOUTS[layout])
    torch.testing.assert_close(z, y, rtol=0, atol=0)


def check_backward(ops, shape, layout, dtype, affine, slope, device="cpu", grad_layout=None):
    """grad_y in z's layout, or in `grad_layout` (the kernel brings it to z's). z is kept off the kink, so
    that the float64 reference takes the side the kernel's float32 pre-activation takes."""
    z, mean, var, invstd, gamma, beta = bn_inputs(shape, layout, dtype, affine, device, off_kink=True)
    grad_y = randn(shape, grad_layout or layout, dtype, device)
    grad_z, grad_gamma, grad_beta = ops.bn_relu_backward(grad_y, z, mean, invstd, gamma, beta, slope)
    acc = acc_dtype(dtype)
    assert grad_z.dtype == dtype and grad_z.shape == z.shape
    assert grad_z.is_contiguous(memory_format=LAYOUTS[layout])
    assert grad_gamma.dtype == acc and grad_beta.dtype == acc
    assert grad_gamma.shape == (shape[1],) and grad_beta.shape == (shape[1],)

    # Eager in float64. Without affine the op still returns s2 = sum(gm * xhat) and s1 = sum(gm): the
    # gradients of gamma and beta at gamma = 1, beta = 0, which leave the normalization unchanged.
    zz = z.double().requires_grad_()
    ga = (gamma.double() if affine else torch.ones(shape[1], dtype=torch.float64, device=device)).requires_grad_()
    be = (beta.double() if affine else torch.zeros(shape[1], dtype=torch.float64, device=device)).requires_grad_()
    y = F.leaky_relu(F.batch_norm(zz, None, None, ga, be, True, 0.1, EPS), slope)
    want_z, want_gamma, want_beta = torch.autograd.grad(y, (zz, ga, be), grad_y.double())
    torch.testing.assert_close(grad_z.double(), want_z, **tolerance(dtype, 10))
    torch.testing.assert_close(grad_gamma.double(), want_gamma, **tolerance(acc, 10))
    torch.testing.assert_close(grad_beta.double(), want_beta, **tolerance(acc, 10))


def check_batch_stats(ops, z):
    z_before = z.clone()
    mean, var = ops.batch_stats(z)
    acc = acc_dtype(z.dtype)
    assert mean.dtype == acc and var.dtype == acc
    assert mean.shape == (z.shape[1],) and var.shape == (z.shape[1],)
    assert torch.equal(z, z_before)
    var64, mean64 = torch.var_mean(z.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), mean64, **TOLERANCES[acc])
    torch.testing.assert_close(var.double(), var64, **TOLERANCES[acc])
    return mean, var


def check_large_offset(ops, shape, layout, device="cpu"):
    """float32 z = 1e4 + N(0, 1) per channel: the variance as close to the float64 one of z as eager
    float32's (a few of its errors, or 1e-5 relative); E[z^2] - E[z]^2 in float32 would be off by ~1."""
    z = make_z(shape, layout, torch.float32, device, offset=1e4)
    z = z + torch.arange(shape[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    z = z.contiguous(memory_format=LAYOUTS[layout])
    mean, var = ops.batch_stats(z)
    var64, mean64 = torch.var_mean(z.double(), dim=(0, 2, 3), unbiased=False)
    var_eager, _ = torch.var_mean(z, dim=(0, 2, 3), unbiased=False)
    eager_error = (var_eager.double() - var64).abs()
    assert ((var.double() - var64).abs() <= 4 * eager_error + 1e-5 * var64).all(), (var, var64)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)
    # The case is what it claims: far from zero, unit spread, and the naive formula fails on it.
    naive = (z * z).mean((0, 2, 3)) - z.mean((0, 2, 3)) ** 2
    assert (mean64 - 1e4).abs().max() < shape[1] + 1 and var64.min() > 2
    assert (naive.double() - var64).abs().max() > 0.5


# The update variants of bn_finalize: (momentum, with num_batches_tracked).
UPDATES = {"momentum": (0.1, True), "momentum-no-count": (0.3, False), "cumulative": (None, True)}


def check_finalize(ops, dtype, affine, update, bias_dtype, running_dtype, device="cpu"):
    """bn_finalize from the statistics of a z, against eager F.batch_norm's running-statistics update of
    the same z in float64 (count 4*6*7 values per channel) and invstd/scale/shift in float64. The
    running statistics are stored in running_dtype: one rounding of the float32 (float64) update."""
    z, mean, var, _, gamma, beta = bn_inputs((4, 6, 6, 7), "contiguous", dtype, affine, device)
    c, count = z.shape[1], z.numel() // z.shape[1]
    acc = acc_dtype(dtype)
    bias = randn((c,), dtype=bias_dtype, device=device) if bias_dtype is not None else None
    args = (None, None, None, None, 0.1, 0)
    if update is not None:
        momentum, with_count = UPDATES[update]
        rm, rv = randn((c,), dtype=running_dtype, device=device), torch.rand(c, device=device).to(running_dtype) + 0.5
        nbt = torch.tensor(4, device=device) if with_count else None
        want_rm, want_rv = rm.double(), rv.double()
        factor = momentum if momentum is not None else 1 / 5
        shifted = z.double() + (0 if bias is None else bias.double().view(1, -1, 1, 1))
        F.batch_norm(shifted, want_rm, want_rv, None, None, True, factor, EPS)
        args = (rm, rv, nbt, bias, -1.0 if momentum is None else momentum, count)
    invstd, scale, shift = ops.bn_finalize(mean, var, gamma, beta, EPS, *args)
    want_invstd = torch.rsqrt(var.double() + EPS)
    for got, want in ((invstd, want_invstd), (scale, want_invstd * (gamma.double() if affine else 1)),
                      (shift, beta.double() if affine else torch.zeros(c, dtype=torch.float64, device=device))):
        assert got.dtype == acc and got.shape == (c,)
        torch.testing.assert_close(got.double(), want, **TOLERANCES[acc])
    if update is not None:
        assert rm.dtype == running_dtype and rv.dtype == running_dtype
        torch.testing.assert_close(rm.double(), want_rm, **TOLERANCES[running_dtype])
        torch.testing.assert_close(rv.double(), want_rv, **TOLERANCES[running_dtype])
        if nbt is not None:
            assert nbt.item() == 5


def check_stats_finalize(ops, shape, layout, dtype, update, device="cpu"):
    """batch_stats_finalize: the statistics against float64 and eager F.batch_norm's running update of
    the same z, and bitwise what batch_stats then bn_finalize give (the two ops it replaces)."""
    z = make_z(shape, layout, dtype, device)
    c, acc = shape[1], acc_dtype(dtype)
    gamma, beta = torch.rand(c, dtype=acc, device=device) + 0.5, torch.randn(c, dtype=acc, device=device)
    bias = randn((c,), dtype=torch.float32, device=device)
    running = (None, None, None)
    momentum = 0.1
    if update is not None:
        momentum, with_count = UPDATES[update]
        running = (randn((c,), dtype=torch.float32, device=device), torch.rand(c, device=device) + 0.5,
                   torch.tensor(4, device=device) if with_count else None)
        momentum = -1.0 if momentum is None else momentum
    twin = tuple(None if t is None else t.clone() for t in running)
    start = tuple(None if t is None else t.double() for t in running)
    z_before = z.clone()
    got = ops.batch_stats_finalize(z, gamma, beta, EPS, *running, bias, momentum)
    assert torch.equal(z, z_before)
    mean, var = ops.batch_stats(z)
    want = (mean, var, *ops.bn_finalize(mean, var, gamma, beta, EPS, *twin, bias, momentum, z.numel() // c))
    for g, w in zip(got, want):
        assert g.dtype == acc and g.shape == (c,)
        assert torch.equal(g, w)
    for r, w in zip(running, twin):
        assert r is None or torch.equal(r, w)
    var64, mean64 = torch.var_mean(z.double(), dim=(0, 2, 3), unbiased=False)
    invstd64 = torch.rsqrt(var64 + EPS)
    for g, w in zip(got, (mean64, var64, invstd64, invstd64 * gamma.double(), beta.double())):
        torch.testing.assert_close(g.double(), w, **TOLERANCES[acc])
    if update is not None:
        rm, rv, nbt = start
        factor = 1 / 5 if momentum < 0 else momentum
        F.batch_norm(z.double() + bias.double().view(1, -1, 1, 1), rm, rv, None, None, True, factor, EPS)
        torch.testing.assert_close(running[0].double(), rm, **TOLERANCES[torch.float32])
        torch.testing.assert_close(running[1].double(), rv, **TOLERANCES[torch.float32])
        if nbt is not None:
            assert running[2].item() == 5


def check_backward_halves(ops, shape, layout, dtype, affine, slope, device="cpu", grad_layout=None):
    """bn_relu_backward_reduce and _elemt as a synchronized block uses them: z's batch split into two
    processes' parts (uneven), each part's sums reduced, added, and grad_z of the first part from the
    sums and count of the whole batch, against the float64 gradient of the whole batch's BN."""
    z, mean, var, invstd, gamma, beta = bn_inputs(shape, layout, dtype, affine, device, off_kink=True)
    grad_y = randn(shape, grad_layout or layout, dtype, device)
    fmt = LAYOUTS[layout]
    parts = [(z[:1].contiguous(memory_format=fmt), grad_y[:1].contiguous(memory_format=LAYOUTS[grad_layout or layout])),
             (z[1:].contiguous(memory_format=fmt), grad_y[1:].contiguous(memory_format=LAYOUTS[grad_layout or layout]))]
    sums = [ops.bn_relu_backward_reduce(g, zp, mean, invstd, gamma, beta, slope) for zp, g in parts]
    sum_dy_xhat, sum_dy = sums[0][0] + sums[1][0], sums[0][1] + sums[1][1]
    count = torch.tensor([z.numel() // shape[1]], dtype=mean.dtype, device=device)
    grad_z = ops.bn_relu_backward_elemt(parts[0][1], parts[0][0], mean, invstd, gamma, beta, slope, sum_dy_xhat,
                                        sum_dy, count)
    assert grad_z.dtype == dtype and grad_z.shape == parts[0][0].shape and grad_z.is_contiguous(memory_format=fmt)
    whole_z, whole_gamma, whole_beta = ops.bn_relu_backward(grad_y, z, mean, invstd, gamma, beta, slope)
    torch.testing.assert_close(sum_dy_xhat, whole_gamma, **tolerance(sum_dy.dtype, 10))
    torch.testing.assert_close(sum_dy, whole_beta, **tolerance(sum_dy.dtype, 10))

    zz = z.double().requires_grad_()
    ga = gamma.double() if affine else None
    be = beta.double() if affine else None
    y = F.leaky_relu(F.batch_norm(zz, None, None, ga, be, True, 0.1, EPS), slope)
    (want_z,) = torch.autograd.grad(y, zz, grad_y.double())
    torch.testing.assert_close(grad_z.double(), want_z[:1], **tolerance(dtype, 10))
    torch.testing.assert_close(grad_z, whole_z[:1], **tolerance(dtype, 10))


def check_gather_finalize(ops, dtype, update, device="cpu"):
    """bn_gather_finalize on the rows of two processes' uneven parts of a z: the statistics of the
    whole z, as batch_stats_finalize of it gives them, and eager F.batch_norm's running update of it."""
    z = make_z((5, 6, 4, 3), "channels_last", dtype, device)
    c, acc = z.shape[1], acc_dtype(dtype)
    gamma, beta = torch.rand(c, dtype=acc, device=device) + 0.5, torch.randn(c, dtype=acc, device=device)
    bias = randn((c,), dtype=torch.float32, device=device)
    rows = []
    for part in (z[:2], z[2:]):
        mean, var = ops.batch_stats(part.contiguous(memory_format=torch.channels_last))
        rows.append(torch.cat([mean.new_full((1,), part.numel() // c), mean, var]))
    rows = torch.stack(rows)
    momentum, running = 0.1, (None, None, None)
    if update is not None:
        momentum, with_count = UPDATES[update]
        momentum = -1.0 if momentum is None else momentum
        running = (randn((c,), dtype=torch.float32, device=device), torch.rand(c, device=device) + 0.5,
                   torch.tensor(4, device=device) if with_count else None)
    twin = tuple(None if t is None else t.clone() for t in running)
    mean, var, invstd, scale, shift, count = ops.bn_gather_finalize(rows, gamma, beta, EPS, *running, bias, momentum)
    assert count.shape == (1,) and count.dtype == acc and count.item() == z.numel() // c
    want = ops.batch_stats_finalize(z, gamma, beta, EPS, *twin, bias, momentum)
    for got, w in zip((mean, var, invstd, scale, shift), want):
        assert got.dtype == acc and got.shape == (c,)
        torch.testing.assert_close(got, w, **TOLERANCES[acc])
    for got, w in zip(running[:2], twin[:2]):
        if got is not None:
            torch.testing.assert_close(got, w, **TOLERANCES[torch.float32])
    assert running[2] is None or torch.equal(running[2], twin[2])


# ---------------------------------------------------------------------------
# cpu and triton (interpreted) on CPU tensors.


@pytest.mark.parametrize("running_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.float16])
@pytest.mark.parametrize("update", [None, *UPDATES])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_bn_finalize(impl, dtype, affine, update, bias_dtype, running_dtype):
    check_finalize(kernels(impl), dtype, affine, update, bias_dtype, running_dtype)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_bn_finalize_bad_input(impl):
    ops = kernels(impl)
    mean, var, rm, rv = torch.randn(4), torch.rand(4), torch.randn(4), torch.rand(4)
    error = (RuntimeError, ValueError)
    with pytest.raises(error, match="running_mean and running_var"):
        ops.bn_finalize(mean, var, None, None, EPS, rm, None, None, None, 0.1, 8)
    with pytest.raises(error, match="num_batches_tracked"):
        ops.bn_finalize(mean, var, None, None, EPS, rm, rv, None, None, -1.0, 8)
    with pytest.raises(error, match="count"):
        ops.bn_finalize(mean, var, None, None, EPS, rm, rv, None, None, 0.1, 1)
    with pytest.raises(error, match="gamma"):
        ops.bn_finalize(mean, var, torch.ones(3), None, EPS, None, None, None, None, 0.1, 8)
    with pytest.raises(error, match="var"):
        ops.bn_finalize(mean, var.double(), None, None, EPS, None, None, None, None, 0.1, 8)
    with pytest.raises(error, match="mean"):
        ops.bn_finalize(mean.half(), var, None, None, EPS, None, None, None, None, 0.1, 8)


@pytest.mark.parametrize("update", [None, *UPDATES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_batch_stats_finalize(impl, layout, dtype, update):
    # triton's op is its batch_stats and bn_finalize (tested above, at every shape) composed: one shape.
    for shape in SHAPES + [(2, 3, 1, 1)] if impl == "cpu" else SHAPES[:1]:
        check_stats_finalize(kernels(impl), shape, layout, dtype, update)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_bn_relu_backward_halves(impl, layout, dtype, slope, affine):
    # triton's halves are bn_relu_backward's kernels (tested above): its glue at one shape, the
    # interpreter being slow (~8 s a case at all of them).
    shapes = SHAPES + [(3, 3, 2, 2)] if impl == "cpu" else SHAPES[:1]
    for shape in shapes:
        check_backward_halves(kernels(impl), shape, layout, dtype, affine, slope)
    check_backward_halves(kernels(impl), shapes[-1], layout, dtype, affine, slope, grad_layout=other_layout(layout))


@pytest.mark.parametrize("update", [None, *UPDATES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_bn_gather_finalize(impl, dtype, update):
    check_gather_finalize(kernels(impl), dtype, update)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_sync_kernels_bad_input(impl):
    ops, error = kernels(impl), (RuntimeError, ValueError)
    z, mean, var, invstd, gamma, beta = bn_inputs((2, 4, 3, 3), "channels_last", torch.float32, True, "cpu")
    with pytest.raises(error, match="stats"):
        ops.bn_gather_finalize(torch.zeros(2, 8), gamma, beta, EPS, None, None, None, None, 0.1)
    with pytest.raises(error, match="stats"):
        ops.bn_gather_finalize(torch.zeros(2, 9, dtype=torch.float16), gamma, beta, EPS, None, None, None, None, 0.1)
    with pytest.raises(error, match="grad_y"):
        ops.bn_relu_backward_reduce(z[:1], z, mean, invstd, gamma, beta, 0.0)
    count = torch.tensor([18.0])
    with pytest.raises(error, match="count"):
        ops.bn_relu_backward_elemt(z, z, mean, invstd, gamma, beta, 0.0, mean, mean, count.double())
    with pytest.raises(error, match="sum_dy"):
        ops.bn_relu_backward_elemt(z, z, mean, invstd, gamma, beta, 0.0, mean[:3], mean, count)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_batch_stats_finalize_bad_input(impl):
    ops = kernels(impl)
    z, error = make_z((2, 4, 3, 3), "channels_last", torch.float32, "cpu"), (RuntimeError, ValueError)
    rm, rv = torch.randn(4), torch.rand(4)
    with pytest.raises(error, match="empty"):
        ops.batch_stats_finalize(z[:0], None, None, EPS, None, None, None, None, 0.1)
    with pytest.raises(error, match="running_mean and running_var"):
        ops.batch_stats_finalize(z, None, None, EPS, rm, None, None, None, 0.1)
    with pytest.raises(error, match="num_batches_tracked"):
        ops.batch_stats_finalize(z, None, None, EPS, rm, rv, None, None, -1.0)
    with pytest.raises(error, match="gamma"):
        ops.batch_stats_finalize(z, torch.ones(3), None, EPS, None, None, None, None, 0.1)
    with pytest.raises(error, match="count"):  # one value per channel: no unbiased variance
        ops.batch_stats_finalize(z[:1, :, :1, :1], None, None, EPS, rm, rv, None, None, 0.1)


@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_bn_relu(impl, shape, layout, dtype, slope):
    check_forward(kernels(impl), shape, layout, dtype, slope)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_bn_relu_backward(impl, shape, layout, dtype, slope, affine):
    check_backward(kernels(impl), shape, layout, dtype, affine, slope)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_bn_relu_backward_grad_in_other_layout(impl, layout, dtype):
    """An NCHW loss gradient of a channels-last z, and the other way round."""
    for shape in SHAPES + [(2, 17, 16, 3)]:
        check_backward(kernels(impl), shape, layout, dtype, True, 0.2, grad_layout=other_layout(layout))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bn_relu_backward_grad_in_other_layout_half_width(layout):
    """The cpu transpose moves 2-byte elements too (bfloat16, float16)."""
    for dtype in (torch.bfloat16, torch.float16):
        check_backward(kernels("cpu"), (3, 40, 9, 11), layout, dtype, True, 0.0, grad_layout=other_layout(layout))


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_bn_relu_nan_propagates(impl):
    """act(NaN) is NaN for either slope (a max(u, 0) would drop it)."""
    ops = kernels(impl)
    z, mean, var, invstd, gamma, beta = bn_inputs((2, 3, 4, 5), "channels_last", torch.float32, True, "cpu")
    z[1, 2, 3, 4] = float("nan")
    for slope in SLOPES:
        y = ops.bn_relu(z, mean, gamma * invstd, beta, slope)
        assert y.isnan().sum() == 1 and y[1, 2, 3, 4].isnan()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES + [(4, 6, 1, 1), (1, 3, 1, 2)])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_batch_stats(impl, shape, layout, dtype):
    check_batch_stats(kernels(impl), make_z(shape, layout, dtype, "cpu"))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_batch_stats_large_offset(impl, layout):
    check_large_offset(kernels(impl), (3, 5, 9, 11), layout)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_batch_stats_constant_channel(impl):
    """A constant channel far from zero has a variance of 0 (not a negative or a rounding residue of its
    mean)."""
    for layout in LAYOUTS:
        z = make_z((3, 4, 5, 6), layout, torch.float32, "cpu")
        z[:, 1] = 1e4 + 0.25
        mean, var = check_batch_stats(kernels(impl), z)
        assert abs(mean[1].item() - (1e4 + 0.25)) <= 1e-3
        assert 0 <= var[1].item() <= 1e-6


def test_triton_batch_stats_bad_input():
    ops = kernels("triton")
    with pytest.raises(ValueError, match="z must be 4-D"):
        ops.batch_stats(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="z must be contiguous"):
        ops.batch_stats(torch.zeros(3, 4, 5, 6)[..., ::2])
    with pytest.raises(ValueError, match="floating-point"):
        ops.batch_stats(torch.zeros(3, 4, 5, 6, dtype=torch.int32))


# ---------------------------------------------------------------------------
# On a CUDA device: the cuda and triton kernels, in the GPU dtypes and float64.


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_bn_relu_gpu(impl, layout, dtype):
    for shape in GPU_SHAPES:
        for slope in SLOPES:
            check_forward(kernels(impl), shape, layout, dtype, slope, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", GPU_DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_bn_relu_backward_gpu(impl, layout, dtype, affine):
    for shape in GPU_SHAPES:
        for slope in SLOPES:
            check_backward(kernels(impl), shape, layout, dtype, affine, slope, "cuda")
        check_backward(kernels(impl), shape, layout, dtype, affine, 0.2, "cuda", grad_layout=other_layout(layout))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_batch_stats_gpu(impl, layout, dtype):
    for shape in GPU_SHAPES + [(4, 6, 1, 1), (1, 3, 1, 2)]:
        check_batch_stats(kernels(impl), make_z(shape, layout, dtype, "cuda"))
    for shape in [(64, 64, 16, 16), (3, 5, 9, 11)]:
        check_large_offset(kernels(impl), shape, layout, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_bn_finalize_gpu(impl):
    for dtype, affine, update, bias_dtype, running_dtype in [
            (torch.float32, True, "momentum", torch.float32, torch.float32),
            (torch.float32, True, "cumulative", torch.bfloat16, torch.float32),
            (torch.float32, False, "momentum-no-count", None, torch.bfloat16),
            (torch.float64, True, "cumulative", torch.float64, torch.float64),
            (torch.float32, True, None, None, torch.float32)]:
        check_finalize(kernels(impl), dtype, affine, update, bias_dtype, running_dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_batch_stats_finalize_gpu(impl, layout, dtype):
    for shape in GPU_SHAPES + [(2, 3, 1, 1)]:
        for update in (None, *UPDATES):
            check_stats_finalize(kernels(impl), shape, layout, dtype, update, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_sync_kernels_gpu(impl, layout, dtype):
    for shape in GPU_SHAPES:
        for slope in SLOPES:
            check_backward_halves(kernels(impl), shape, layout, dtype, True, slope, "cuda")
        check_backward_halves(kernels(impl), shape, layout, dtype, False, 0.2, "cuda", grad_layout=other_layout(layout))
    if dtype in (torch.float32, torch.float64):
        for update in (None, *UPDATES):
            check_gather_finalize(kernels(impl), dtype, update, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_bn_finalize_in_cuda_graph(impl):
    """The cumulative average reads num_batches_tracked on the device: capturable, and each replay
    counts one more batch."""
    ops = kernels(impl)
    mean, var = torch.randn(300, device="cuda"), torch.rand(300, device="cuda") + 0.5
    rm, rv, nbt = torch.zeros(300, device="cuda"), torch.ones(300, device="cuda"), torch.tensor(0, device="cuda")
    ops.bn_finalize(mean, var, None, None, EPS, rm, rv, nbt, None, -1.0, 10)  # compile / autotune outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.bn_finalize(mean, var, None, None, EPS, rm, rv, nbt, None, -1.0, 10)
    rm.zero_(), rv.fill_(1), nbt.zero_()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert nbt.item() == 3
    torch.testing.assert_close(rm, mean)  # the cumulative average of three equal batches
    torch.testing.assert_close(rv, var * 10 / 9)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_batch_stats_deterministic_gpu(impl):
    """Fixed-order merges: the same z gives bitwise the same statistics."""
    z = make_z((33, 64, 32, 32), "channels_last", torch.float32, "cuda")
    for a, b in zip(kernels(impl).batch_stats(z), kernels(impl).batch_stats(z)):
        assert torch.equal(a, b)


def test_cpu_bn_relu_backward_bad_grad():
    """grad_y may come in either layout, never with another dtype or shape."""
    z, mean, var, invstd, gamma, beta = bn_inputs((2, 5, 3, 4), "channels_last", torch.float32, True, "cpu")
    ops = kernels("cpu")
    with pytest.raises(RuntimeError, match="grad_y"):
        ops.bn_relu_backward(z.double().contiguous(), z, mean, invstd, gamma, beta, 0.0)
    with pytest.raises(RuntimeError, match="grad_y"):
        ops.bn_relu_backward(z[:1], z, mean, invstd, gamma, beta, 0.0)
