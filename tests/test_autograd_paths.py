"""The two ways into an op's kernels (fastgan/ops/_dispatch.py: fused_op): eager calls run an
autograd.Function, traced code runs the custom op. Both carry the same formulas; here the custom
op's own autograd is checked to the second order, as the op tests check the eager path."""

import importlib

import pytest
import torch

# The modules, not the functions of the same names that fastgan.ops exports.
pixel_norm, fade_in, blend_reals = (importlib.import_module(f"fastgan.ops.{m}")
                                    for m in ("pixel_norm", "fade_in", "blend_reals"))
from helpers import CPU_BACKENDS, gradchecks, randn  # noqa: E402

F64 = torch.float64

# name: (the public op's fused_op caller, fresh float64 inputs, the arguments after them)
CALLERS = {
    "pixel_norm": (pixel_norm._pixel_norm, lambda: [randn((2, 3, 3, 2), dtype=F64)], [1e-8]),
    "pixel_norm_backward": (pixel_norm._pixel_norm_backward,
                            lambda: [randn((2, 3, 3, 2), dtype=F64), randn((2, 3, 3, 2), dtype=F64)], [1e-8]),
    "fade_in": (fade_in._fade_in, lambda: [randn((1, 2, 2, 3), dtype=F64), randn((1, 2, 4, 6), dtype=F64)], [0.3]),
    "fade_in_backward": (fade_in._fade_in_backward, lambda: [randn((1, 2, 4, 6), dtype=F64)], [0.3]),
    "blend_reals": (blend_reals._blend_reals, lambda: [randn((1, 2, 4, 6), dtype=F64)], [0.3]),
}


@pytest.mark.parametrize("impl", CPU_BACKENDS)
@pytest.mark.parametrize("name", CALLERS)
def test_custom_op_gradcheck(name, impl):
    caller, make, args = CALLERS[name]
    inputs = tuple(t.requires_grad_() for t in make())
    gradchecks(lambda *ts: caller.op(*ts, *args, impl), inputs, impl)


@pytest.mark.parametrize("name", CALLERS)
def test_eager_and_traced_paths_agree(name):
    caller, make, args = CALLERS[name]
    inputs = [t.requires_grad_() for t in make()]
    eager = caller(*inputs, *args, "cpu")
    traced = caller.op(*inputs, *args, "cpu")
    eager, traced = [o if isinstance(o, tuple) else (o,) for o in (eager, traced)]
    assert type(eager[0].grad_fn).__name__ == f"{name}Backward"  # the autograd.Function
    assert "fastgan" in type(traced[0].grad_fn).__name__.lower()  # the custom op's node
    grads = [torch.randn_like(o) for o in eager]
    for a, b in zip(torch.autograd.grad(eager, inputs, grads), torch.autograd.grad(traced, inputs, grads)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
