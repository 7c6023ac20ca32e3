import importlib

import pytest
import torch

import fastgan
from fastgan import _extensions
from fastgan.ops import (minibatch_discrimination, minibatch_discrimination_reference, minibatch_features,
                         minibatch_features_reference)
from helpers import (CPU_BACKENDS, GPU_BACKENDS, GPU_DTYPES, TOLERANCES, assert_close, check_forward_backward,
                     gemm_tolerance, gradchecks, randn)
from test_extensions import _cuda_extension

# The module, not the function of the same name that fastgan.ops exports.
mbd = importlib.import_module("fastgan.ops.minibatch_discrimination")

# (x shape [N, ...], B, C): N = 1, N not a multiple of any tile, flattened feature maps, C != 5.
SHAPES = [((1, 6), 3, 5), ((3, 2, 3), 4, 5), ((17, 7), 3, 5), ((5, 4, 2, 2), 2, 3), ((6, 3), 5, 9)]
# CPU only (the interpreter is slow): several row tiles and vector lengths, vector tails, C from 1 to 12.
CPU_SHAPES = [((64, 16), 7, 5), ((100, 9), 3, 5), ((37, 8), 4, 1), ((50, 8), 3, 8), ((45, 6), 2, 12)]


def op_with(include_self, features_only=False):
    fn = minibatch_features if features_only else minibatch_discrimination
    return lambda x, T, bias, impl: fn(x, T, bias, include_self, impl=impl)


def ref_with(include_self, features_only=False):
    fn = minibatch_features_reference if features_only else minibatch_discrimination_reference
    return lambda x, T, bias: fn(x, T, bias, include_self)


def ref_with_m_in(dtype, include_self):
    """The reference (any precision) with M = x @ T rounded to `dtype`, as the op's GEMM stores it, the
    gradient passed straight through the rounding: the signs of M_i - M_j, the kink of |.| where a pair's
    gradient term flips, are then those the kernel sees (a float64 M splits pairs that a half-precision
    M rounds together). For half dtypes only: a float32 GEMM's M is off by more than its rounding, so
    rounding a float64 M to float32 would make ties the kernel does not see. The features are the
    reference's, of M through an identity T."""
    def ref(x, T, bias):
        a, b, c = T.shape
        m = x.reshape(x.shape[0], a) @ T.reshape(a, b * c)
        m = m + (m.to(dtype).to(m.dtype) - m).detach()
        eye = torch.eye(b * c, dtype=m.dtype, device=m.device).view(b * c, b, c)
        return torch.cat([x.reshape(x.shape[0], -1), minibatch_features_reference(m, eye, bias, include_self)], 1)
    return ref


def inputs(shape, b, c, dtype=torch.float32, layout="contiguous", scale=0.3):
    """x, T and bias; T is scaled so that the distances (~ scale * sqrt(A) * C) keep exp(-D) visible."""
    x = randn(shape, layout, dtype)
    a = x[0].numel()
    T = (scale / a**0.5 * torch.randn(a, b, c)).to(dtype)
    return x, T, randn((b,), dtype=dtype)


def check(x, T, bias, impl, dtype, include_self=False, features_only=False):
    return check_forward_backward(op_with(include_self, features_only), ref_with(include_self, features_only),
                                  [x, T, bias], impl, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("shape, b, c", SHAPES)
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity(impl, shape, b, c, include_self, dtype):
    check(*inputs(shape, b, c, dtype), impl, dtype, include_self)


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("shape, b, c", CPU_SHAPES)
def test_parity_cpu_large(shape, b, c, include_self):
    check(*inputs(shape, b, c), "cpu", torch.float32, include_self)
    check(*inputs(shape, b, c, torch.float64), "cpu", torch.float64, include_self)


@pytest.mark.parametrize("layout", ["channels_last", "strided", "permuted"])
@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_parity_layouts(impl, layout):
    """x of any layout is flattened as its logical [N, C, H, W]; T may be non-contiguous too."""
    x, _, bias = inputs((5, 3, 2, 2), 3, 5, layout=layout)
    T = torch.randn(3, 12, 5).transpose(0, 1) * 0.1  # [12, 3, 5], not contiguous
    check(x, T, bias, impl, torch.float32)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_features_only(impl):
    out = check(*inputs((7, 2, 3), 4, 5), impl, torch.float32, features_only=True)
    assert out.shape == (7, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parity_low_precision_cpu(dtype):
    """Against the reference on the same half-precision inputs: both round the GEMM's M to dtype
    (an error in D that a float32 oracle would blame on the kernel), then compute in float32."""
    for (shape, b, c), include_self in (((40, 12), 5, 5), False), (((19, 12), 3, 7), True):
        mine = [t.requires_grad_() for t in inputs(shape, b, c, dtype)]
        exact = [t.detach().requires_grad_() for t in mine]
        got = minibatch_discrimination(*mine, include_self, impl="cpu")
        want = minibatch_discrimination_reference(*exact, include_self)
        assert_close(got, want)
        g = torch.randn_like(want)
        for a, w in zip(torch.autograd.grad(got, mine, g), torch.autograd.grad(want, exact, g)):
            assert_close(a, w)


def identity_T(b, c, dtype=torch.float32):
    """T with M = x.view(N, B, C): tests that set M directly."""
    return torch.eye(b * c, dtype=dtype).view(b * c, b, c)


@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_single_sample(impl):
    """N = 1: no other sample, o = 0 (1 with include_self), and no gradient through o."""
    x = randn((1, 10)).requires_grad_()
    T = randn((10, 3, 5)).requires_grad_()
    for include_self, want in ((False, 0.0), (True, 1.0)):
        o = minibatch_features(x, T, include_self=include_self, impl=impl)
        torch.testing.assert_close(o, torch.full((1, 3), want), rtol=0, atol=0)
    gx, gT = torch.autograd.grad(minibatch_features(x, T, impl=impl).sum(), (x, T))
    assert gx.abs().max() == 0 and gT.abs().max() == 0


@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_self_term_is_masked_not_subtracted(impl):
    """Samples far apart: exp(-20) = 2e-9 survives, which 'include then subtract 1' in float32 would zero."""
    x = torch.tensor([[0.0] * 5, [4.0] * 5, [8.0] * 5])  # D = 20 between neighbours, 40 across
    T = identity_T(1, 5)
    want = torch.tensor([[2.0611536e-09], [4.1223072e-09], [2.0611536e-09]])
    o = minibatch_features(x, T, impl=impl)
    torch.testing.assert_close(o, want, rtol=1e-5, atol=0)
    torch.testing.assert_close(minibatch_features(x, T, include_self=True, impl=impl), 1.0 + want, rtol=0, atol=0)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_ties(impl):
    """Identical rows (D = 0, exp = 1) and equal coordinates: sign(0) = 0, as torch.abs's gradient."""
    n = 19 if impl == "cpu" else 7
    x = torch.randn(n, 6, 5)
    x[3] = x[1]           # whole rows equal
    x[5, :, 2] = x[0, :, 2]  # one coordinate equal
    x = x.reshape(n, 30)
    T = identity_T(6, 5)
    check(x, T, randn((6,)), impl, torch.float32)
    check(x.double(), T.double(), randn((6,), dtype=torch.float64), impl, torch.float64, include_self=True)


@pytest.mark.parametrize("impl", ["reference"] + CPU_BACKENDS)
def test_gradcheck(impl):
    x, T, bias = (t.double().requires_grad_() for t in inputs((4, 3), 2, 3))
    gradchecks(lambda x, T, bias: minibatch_discrimination(x, T, bias, impl=impl), (x, T, bias), impl)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_custom_op_gradcheck(impl):
    """The custom ops' own autograd (the traced path), to the second order."""
    m = randn((5, 2, 3), dtype=torch.float64).requires_grad_()
    g = randn((5, 2), dtype=torch.float64).requires_grad_()
    gradchecks(lambda m: mbd._features.op(m, True, impl), (m,), impl)
    gradchecks(lambda g, m: mbd._backward.op(g, m, impl), (g, m), impl)


def test_eager_and_traced_paths_agree():
    m = randn((6, 3, 5)).requires_grad_()
    eager = mbd._features(m, False, "cpu")
    traced = mbd._features.op(m, False, "cpu")
    assert type(eager.grad_fn).__name__ == "minibatch_discriminationBackward"
    assert "fastgan" in type(traced.grad_fn).__name__.lower()
    g = torch.randn_like(eager)
    torch.testing.assert_close(torch.autograd.grad(eager, m, g), torch.autograd.grad(traced, m, g), rtol=0, atol=0)


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_opcheck(impl):
    m = randn((5, 3, 5)).requires_grad_()
    g = randn((5, 3)).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.minibatch_discrimination.default, (m, False, impl))
    torch.library.opcheck(torch.ops.fastgan.minibatch_discrimination.default, (m, True, impl))
    torch.library.opcheck(torch.ops.fastgan.minibatch_discrimination_backward.default, (g, m, impl))


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    layer = fastgan.nn.MinibatchDiscrimination(12, 4, 5, impl=impl)
    x = randn((6, 3, 2, 2)).requires_grad_()
    got = torch.compile(layer, fullgraph=True)(x)
    want = minibatch_discrimination_reference(x, layer.weight, layer.bias)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    params = (x, layer.weight, layer.bias)
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b)


KERNEL_OPS = ("minibatch_discrimination", "minibatch_discrimination_backward")


def test_cpu_extension_registers_the_kernels():
    assert _extensions.load("_C") is not None, _extensions.load_error("_C")
    for op in KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan_cpu::{op}", "CPU"), op


def test_cuda_extension_registers_the_kernels():
    _cuda_extension()  # skipped when not built, unless FASTGAN_REQUIRE_CUDA_EXT=1
    for op in KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan_cuda::{op}", "CUDA"), op


def test_module():
    torch.manual_seed(1)
    layer = fastgan.nn.MinibatchDiscrimination(512, impl="cpu")
    assert layer.weight.shape == (512, 100, 5) and layer.bias.shape == (100,)
    assert abs(layer.weight.std().item() - 0.05) < 1e-3 and abs(layer.weight.mean().item()) < 1e-3
    assert torch.equal(layer.bias, torch.full((100,), -1.0))
    x = randn((9, 32, 4, 4))
    out = layer(x)
    assert out.shape == (9, 512 + 100)
    torch.testing.assert_close(out, minibatch_discrimination_reference(x, layer.weight, layer.bias))
    no_bias = fastgan.nn.MinibatchDiscrimination(8, 3, 2, bias=False, include_self=True, impl="triton")
    assert no_bias.bias is None
    x = randn((4, 8))
    torch.testing.assert_close(no_bias(x), minibatch_discrimination_reference(x, no_bias.weight, None, True))
    assert "num_kernels=3" in repr(no_bias) and "include_self=True" in repr(no_bias)


# Peak extra memory of forward + backward, at N, 2N, 4N with A, B, C fixed: the fused op's must grow
# linearly (x, o, M, their gradients), the reference's grows as its [N, N, B, C] pairwise tensors.
MEMORY_ABC = (1024, 20, 5)  # the pairwise tensor: 26 MB at N = 256, 420 MB at 1024; x: 1 MB at 256
LINEAR_GROWTH = 2.2  # doubling N may at most double the extra memory, plus 10% for allocator rounding

# Runs in a fresh process per measurement (argv: impl, device, N, A, B, C; prints the peak extra bytes): nothing
# else allocated there in between, and the process's peak resident set size can be reset (clear_refs).
MEMORY_SCRIPT = """
import sys
import torch
from fastgan.ops import minibatch_discrimination, minibatch_discrimination_reference

impl, device, (n, a, b, c) = sys.argv[1], sys.argv[2], map(int, sys.argv[3:])
torch.set_num_threads(1)

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

def inputs(n):
    x = torch.randn(n, a, device=device, requires_grad=True)
    T = (0.3 / a**0.5 * torch.randn(a, b, c, device=device)).requires_grad_()
    return x, T, torch.randn(b, device=device, requires_grad=True), torch.randn(n, a + b, device=device)

def forward_backward(x, T, bias, grad):
    if impl == "reference":
        out = minibatch_discrimination_reference(x, T, bias)
    else:
        out = minibatch_discrimination(x, T, bias, impl=impl)
    return torch.autograd.grad(out, (x, T, bias), grad)

# Warm-up: library and thread-pool set-up, the kernels' first-call work. On a GPU at the measured N:
# triton autotunes per N, and its benchmarking allocates a 256 MB scratch buffer that would count.
# On the CPU at a small N, so that glibc does not keep the measured sizes' pages for the next call.
forward_backward(*inputs(n if device == "cuda" else 64))
args = inputs(n)
if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    grads = forward_backward(*args)
    torch.cuda.synchronize()
    print(torch.cuda.max_memory_allocated() - base)
else:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM (the peak resident set) := VmRSS (Linux >= 4.0)
    base = status("VmRSS")
    grads = forward_backward(*args)
    print(status("VmHWM") - base)
"""


def peak_extra_memory(impl, device, n, abc=MEMORY_ABC):
    """Peak bytes above the inputs during forward + backward of the op at batch N, in a fresh process.
    glibc's malloc maps blocks >= 128 KiB on their own and unmaps them at free (a fixed threshold, not the
    adaptive one), so the resident set follows the live tensors instead of what the heap kept from earlier."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, impl, device, *map(str, (n, *abc))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def check_memory_is_linear(impl, device, sizes):
    """The fused op's extra memory at N, 2N, 4N grows at most LINEAR_GROWTH-fold per doubling and stays far
    below the pairwise tensor; the reference's, measured the same way at N and 2N, holds at least that
    tensor and breaks the linear bound, so the measurement can tell them apart."""
    a, b, c = MEMORY_ABC
    pairwise = {n: n * n * b * c * 4 for n in sizes}  # bytes of one [N, N, B, C] float32 tensor
    fused = {n: peak_extra_memory(impl, device, n) for n in sizes}
    reference = {n: peak_extra_memory("reference", device, n) for n in sizes[:2]}
    figures = f"{impl}: {fused}, reference: {reference}, [N, N, B, C]: {pairwise} (bytes)"
    for n in sizes[:2]:
        assert reference[n] >= pairwise[n], figures
    assert reference[sizes[1]] > LINEAR_GROWTH * reference[sizes[0]], figures
    for small, large in zip(sizes, sizes[1:]):
        assert fused[large] <= LINEAR_GROWTH * fused[small], figures
    for n in sizes:  # the linear terms (x, o, dx: 3.9 MB measured at 256 on CPU) against the pairwise one
        assert 0 < fused[n] < pairwise[n] / 2, figures
    assert fused[sizes[-1]] < pairwise[sizes[-1]] / 20, figures


def test_memory_is_linear_in_n():
    """The fused forward and backward keep O(N * B * C) extra memory, the reference O(N^2 * B * C)."""
    check_memory_is_linear("cpu", "cpu", (256, 512, 1024))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_memory_is_linear_in_n_gpu(impl):
    check_memory_is_linear(impl, "cuda", (1024, 2048, 4096))


@pytest.mark.parametrize("bad, error, words", [
    (dict(x=torch.ones(4, 6, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
    (dict(x=torch.ones(6)), ValueError, "x must have at least 2 dimensions"),
    (dict(T=torch.ones(6, 15)), ValueError, "T must be 3-D"),
    (dict(T=torch.ones(5, 3, 5)), ValueError, "T must have shape"),
    (dict(T=torch.ones(6, 0, 5)), ValueError, "T must have at least one kernel"),
    (dict(T=torch.ones(6, 3, 5, dtype=torch.float64)), TypeError, "T has dtype"),
    (dict(bias=torch.ones(4)), ValueError, "bias must have shape"),
    (dict(bias=torch.ones(3, dtype=torch.float64)), TypeError, "bias has dtype"),
    (dict(include_self=1), TypeError, "include_self must be a bool"),
])
def test_bad_input(bad, error, words):
    args = dict(x=torch.ones(4, 6), T=torch.ones(6, 3, 5), bias=None, include_self=False) | bad
    with pytest.raises(error, match=words):
        minibatch_discrimination(**args, impl="cpu")


@pytest.mark.parametrize("impl", CPU_BACKENDS)
def test_kernel_rejects_bad_layouts(impl):
    kernels = mbd.kernels(impl)
    m = randn((4, 3, 5))
    with pytest.raises((ValueError, RuntimeError), match="M must be a contiguous"):
        kernels.minibatch_discrimination(m.transpose(0, 1), False)
    with pytest.raises((ValueError, RuntimeError), match="grad must be a contiguous"):
        kernels.minibatch_discrimination_backward(randn((4, 2)), m)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_parity_gpu(impl, dtype):
    for shape, b, c in SHAPES + CPU_SHAPES + [((300, 64), 100, 5)]:
        for include_self in (False, True):
            x, T, bias = (t.cuda() for t in inputs(shape, b, c, dtype))
            # M = x @ T and dT = x^T @ dM are GEMMs over A and N terms: errors relative to the largest
            ref = ref_with(include_self) if dtype == torch.float32 else ref_with_m_in(dtype, include_self)
            check_forward_backward(op_with(include_self), ref, [x, T, bias], impl, dtype, gemm_tolerance(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", GPU_BACKENDS)
def test_large_batch_gpu(impl):
    """N = 4096 (many tiles), rows idx against all in a float64 reference from the same m and grad."""
    m = randn((4096, 100, 5), device="cuda")
    o = mbd.kernels(impl).minibatch_discrimination(m, False)
    idx = torch.arange(0, 4096, 97, device="cuda")
    m64 = m.double()
    diff = m64[idx, None] - m64[None]  # the rows idx against all; its sign is that of the float32 difference
    e = torch.exp(-diff.abs().sum(3))
    e[torch.arange(len(idx), device="cuda"), idx] = 0.0  # the self terms
    assert_close(o[idx], e.sum(1), torch.float32)  # positive terms: elementwise relative error
    g = randn((4096, 100), device="cuda")
    dm = mbd.kernels(impl).minibatch_discrimination_backward(g, m)
    g64 = g.double()
    terms = ((g64[idx, None] + g64[None]) * e)[..., None] * diff.sign()
    want = -terms.sum(1)
    # Terms of both signs cancel: float32's elementwise relative error bounds each term's error, so the
    # sum's is that rtol times the sum of |terms| (plus the atol), not times |want|.
    tol = TOLERANCES[torch.float32]
    bound = tol["rtol"] * terms.abs().sum(1) + tol["atol"]
    assert not dm.isnan().any()
    assert ((dm[idx].double() - want).abs() <= bound).all(), ((dm[idx].double() - want).abs() / bound).max()
