"""The kernels behind a backend name: `kernels("cpu").pixel_norm(x, eps)`.

cpu and cuda kernels are torch.library ops registered by the compiled extensions
(`fastgan_cpu::*`, `fastgan_cuda::*`); triton kernels are Python host functions.
Every backend exposes the same names with the same signatures, and takes inputs
already laid out by the public op (contiguous, or channels-last for 4-D tensors).
"""

import torch

from .. import _extensions


def kernels(impl):
    if impl == "cpu":
        _extensions.load("_C")
        return torch.ops.fastgan_cpu
    if impl == "cuda":
        _extensions.load("_C_cuda")
        return torch.ops.fastgan_cuda
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


def _traced():
    """True while torch.compile, a dispatch mode (FakeTensor, make_fx) or a torch.func transform
    is at work: those must see the custom op."""
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._are_functorch_transforms_active())


def fused_op(name, kernel, fake, backward, setup_context):
    """Defines the custom op `fastgan::<name>` from `kernel` (annotated for its schema), with its
    fake and its autograd formula, and returns the function the public ops call.

    In plain eager code that function runs `kernel` inside a `torch.autograd.Function` with the
    same formula: ~10 us a call where the custom op's dispatch costs ~50 (on CPU, caches cold
    after a kernel), which decides the speed of the small ops. Traced code gets the custom op
    itself, so torch.compile and opcheck see an opaque op with a fake. `.op` is the custom op.
    """
    op = torch.library.custom_op(f"fastgan::{name}", kernel, mutates_args=())
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)

    def forward(ctx, *args):
        out = kernel(*args)
        setup_context(ctx, args, out)
        return out

    # The classic form (ctx in forward): with a separate setup_context, Function.apply costs
    # ~40 us more per call here (functorch's argument unwrapping).
    function = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward)})

    def call(*args):
        return op(*args) if _traced() else function.apply(*args)

    call.op = op
    return call
