"""The kernels behind a backend name: `kernels("cpu").pixel_norm(x, eps)`.

cpu and cuda kernels are torch.library ops registered by the compiled extensions
(`fastgan_cpu::*`, `fastgan_cuda::*`); triton kernels are Python host functions.
Every backend exposes the same names with the same signatures, and takes inputs
already laid out by the public op (contiguous, or channels-last for 4-D tensors).
"""

import inspect
import typing

import torch

from .. import _extensions

_kernels = {}  # backend name -> its kernels, once loaded


def kernels(impl):
    k = _kernels.get(impl)
    if k is None:
        k = _kernels[impl] = _load_kernels(impl)
    return k


class _KernelOps:
    """An extension's kernel ops by name, each the C++ callable behind its one overload: calling
    `torch.ops.fastgan_cpu.<op>` goes through OpOverloadPacket.__call__ in Python first (~0.35 us a
    call here, on every kernel call of every op). Dispatch, modes and __torch_function__ are the same."""

    def __init__(self, namespace):
        self._namespace = namespace

    def __getattr__(self, name):  # the first lookup of a name; then it is an attribute
        try:
            overload = getattr(self._namespace, name).default
        except AttributeError:
            raise RuntimeError(
                f"fastgan: the compiled extension has no kernel op {self._namespace.name}::{name}: it was built from "
                "an older checkout of fastgan; rebuild it (pip install -e . or python setup.py build_ext --inplace)"
            ) from None
        op = getattr(overload, "_op", overload)
        setattr(self, name, op)
        return op


def _load_kernels(impl):
    if impl == "cpu":
        _extensions.load("_C")
        return _KernelOps(torch.ops.fastgan_cpu)
    if impl == "cuda":
        _extensions.load("_C_cuda")
        return _KernelOps(torch.ops.fastgan_cuda)
    if impl == "triton":
        from .. import triton_kernels

        return triton_kernels
    raise ValueError(f"fastgan: backend {impl!r} has no kernels")


def to_layout(k, t, fmt):
    """`t` dense in layout `fmt` inside a kernel op's body (real tensors, no autograd): the
    backend's to_layout kernel (cpu: register-tile transposes; PyTorch's strided copy took 6-7 ms
    here where they take 1.6-2.4 for a 64x64x32x32 float32 NCHW tensor)."""
    if t.dim() != 4 or t.is_contiguous(memory_format=fmt):
        return t
    return k.to_layout(t, fmt == torch.channels_last)


# Bound once: _traced runs on every call, and each `torch._C.` lookup costs host time.
_is_compiling = torch.compiler.is_compiling
_dispatch_stack_len = torch._C._len_torch_dispatch_stack
_transforms_active = torch._C._are_functorch_transforms_active


def _traced():
    """True while torch.compile, a dispatch mode (FakeTensor, make_fx) or a torch.func transform
    is at work: those must see the custom op."""
    return _is_compiling() or _dispatch_stack_len() > 0 or _transforms_active()


def fused_op(name, kernel, fake, backward, setup_context, eager_kernel=None):
    """Defines the custom op `fastgan::<name>` from `kernel` (annotated for its schema), with its
    fake and its autograd formula, and returns the function the public ops call.

    In plain eager code that function runs `kernel` inside a `torch.autograd.Function` with the
    same formula: a few us a call where the custom op's dispatch costs ~50 (on CPU, caches cold
    after a kernel), which decides the speed of the small ops. With grad mode off (inference, or
    a backward that is not differentiated again) it runs `kernel` alone: no graph to record.
    Traced code gets the custom op itself, so torch.compile and opcheck see an opaque op with a
    fake. `.op` is the custom op.

    The kernel's tensor arguments come first (checked here). The Function gets them, then the
    other arguments as one tuple: Function.apply's cost grows with its argument count (~0.4 us
    less for bias_act's 9). So on the plain path `ctx.needs_input_grad` covers the tensors and
    one more entry; `backward` returns a gradient per kernel argument (None past the tensors).

    `eager_kernel`, when given, is what plain calls run instead of `kernel`: it takes kernel's
    arguments and then the call's `eager_args` (state it updates in place, such as running
    statistics, which a custom op with an autograd formula may not mutate; traced callers update
    that state with a separate op).
    """
    n = _tensor_arguments(name, kernel)
    n_args = len(inspect.signature(kernel).parameters)
    eager = eager_kernel or kernel
    op = torch.library.custom_op(f"fastgan::{name}", kernel, mutates_args=())
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)

    def forward(ctx, *packed):
        args = packed[:-1] + packed[-1]
        out = eager(*args)
        setup_context(ctx, args[:n_args], out)
        return out

    # The classic form (ctx in forward): with a separate setup_context, Function.apply costs
    # ~40 us more per call here (functorch's argument unwrapping).
    function = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward)})

    def call(*args, eager_args=()):
        if _traced():
            return op(*args)
        if not torch.is_grad_enabled():
            return eager(*args, *eager_args)
        return function.apply(*args[:n], (*args[n:], *eager_args))

    call.op = op
    return call


def _tensor_arguments(name, kernel):
    """How many arguments of `kernel` are tensors (Tensor, Tensor?, list of Tensor): all leading."""
    tensors = [_is_tensor_type(p.annotation) for p in inspect.signature(kernel).parameters.values()]
    n = tensors.index(False) if False in tensors else len(tensors)
    if any(tensors[n:]):
        raise TypeError(f"fastgan::{name}: the kernel's tensor arguments must come first")
    return n


def _is_tensor_type(annotation):
    return annotation is torch.Tensor or any(_is_tensor_type(a) for a in typing.get_args(annotation))
