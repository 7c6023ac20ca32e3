"""A traffic model of the GPU: bytes moved, kernel launches and the time floor they imply.

For each benchmark case and GPU-sized shape, the eager path (the case's reference) and the fastgan path
(the public op) run forward and backward on fake tensors (FakeTensorMode: shapes only, no memory,
no time), under a dispatch mode that records every operator call. Each call that computes (not a
view, not metadata) counts as one kernel launch that reads its tensor inputs once and writes its
outputs once: the least traffic a kernel of that operator can have. A fastgan op is one recorded
call (its custom op); KERNELS below says how many launches it makes and how many tensor-core
FLOPs it contains. The floor of a path is the sum over its kernels of
max(bytes / bandwidth, FLOPs / peak), on an H100 SXM: 3.35 TB/s and 989 dense bf16 TFLOP/s
(67 TFLOP/s for the float32 arithmetic of the non-GEMM kernels). Launch latency comes on top
(a few microseconds a launch without CUDA graphs) and is listed separately.

    python benchmarks/run.py --model [--ops ...] [--quick]
"""

import math
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

H100_BYTES_PER_S = 3.35e12
H100_TENSOR_FLOPS = 989e12
H100_FP32_FLOPS = 67e12
LAUNCH_US = 2.5  # launch latency per kernel when launches do not overlap, for the second floor


def _conv_transpose_flops(x, weight, *_):
    """2 * N * C_in * H_in * W_in * C_out * kH * kW: every input pixel meets every tap."""
    return 2 * x.shape[0] * math.prod(x.shape[1:]) * math.prod(weight.shape[1:])


def _conv2d_flops(x, weight, stride, padding):
    """2 * N * C_out * oH * oW * C_in * kH * kW: every output pixel meets every tap."""
    oh = (x.shape[2] + 2 * padding[0] - weight.shape[2]) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - weight.shape[3]) // stride[1] + 1
    return 2 * x.shape[0] * oh * ow * math.prod(weight.shape)


def _pairwise_flops(m, *_):
    """Per pair (i, j) and kernel b: C subtractions, abs and adds, one exp and one add."""
    n, b, c = m.shape[:3]
    return n * n * b * (3 * c + 2)


# fastgan custom op -> (kernel launches on the cuda backend, tensor-core FLOPs(args), other FLOPs(args)),
# as csrc/cuda launches them for channels-last inputs, a cuDNN call counted as one (it may run 1-3).
# Ops not listed: one launch, no FLOPs worth counting (elementwise and reductions).
KERNELS = {
    # GEMM (cuDNN), the statistics' reduce pass, their merge + finalize (one block), normalize + ReLU
    "conv_transpose_bn_relu_train": (4, _conv_transpose_flops, None),
    "conv_transpose_bn_relu_train_inplace": (4, _conv_transpose_flops, None),
    "conv_transpose_bias_relu": (3, _conv_transpose_flops, None),  # GEMM, cuDNN's bias pass, ReLU
    "bn_relu_backward": (3, None, None),  # both sums in one pass, their merge (one block), grad_z
    # cuDNN's data and weight gradients (each as many FLOPs as the forward), as asked for
    "conv_transpose_backward": (2, lambda grad, x, w, *a: _conv_transpose_flops(x, w) * (a[3] + a[4]), None),
    "conv2d_bn_leaky_relu_train": (4, lambda x, w, b, g, be, eps, stride, padding, *_:
                                   _conv2d_flops(x, w, stride, padding), None),
    # cuDNN's data and weight gradients, each 2 * N * C_out * oH * oW * C_in * kH * kW, as asked for
    "conv2d_backward": (2, lambda grad, x, w, *a: _conv_transpose_flops(grad, w) * (a[2] + a[3]), None),
    "minibatch_discrimination": (1, None, _pairwise_flops),
    "minibatch_discrimination_backward": (1, None, lambda grad, m, *_: 2 * _pairwise_flops(m)),
    "minibatch_stddev": (2, None, None),  # the statistics (and the copy of x), the new channels
    "minibatch_stddev_backward": (2, None, None),  # the new channels' sums, grad_x
    "fade_in_from_rgb_backward": (5, None, None),  # grad_img, the weight partials, their sum, 2 scalings
    "bias_act_backward_bias": (2, None, None),  # grad_x, then the bias's sum
    "virtual_batch_norm": (3, None, None),  # per-sample statistics, their combination, normalize
    "vbn_backward": (3, None, None),  # the sums, the per-sample coefficients, grad_z
    # the convolution (cuDNN), then virtual_batch_norm's 3
    "conv_vbn_train": (4, lambda x, w, b, g, be, m, eps, stride, padding, op, transposed, *_:
                       _conv_transpose_flops(x, w) if transposed else _conv2d_flops(x, w, stride, padding), None),
}


@dataclass
class Kernel:
    name: str
    bytes: int
    launches: int
    tensor_flops: float
    other_flops: float

    def seconds(self):
        return max(self.bytes / H100_BYTES_PER_S, self.tensor_flops / H100_TENSOR_FLOPS,
                   self.other_flops / H100_FP32_FLOPS)


def _tensors(tree):
    out = []
    for t in torch.utils._pytree.tree_leaves(tree):
        if isinstance(t, torch.Tensor):
            out.append(t)
    return out


def _nbytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        key = (id(t.untyped_storage()), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


class _Recorder(TorchDispatchMode):
    """Records one Kernel per operator call that computes."""

    SKIP = {"aten.detach", "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.lift_fresh",
            "aten.randn_like"}  # allocation and bookkeeping: no kernel

    def __init__(self):
        super().__init__()
        self.kernels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        if packet.startswith("prim.") or getattr(func, "is_view", False) or packet in self.SKIP:
            return out
        inputs = _tensors((args, kwargs))
        nbytes = _nbytes(inputs + _tensors(out))
        name = packet.split(".", 1)[1] if packet.startswith("fastgan.") else packet
        launches, tensor_fn, other_fn = KERNELS.get(name, (1, None, None))
        tensor_flops = tensor_fn(*args) if tensor_fn else 0
        if func.overloadpacket in flop_registry:
            fl = flop_registry[func.overloadpacket]
            tensor_flops = fl(*args, **kwargs, out_val=out)
        other = other_fn(*args) if other_fn else 0
        self.kernels.append(Kernel(name, nbytes, launches, tensor_flops, other))
        return out


def record(fn, make_inputs, shape, dtype, mode):
    """The kernels `fn` runs for `mode` ("forward" or "forward+backward") on fake inputs."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        inputs = make_inputs(shape, dtype, torch.device("cpu"))
        targets = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        if not targets:
            targets = [t.requires_grad_() for t in inputs if isinstance(t, torch.Tensor)]
        with torch.no_grad():
            grad = torch.empty_like(fn(*inputs))
        with _Recorder() as rec:
            out = fn(*inputs)
            if mode == "forward+backward":
                torch.autograd.grad(out, targets, grad, allow_unused=True)
    return rec.kernels


def summarize(kernels):
    return dict(bytes=sum(k.bytes for k in kernels), launches=sum(k.launches for k in kernels),
                floor_us=sum(k.seconds() for k in kernels) * 1e6,
                tflop=sum(k.tensor_flops + k.other_flops for k in kernels) / 1e12)


def model_rows(cases, quick, dtype, impl="cpu"):
    """Per case, shape and mode: eager and fastgan bytes, launches and floors, at the GPU-sized shapes."""
    rows = []
    for case in cases:
        for shape in case.shapes_for("cuda", quick):
            modes = ("forward",) if case.inference else ("forward", "forward+backward")
            for mode in modes:
                row = dict(op=case.name, shape="x".join(map(str, shape)), mode=mode)
                for label, fn in (("eager", case.reference),
                                  ("fastgan", lambda *a: case.op(*a, impl=impl))):
                    try:
                        s = summarize(record(fn, case.make_inputs, shape, dtype, mode))
                        row.update({f"{label}_{k}": v for k, v in s.items()})
                    except Exception as e:  # noqa: BLE001 - reported in the table
                        row[f"{label}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                rows.append(row)
    return rows


def format_model(rows):
    head = ["op", "shape", "mode", "eager MB", "fastgan MB", "eager launches", "fastgan launches",
            "eager floor us", "fastgan floor us", "x floor", "floor+launch x"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    for r in rows:
        cells = [r["op"], r["shape"], r["mode"]]
        if "eager_error" in r or "fastgan_error" in r:
            cells.append("n/a (" + (r.get("eager_error") or r.get("fastgan_error")) + ")")
            out.append("| " + " | ".join(cells) + " |")
            continue
        e_t = r["eager_floor_us"] + LAUNCH_US * r["eager_launches"]
        f_t = r["fastgan_floor_us"] + LAUNCH_US * r["fastgan_launches"]
        cells += [f"{r['eager_bytes'] / 1e6:.1f}", f"{r['fastgan_bytes'] / 1e6:.1f}",
                  str(r["eager_launches"]), str(r["fastgan_launches"]),
                  f"{r['eager_floor_us']:.1f}", f"{r['fastgan_floor_us']:.1f}",
                  f"{r['eager_floor_us'] / max(r['fastgan_floor_us'], 1e-9):.2f}",
                  f"{e_t / max(f_t, 1e-9):.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
