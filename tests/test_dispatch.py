"""fused_op's plain-call path (fastgan/ops/_dispatch.py): the Function gets the tensors and one tuple of
the other arguments, and grad mode off runs the kernel alone."""

import importlib

import pytest
import torch

from fastgan.ops._dispatch import fused_op
from helpers import randn

bias_act = importlib.import_module("fastgan.ops.bias_act")  # the module, not the function


def test_tensor_arguments_must_come_first():
    def kernel(eps: float, x: torch.Tensor) -> torch.Tensor:
        return x

    with pytest.raises(TypeError, match="tensor arguments must come first"):
        fused_op("test_misordered", kernel, kernel, None, None)
    assert not hasattr(torch.ops.fastgan, "test_misordered")  # checked before the op is defined


def test_function_gets_the_tensors_and_one_tuple():
    x, b = randn((2, 3, 2, 2)).requires_grad_(), randn((3,)).requires_grad_()
    y = bias_act._bias_act(x, b, 1, 0.2, 1.0, 0.5, 2.0, -1.0, "cpu")
    assert type(y.grad_fn).__name__ == "bias_actBackward"
    assert len(y.grad_fn.needs_input_grad) == 3  # x, bias, the scalars
    grads = torch.autograd.grad(y, (x, b), torch.ones_like(y))  # the backward's 9 gradients, trimmed
    assert [g.shape for g in grads] == [x.shape, b.shape]


def test_grad_mode_off_runs_the_kernel_alone():
    x, b = randn((2, 3, 2, 2)).requires_grad_(), randn((3,)).requires_grad_()
    with torch.no_grad():
        y = bias_act.bias_act(x, b, "lrelu", 0.2, 1.0, x_mul=0.5, impl="cpu")
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(y, bias_act.bias_act(x, b, "lrelu", 0.2, 1.0, x_mul=0.5, impl="cpu"),
                               rtol=0, atol=0)


def test_a_kernel_op_missing_from_the_extension_says_rebuild():
    """An extension built from an older checkout lacks the newer kernel ops: a clear error, not
    torch.ops' AttributeError."""
    from fastgan.ops._dispatch import kernels

    with pytest.raises(RuntimeError, match=r"no kernel op fastgan_cpu::no_such_op.*rebuild"):
        kernels("cpu").no_such_op
