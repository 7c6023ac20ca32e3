"""Shared test helpers: backends to test, input layouts, dtype tolerances."""

import torch

CPU_BACKENDS = ["cpu", "triton"]  # triton through the interpreter (conftest)
GPU_BACKENDS = ["cuda", "triton"]
LAYOUTS = ["contiguous", "channels_last", "strided", "permuted"]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


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


def assert_close(actual, expected, dtype=None):
    dtype = dtype or expected.dtype
    assert actual.shape == expected.shape
    assert not actual.isnan().any(), "output has NaN: an element was never written"
    torch.testing.assert_close(actual.to(expected.dtype), expected, **TOLERANCES[dtype])


def expected_in(dtype):
    """The dtype the reference runs in: float32 for half types, so the oracle is not itself rounded."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_forward_backward(op, reference, inputs, impl, dtype):
    """Output and input gradients of `op(*inputs, impl=impl)` against `reference` at a higher precision."""
    exact = [t.detach().to(expected_in(dtype)).requires_grad_() for t in inputs]
    mine = [t.detach().requires_grad_() for t in inputs]  # keeps each input's strides
    want = reference(*exact)
    got = op(*mine, impl=impl)
    assert_close(got, want, dtype)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, exact, grad)
    got_grads = torch.autograd.grad(got, mine, grad.to(dtype))
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, dtype)
    return got


def fast_backends(device):
    return GPU_BACKENDS if torch.device(device).type == "cuda" else CPU_BACKENDS



def gradchecks(fn, inputs, impl):
    """gradcheck and gradgradcheck in float64. Under the Triton interpreter every launch costs
    milliseconds, so triton checks a random projection of the Jacobians (fast_mode) instead of
    every column: still exact up to the finite-difference error, for any wrong entry."""
    fast = impl == "triton" and not inputs[0].is_cuda
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=fast)
