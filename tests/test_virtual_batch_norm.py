"""Virtual batch normalization (SPEC 10, issue 18): the op, its fused conv blocks, modules and fuse,
against a plain-PyTorch reference written here from the definition: each current sample is
normalized with the statistics of the union of R's samples and itself (torch.cat, then plain mean
and biased variance over all values), R's samples with R's own. Every backend: cpu, triton (under
the interpreter here, conftest), and cuda / triton on a GPU (the `gpu` tests)."""

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.ops import virtual_batch_norm
from fastgan.ops._dispatch import kernels
from helpers import CPU_BACKENDS, GPU_BACKENDS, TOLERANCES, UNIT_ROUNDOFF, conv_tolerance, gradchecks, randn

IMPLS = ["reference"] + CPU_BACKENDS
ODD = (7, 3, 5, 5)


def definition(z, m, gamma=None, beta=None, eps=1e-5, slope=None):
    """SPEC 10 directly: the union of R and sample i as a tensor, its mean and biased variance."""
    ref = z[:m]
    out = []
    for i in range(z.shape[0]):
        group = ref if i < m else torch.cat([ref, z[i:i + 1]])
        mean = group.mean(dim=(0, 2, 3))[:, None, None]
        var = ((group - mean[None]) ** 2).mean(dim=(0, 2, 3))[:, None, None]
        out.append((z[i] - mean) / torch.sqrt(var + eps))
    y = torch.stack(out)
    if gamma is not None:
        y = y * gamma[:, None, None]
    if beta is not None:
        y = y + beta[:, None, None]
    return y if slope is None else F.leaky_relu(y, slope)


def affine(c, dtype=torch.float64):
    # gamma away from 0 (as BatchNorm's init of 1); fresh random values
    return torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype)


def grads(y, inputs, gy):
    return torch.autograd.grad(y, inputs, gy)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("slope", [None, 0.0, 0.2])
def test_float64_parity_every_ref_size(impl, layout, slope):
    """Forward and the gradients of z, gamma, beta for ref_size 1..N-1 on an odd shape."""
    for m in range(1, ODD[0]):
        z = randn(ODD, layout, torch.float64).requires_grad_()
        gamma, beta = (t.requires_grad_() for t in affine(ODD[1]))
        want = definition(z, m, gamma, beta, slope=slope)
        got = virtual_batch_norm(z, m, gamma, beta, negative_slope=slope, impl=impl)
        assert got.shape == want.shape and not got.isnan().any()
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
        gy = torch.randn_like(want)
        for g, w in zip(grads(got, (z, gamma, beta), gy), grads(want, (z, gamma, beta), gy)):
            torch.testing.assert_close(g, w, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (3, 4, 1, 1), (4, 2, 1, 3), (5, 16, 2, 2), (3, 9, 3, 7)])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_float64_parity_edge_shapes(shape, impl):
    """One pixel (R alone decides the variance), one channel, rows shorter than the unrolled loops;
    (3, 9, 3, 7): more channels and pixels than the interpreter's triton tiles (4 x 8)."""
    for layout in ("contiguous", "channels_last"):
        z = randn(shape, layout, torch.float64).requires_grad_()
        gamma, beta = (t.requires_grad_() for t in affine(shape[1]))
        want = definition(z, 1, gamma, beta)
        got = virtual_batch_norm(z, 1, gamma, beta, impl=impl)
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
        gy = torch.randn_like(want)
        for g, w in zip(grads(got, (z, gamma, beta), gy), grads(want, (z, gamma, beta), gy)):
            torch.testing.assert_close(g, w, **TOLERANCES[torch.float64])


# float32 without an activation only: with one, an element within float32's rounding of the kink
# could take the other side from float64's (the float64 cases check the activations).
@pytest.mark.parametrize("dtype,slope", [(torch.float64, None), (torch.float64, 0.0), (torch.float64, 0.2),
                                         (torch.float32, None)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_vector_lanes_and_tails(layout, slope, dtype):
    """The backward's vector loops (csrc/cpu/virtual_batch_norm.cpp): 37 channels and 19 pixels are
    whole vectors of 8 doubles / 16 floats and a tail, in either layout, each activation."""
    z = randn((4, 37, 1, 19), layout, dtype).requires_grad_()
    gamma, beta = (t.to(dtype).requires_grad_() for t in affine(37))
    exact = [t.detach().double().requires_grad_() for t in (z, gamma, beta)]
    want = definition(exact[0], 2, exact[1], exact[2], slope=slope)
    got = virtual_batch_norm(z, 2, gamma, beta, negative_slope=slope, impl="cpu")
    gy = torch.randn(want.shape, dtype=torch.float64)
    tol = TOLERANCES[dtype]
    for g, w in zip(grads(got, (z, gamma, beta), gy.to(dtype)), grads(want, exact, gy)):
        torch.testing.assert_close(g.double(), w, rtol=tol["rtol"], atol=tol["atol"] * max(1, w.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_low_precision(impl, dtype, layout):
    """Against float64 from the same (rounded) inputs. y: its rounding to dtype (u) plus float32
    statistics (a few u32 over 75-value sums): TOLERANCES' elementwise bound. grad_z = gamma invstd
    (g - ...) - k1 - k2 (z - mean) subtracts O(gamma invstd |g|) terms, so its bound is relative to
    the largest gradient; gamma / beta's gradients are sums over N*H*W: rtol times the sum of the
    terms' magnitudes (assert_sum_close's bound)."""
    z = randn((6, 5, 5, 3), layout, dtype).requires_grad_()
    gamma, beta = (t.float().requires_grad_() for t in affine(5))
    exact = [t.detach().double().requires_grad_() for t in (z, gamma, beta)]
    want = definition(exact[0], 2, exact[1], exact[2])
    got = virtual_batch_norm(z, 2, gamma, beta, impl=impl)
    tol = TOLERANCES[dtype]
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), want, **tol)
    gy = torch.randn(want.shape).to(dtype)
    g_got = grads(got, (z, gamma, beta), gy)
    g_want = grads(want, exact, gy.double())
    scale = g_want[0].abs().max().item()
    torch.testing.assert_close(g_got[0].double(), g_want[0], rtol=tol["rtol"], atol=tol["atol"] * max(1, scale))
    xhat = (want - exact[2].detach()[:, None, None]) / exact[1].detach()[:, None, None]
    for g, w, terms in ((g_got[1], g_want[1], gy.double() * xhat), (g_got[2], g_want[2], gy.double())):
        bound = tol["rtol"] * terms.abs().sum((0, 2, 3)) + tol["atol"]
        assert ((g.double() - w).abs() <= bound).all()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_large_offset_keeps_float32_accuracy(impl, layout):
    """z = 1e4 + noise: mean and M2 per sample (never E[z^2] - mean^2), so float32 keeps the noise."""
    z = 1e4 + randn((5, 4, 6, 6), layout)
    want = definition(z.double(), 2)
    got = virtual_batch_norm(z, 2, impl=impl)
    # |z| ~ 1e4: its rounding (u32 * 1e4 ~ 6e-4 of the unit noise) dominates, relative to sigma ~ 1
    torch.testing.assert_close(got.double(), want, rtol=0, atol=16 * UNIT_ROUNDOFF[torch.float32] * 1e4)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck(impl):
    z = randn((4, 2, 3, 2), dtype=torch.float64).requires_grad_()
    gamma, beta = (t.requires_grad_() for t in affine(2))
    fn = lambda z, g, b: virtual_batch_norm(z, 2, g, b, negative_slope=0.2, impl=impl)  # noqa: E731
    gradchecks(fn, (z, gamma, beta), impl)


def test_batch_mates_do_not_matter():
    """The point of VBN: a current sample's output is the same whatever the other current samples."""
    z = randn((6, 4, 5, 5))
    other = z.clone()
    other[3:] = randn((3, 4, 5, 5))
    for impl in IMPLS:
        a = virtual_batch_norm(z, 2, impl=impl)
        b = virtual_batch_norm(other, 2, impl=impl)
        assert torch.equal(a[:3], b[:3])
        assert not torch.allclose(a[3:], b[3:])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(layout, impl):
    z = randn((4, 3, 3, 2), layout).requires_grad_()
    gamma, beta = (t.float().requires_grad_() for t in affine(3))
    torch.library.opcheck(torch.ops.fastgan.virtual_batch_norm.default, (z, gamma, beta, 2, 1e-5, 0.2, impl))
    y, mean, invstd = torch.ops.fastgan.virtual_batch_norm.default(z, gamma, beta, 2, 1e-5, 0.2, impl)
    torch.library.opcheck(torch.ops.fastgan.vbn_backward.default,
                          (torch.randn_like(y), z.detach(), mean, invstd, gamma.detach(), beta.detach(), 2, 0.2, impl))


def test_compile_fullgraph():
    z = randn((5, 3, 4, 4)).requires_grad_()
    gamma, beta = (t.float().requires_grad_() for t in affine(3))
    fn = torch.compile(lambda z, g, b: virtual_batch_norm(z, 2, g, b, negative_slope=0.0, impl="cpu"),
                       fullgraph=True, backend="aot_eager")
    got = fn(z, gamma, beta)
    want = virtual_batch_norm(z, 2, gamma, beta, negative_slope=0.0, impl="cpu")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    gy = torch.randn_like(got)
    for g, w in zip(grads(got, (z, gamma, beta), gy), grads(want, (z, gamma, beta), gy)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_bad_input():
    z = randn((4, 3, 2, 2))
    for m in (0, 4, 5, -1):
        with pytest.raises(ValueError, match="ref_size must be in 1..N-1 in training"):
            virtual_batch_norm(z, m, impl="cpu")
    with pytest.raises(TypeError, match="ref_size must be an int"):
        virtual_batch_norm(z, 2.0, impl="cpu")
    with pytest.raises(ValueError, match="z must be 4-D"):
        virtual_batch_norm(z[0], 2, impl="cpu")
    with pytest.raises(ValueError, match="weight must have shape"):
        virtual_batch_norm(z, 2, torch.ones(4), impl="cpu")
    with pytest.raises(ValueError, match="eps must be positive"):
        virtual_batch_norm(z, 2, eps=0.0, impl="cpu")
    # eval: R alone may pass (ref_size == N), and it is reference batch normalization
    torch.testing.assert_close(virtual_batch_norm(z, 4, training=False, impl="cpu"),
                               F.batch_norm(z, None, None, training=True), **TOLERANCES[torch.float32])


def test_module():
    vbn = fastgan.nn.VirtualBatchNorm2d(3, ref_size=2, impl="cpu").double()
    with torch.no_grad():
        vbn.weight.copy_(affine(3)[0])
        vbn.bias.normal_()
    z = randn(ODD, dtype=torch.float64)
    want = definition(z, 2, vbn.weight, vbn.bias)
    torch.testing.assert_close(vbn(z), want, **TOLERANCES[torch.float64])
    torch.testing.assert_close(vbn.eval()(z), want, **TOLERANCES[torch.float64])  # no running statistics
    assert set(vbn.state_dict()) == {"weight", "bias"}
    assert "ref_size=2" in repr(vbn)
    plain = fastgan.nn.VirtualBatchNorm2d(3, ref_size=2, affine=False, impl="cpu").double()
    torch.testing.assert_close(plain(z), definition(z, 2), **TOLERANCES[torch.float64])
    with pytest.raises(ValueError, match="ref_size must be an int >= 1"):
        fastgan.nn.VirtualBatchNorm2d(3, ref_size=0)


# ---- the fused blocks ----

def _block_inputs(transposed, shape=(6, 3, 5, 5), c_out=4, k=3):
    x = randn(shape, "channels_last", torch.float64).requires_grad_()
    w_shape = (shape[1], c_out, k, k) if transposed else (c_out, shape[1], k, k)
    w = (0.3 * torch.randn(w_shape, dtype=torch.float64)).requires_grad_()
    b = torch.randn(c_out, dtype=torch.float64).requires_grad_()
    gamma, beta = (t.requires_grad_() for t in affine(c_out))
    return x, w, b, gamma, beta


BLOCKS = [
    ("transposed", lambda *a, impl: fastgan.ops.conv_transpose_vbn_relu(*a, 2, stride=2, padding=1, impl=impl),
     lambda x, w, b, g, be: definition(F.conv_transpose2d(x, w, b, 2, 1), 2, g, be, slope=0.0)),
    ("direct", lambda *a, impl: fastgan.ops.conv2d_vbn_leaky_relu(*a, 2, stride=2, padding=1, impl=impl),
     lambda x, w, b, g, be: definition(F.conv2d(x, w, b, 2, 1), 2, g, be, slope=0.2)),
]


@pytest.mark.parametrize("name, block, want_fn", BLOCKS, ids=[b[0] for b in BLOCKS])
@pytest.mark.parametrize("impl", IMPLS)
def test_block_float64(name, block, want_fn, impl):
    inputs = _block_inputs(name == "transposed")
    want = want_fn(*inputs)
    got = block(*inputs, impl=impl)
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
    gy = torch.randn_like(want)
    for g, w in zip(grads(got, inputs, gy), grads(want, inputs, gy)):
        # the conv bias cancels: its gradient is exactly 0 for cpu, ~1e-16 for the reference
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name, block, want_fn", BLOCKS, ids=[b[0] for b in BLOCKS])
@pytest.mark.parametrize("impl", IMPLS)
def test_block_under_autocast(name, block, want_fn, impl):
    """Under torch.autocast("cpu", bfloat16) the convolution's operands go to bfloat16 as eager's do
    (the output is bfloat16, gradients come back in their parameters' float32), and y matches the
    definition in float64 from the same rounded operands within conv_tolerance's bfloat16 bound."""
    x, w, b, gamma, beta = (t.detach().float().requires_grad_() for t in _block_inputs(name == "transposed"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x, w, b, gamma, beta, impl=impl)
    assert y.dtype == torch.bfloat16
    rounded = [t.detach().to(torch.bfloat16).double() for t in (x, w, b)]
    want = want_fn(*rounded, gamma.detach().double(), beta.detach().double())
    torch.testing.assert_close(y.double(), want, **conv_tolerance(torch.bfloat16))
    y.backward(torch.randn_like(y))
    assert all(t.grad is not None and t.grad.dtype == torch.float32 and t.grad.isfinite().all()
               for t in (x, w, gamma, beta))


@pytest.mark.parametrize("name, block, want_fn", BLOCKS, ids=[b[0] for b in BLOCKS])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_block_gradcheck_and_penalty(name, block, want_fn, impl):
    x, w, b, gamma, beta = _block_inputs(name == "transposed", shape=(3, 2, 3, 3), c_out=2, k=2)
    fn = lambda x, w, g, be: block(x, w, None, g, be, impl=impl)  # noqa: E731
    # the interpreter: a random projection of the Jacobian (helpers.gradchecks)
    assert torch.autograd.gradcheck(fn, (x, w, gamma, beta), fast_mode=impl == "triton")
    # a gradient penalty through the block (double backward: the explicit reference fallback)
    gx, = torch.autograd.grad(fn(x, w, gamma, beta).square().sum(), x, create_graph=True)
    gx_ref, = torch.autograd.grad(want_fn(x, w, None, gamma, beta).square().sum(), x, create_graph=True)
    torch.testing.assert_close(gx, gx_ref, **TOLERANCES[torch.float64])
    gw, = torch.autograd.grad(gx.square().sum(), w)
    gw_ref, = torch.autograd.grad(gx_ref.square().sum(), w)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-9, atol=1e-9)


def test_block_compile_and_opcheck():
    x, w, b, gamma, beta = (t.detach().float().requires_grad_() for t in _block_inputs(False))
    fn = torch.compile(lambda *a: fastgan.ops.conv2d_vbn_leaky_relu(*a, 2, stride=2, padding=1, impl="cpu"),
                       fullgraph=True, backend="aot_eager")
    got = fn(x, w, b, gamma, beta)
    torch.testing.assert_close(got, fastgan.ops.conv2d_vbn_leaky_relu(x, w, b, gamma, beta, 2, stride=2, padding=1,
                                                                      impl="cpu"), rtol=0, atol=0)
    got.sum().backward()
    assert x.grad is not None and w.grad is not None
    torch.library.opcheck(torch.ops.fastgan.conv_vbn_train.default,
                          (x, w, b, gamma, beta, 2, 1e-5, [2, 2], [1, 1], [0, 0], False, 0.2, "cpu"))


def test_block_bad_input():
    x, w, b, gamma, beta = _block_inputs(False)
    with pytest.raises(ValueError, match="ref_size must be in 1..N-1 in training .* with N = 6 \\(x's batch\\), got 6"):
        fastgan.ops.conv2d_vbn_leaky_relu(x, w, b, gamma, beta, 6, impl="cpu")


def test_fuse_and_modules():
    torch.manual_seed(0)
    seq = torch.nn.Sequential(
        torch.nn.ConvTranspose2d(3, 4, 4, 2, 1), fastgan.nn.VirtualBatchNorm2d(4, 2), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, 2, 1), fastgan.nn.VirtualBatchNorm2d(5, 2), torch.nn.LeakyReLU(0.1),
    ).double()
    for p in seq.parameters():  # fresh affine values, not the 1 / 0 init
        torch.nn.init.normal_(p, 0.5, 0.2)
    x = randn((5, 3, 4, 4), dtype=torch.float64)
    want = seq(x)
    done = fastgan.fuse(seq, impl="cpu")
    assert [r.pattern for r in done] == ["ConvTranspose2d -> VirtualBatchNorm2d -> ReLU",
                                         "Conv2d -> VirtualBatchNorm2d -> LeakyReLU"]
    torch.testing.assert_close(seq(x), want, rtol=1e-10, atol=1e-10)
    fastgan.unfuse(seq)
    block = fastgan.nn.Conv2dVBNLeakyReLU(3, 4, 3, ref_size=2, padding=1, negative_slope=0.1, impl="cpu").double()
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), fastgan.nn.VirtualBatchNorm2d(4, 2),
                                torch.nn.LeakyReLU(0.1)).double()
    plain.load_state_dict(block.state_dict())
    torch.testing.assert_close(block(x), plain(x), rtol=1e-10, atol=1e-10)
    gen = fastgan.nn.ConvTransposeVBNReLU2d(3, 4, 4, ref_size=2, stride=2, padding=1, impl="cpu").double()
    assert gen(x).shape == (5, 4, 8, 8)


# ---- models and the example ----

def test_generator_vbn_option_and_example():
    """examples/vbn_coupling.py: BatchNorm2d couples a sample to its batch-mates, VBN does not."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "vbn_coupling.py"
    spec = importlib.util.spec_from_file_location("vbn_coupling", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--impl", "cpu", "--ref-size", "3"])
    bn, vbn = results.values()
    assert bn > 1e-3 and vbn == 0.0
    gen = fastgan.models.DCGANGenerator(nz=8, ngf=4, vbn_ref_size=3, impl="cpu")
    assert "reference_z" in gen.state_dict() and gen.reference_z.shape == (3, 8, 1, 1)
    assert [r.pattern for r in gen.fusions] == ["ConvTranspose2d -> VirtualBatchNorm2d -> ReLU"] * 4
    z = torch.randn(5, 8, 1, 1)
    unfused = fastgan.models.DCGANGenerator(nz=8, ngf=4, vbn_ref_size=3, fused=False)
    unfused.load_state_dict(gen.state_dict())
    torch.testing.assert_close(gen(z), unfused(z), **TOLERANCES[torch.float32])


def test_dcgan_step_label_smoothing_and_feature_matching():
    from fastgan.models import DCGANDiscriminator, DCGANGenerator, dcgan_step
    torch.manual_seed(0)
    gen = DCGANGenerator(nz=8, ngf=4, vbn_ref_size=2, impl="cpu")
    disc = DCGANDiscriminator(ndf=4, impl="cpu")
    # lr 0: the step's losses can be recomputed from the same parameters afterwards
    opt_g, opt_d = (torch.optim.SGD(m.parameters(), lr=0.0) for m in (gen, disc))
    real, z = torch.rand(4, 3, 64, 64) * 2 - 1, torch.randn(4, 8, 1, 1)
    loss_d, loss_g = dcgan_step(gen, disc, opt_g, opt_d, real, z, label_smoothing=0.1, feature_matching=True)
    bce = F.binary_cross_entropy_with_logits
    with torch.no_grad():
        fake = gen(z)
        logits_real, f_real = disc(real, return_features=True)
        logits_fake, f_fake = disc(fake, return_features=True)
    assert f_real.shape == (4, 4 * 8 * 4 * 4)
    want_d = bce(logits_real, torch.full((4,), 0.9)) + bce(logits_fake, torch.zeros(4))
    want_g = (f_real.mean(0) - f_fake.mean(0)).square().mean()
    assert loss_d == pytest.approx(want_d.item(), rel=1e-5)
    assert loss_g == pytest.approx(want_g.item(), rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        dcgan_step(gen, disc, opt_g, opt_d, real, z, label_smoothing=1.0)


# ---- the kernels of each backend, directly ----

@pytest.mark.parametrize("with_gamma, with_beta", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_kernels_match_cpu_kernels(layout, with_gamma, with_beta):
    """vbn_forward / vbn_backward of triton against cpu's (both checked against float64 above), with
    gamma or beta alone or neither, and grad_y in the other dense layout (an NCHW loss gradient)."""
    z = randn((5, 6, 3, 5), layout, torch.float64)
    gamma, beta = affine(6)
    gamma, beta = (gamma if with_gamma else None), (beta if with_beta else None)
    other = "contiguous" if layout == "channels_last" else "channels_last"
    gy = randn(z.shape, other, torch.float64)
    cpu, triton = kernels("cpu"), kernels("triton")
    want = cpu.vbn_forward(z, 2, gamma, beta, 1e-5, 0.2)
    got = triton.vbn_forward(z, 2, gamma, beta, 1e-5, 0.2)
    assert got[0].stride() == z.stride()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCES[torch.float64])
    want = cpu.vbn_backward(gy, z, want[1], want[2], 2, gamma, beta, 0.2)
    got = triton.vbn_backward(gy, z, got[1], got[2], 2, gamma, beta, 0.2)
    assert got[0].stride() == z.stride()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_strided_affine(impl):
    """Strided gamma / beta (every other value of a buffer) are taken as the cpu kernels take them."""
    z = randn((4, 3, 2, 5), dtype=torch.float64)
    gamma = (torch.rand(6, dtype=torch.float64) + 0.5)[::2]
    beta = torch.randn(6, dtype=torch.float64)[::2]
    torch.testing.assert_close(virtual_batch_norm(z, 2, gamma, beta, impl=impl), definition(z, 2, gamma, beta),
                               **TOLERANCES[torch.float64])


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_kernel_bad_input(impl):
    """The kernels name the argument they reject (the public op checks first; these guard direct calls)."""
    k = kernels(impl)
    z = randn((4, 3, 2, 2))
    with pytest.raises(Exception, match="ref_size must be in 1..N"):
        k.vbn_forward(z, 5, None, None, 1e-5, 1.0)
    with pytest.raises(Exception, match="gamma"):
        k.vbn_forward(z, 2, torch.ones(3, dtype=torch.float64), None, 1e-5, 1.0)
    with pytest.raises(Exception, match="z must be 4-D"):
        k.vbn_forward(z[0], 2, None, None, 1e-5, 1.0)
    y, mean, invstd = k.vbn_forward(z, 2, None, None, 1e-5, 1.0)
    with pytest.raises(Exception, match="grad_y"):
        k.vbn_backward(y[:, :2], z, mean, invstd, 2, None, None, 1.0)
    with pytest.raises(Exception, match="mean"):
        k.vbn_backward(y, z, mean.double(), invstd, 2, None, None, 1.0)


# ---- GPU: cuda and triton on CUDA tensors (skipped without a GPU) ----

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, layout, dtype):
    """Odd shapes (partial tiles, warps and channel blocks; 37 channels over two 32-lane blocks, one
    pixel) and a DCGAN-sized one, each ref_size 1..N-1 of the first, against float64 from the same
    rounded inputs; bounds as in test_low_precision."""
    shapes = [(7, 3, 5, 5), (4, 37, 1, 19), (5, 6, 1, 1), (80, 128, 16, 16)]
    for shape in shapes:
        for m in (range(1, shape[0]) if shape == shapes[0] else (2,)):
            z = randn(shape, layout, dtype, "cuda").requires_grad_()
            gamma, beta = (t.to("cuda", torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()
                           for t in affine(shape[1]))
            exact = [t.detach().double().requires_grad_() for t in (z, gamma, beta)]
            want = definition(exact[0], m, exact[1], exact[2])
            got = virtual_batch_norm(z, m, gamma, beta, impl=impl)
            tol = TOLERANCES[dtype]
            assert got.dtype == dtype and got.stride() == z.stride() and not got.isnan().any()
            torch.testing.assert_close(got.double(), want, **tol)
            gy = torch.randn(want.shape, device="cuda").to(dtype)
            g_got = grads(got, (z, gamma, beta), gy)
            g_want = grads(want, exact, gy.double())
            scale = g_want[0].abs().max().item()
            torch.testing.assert_close(g_got[0].double(), g_want[0], rtol=tol["rtol"],
                                       atol=tol["atol"] * max(1, scale))
            xhat = (want - exact[2].detach()[:, None, None]) / exact[1].detach()[:, None, None]
            for g, w, terms in ((g_got[1], g_want[1], gy.double() * xhat), (g_got[2], g_want[2], gy.double())):
                bound = tol["rtol"] * terms.abs().sum((0, 2, 3)) + tol["atol"]
                assert ((g.double() - w).abs() <= bound).all()


@pytest.mark.gpu
@pytest.mark.parametrize("slope", [None, 0.0, 0.2])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_float64_activations_gpu(impl, slope):
    for layout in ("contiguous", "channels_last"):
        z = randn(ODD, layout, torch.float64, "cuda").requires_grad_()
        gamma, beta = (t.cuda().requires_grad_() for t in affine(ODD[1]))
        want = definition(z, 3, gamma, beta, slope=slope)
        got = virtual_batch_norm(z, 3, gamma, beta, negative_slope=slope, impl=impl)
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
        gy = torch.randn_like(want)
        for g, w in zip(grads(got, (z, gamma, beta), gy), grads(want, (z, gamma, beta), gy)):
            torch.testing.assert_close(g, w, **TOLERANCES[torch.float64])


@pytest.mark.gpu
@pytest.mark.parametrize("name, block, want_fn", BLOCKS, ids=[b[0] for b in BLOCKS])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_block_gpu(name, block, want_fn, impl):
    """The fused blocks on the GPU backends in float64 (no TF32 there) and float32 (TF32 where cuDNN may)."""
    inputs = [t.detach().cuda().requires_grad_() for t in _block_inputs(name == "transposed")]
    want = want_fn(*inputs)
    got = block(*inputs, impl=impl)
    torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
    gy = torch.randn_like(want)
    for g, w in zip(grads(got, inputs, gy), grads(want, inputs, gy)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    single = [t.detach().float().requires_grad_() for t in inputs]
    got = block(*single, impl=impl)
    torch.testing.assert_close(got.double(), want.detach(), **conv_tolerance(torch.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_kernels_in_cuda_graph(impl, layout):
    """No host sync: forward and backward kernels capture in a CUDA graph; a replay on new inputs
    (copied in place) gives bitwise what eager calls give (fixed-order sums: deterministic)."""
    k = kernels(impl)
    z, gy = (randn((20, 48, 8, 8), layout, torch.float32, "cuda") for _ in range(2))
    gamma, beta = (t.float().cuda() for t in affine(48))

    def step():
        y, mean, invstd = k.vbn_forward(z, 4, gamma, beta, 1e-5, 0.2)
        return (y, mean, invstd, *k.vbn_backward(gy, z, mean, invstd, 4, gamma, beta, 0.2))

    step()  # compile / autotune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    z.copy_(randn(z.shape, layout, torch.float32, "cuda"))
    gy.copy_(randn(z.shape, layout, torch.float32, "cuda"))
    graph.replay()
    for got, want in zip(captured, step()):
        assert torch.equal(got, want)
