"""`python -m fastgan.info`: versions, built extensions, GPU architectures, backends per op."""

import platform

import torch

from . import _extensions
from ._backend import BACKENDS, availability, triton_interpreted, triton_interpreter_problem

# Public op -> the kernel op whose registration says a backend has it (csrc/schemas.h).
OPS = {
    "conv_transpose_bn_relu": "conv_transpose_stats",
    "conv2d_bn_leaky_relu": "batch_stats_finalize",
    "minibatch_discrimination": "minibatch_discrimination",
    "bias_act": "bias_act",
    "bias_act_pixel_norm": "bias_act_pixel_norm",
    "pixel_norm": "pixel_norm",
    "minibatch_stddev": "minibatch_stddev",
    "fade_in": "fade_in",
    "fade_in_from_rgb": "fade_in_from_rgb",
    "blend_reals": "blend_reals",
}


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


def _extension_line(name, describe):
    mod = _extensions.load(name)
    return f"built ({describe(mod)})" if mod is not None else f"not built ({_extensions.load_error(name)})"


def _op_backends(op):
    """The backends that implement kernel op `op` (registered, or a Triton host function); an
    extension built from an older checkout that lacks the op does not count."""
    found = ["reference"]
    if _extensions.load("_C") is not None and _registered(f"fastgan_cpu::{op}", "CPU"):
        found.append("cpu")
    try:
        from . import triton_kernels

        if hasattr(triton_kernels, op):
            found.append("triton")
    except ImportError:
        pass
    if _extensions.load("_C_cuda") is not None and _registered(f"fastgan_cuda::{op}", "CUDA"):
        found.append("cuda")
    return found


def _registered(name, key):
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
    except RuntimeError:  # no such op: an extension built from an older checkout
        return False


def report():
    from . import __version__

    lines = [
        f"fastgan {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"triton {_triton_version()}{' [interpreter]' if triton_interpreted() else ''}",
        f"cpu extension  fastgan._C: " + _extension_line(
            "_C", lambda m: f"vector ISA {m.cpu_capability}, OpenMP {'on' if m.openmp else 'OFF'}, "
                            f"{torch.get_num_threads()} threads"),
        f"cuda extension fastgan._C_cuda: " + _extension_line(
            "_C_cuda", lambda m: f"TORCH_CUDA_ARCH_LIST {m.cuda_archs}: SASS for each, PTX for +PTX"),
    ]
    if triton_interpreted() and triton_interpreter_problem():
        lines.append(f"WARNING: {triton_interpreter_problem()}")
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        lines.append(f"GPU: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})")
    else:
        lines.append("GPU: none")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines.append("backends runnable now: " + ", ".join(
        f"{d}: " + "/".join(b for b in BACKENDS if availability(b, d) is None) for d in devices))
    lines.append("ops and their backends:")
    width = max(map(len, OPS))
    lines += [f"  {op:<{width}} {', '.join(_op_backends(kernel))}" for op, kernel in OPS.items()]
    return "\n".join(lines)


def main():
    print(report())


if __name__ == "__main__":
    main()
