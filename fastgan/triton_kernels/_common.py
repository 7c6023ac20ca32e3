"""Shared by the kernel modules: autotuning, compute precision, the launch device,
the registry entry of the AOT test, and the 2x2-block tiling of fade_in,
fade_in_backward and blend_reals.
"""

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from .._backend import triton_interpreted

# Decided once, when the kernels are defined: `triton.jit` picks the interpreter the same way.
INTERPRET = triton_interpreted()


# Every kernel `autotune` made, for tests/test_triton_autotune.py (which runs each one with its GPU configs).
AUTOTUNED = []


def autotune(configs, interpreter_config, key, restore_value=None, reset_to_zero=None):
    """`triton.autotune` over `configs` keyed by `key` on GPU. The interpreter cannot
    benchmark, so it runs the one small `interpreter_config` (small blocks also make
    tiny test shapes span several blocks and loop iterations).

    The first call of each key runs every config on the real arguments: a kernel that
    writes one of its inputs names it in `restore_value`, one whose output another
    config could leave dirty in `reset_to_zero` (or writes all of it every time).
    The returned Autotuner keeps `configs` as `gpu_configs` and is listed in AUTOTUNED."""

    def decorator(kernel):
        tuner = triton.autotune(configs=[interpreter_config] if INTERPRET else list(configs), key=key,
                                restore_value=restore_value, reset_to_zero=reset_to_zero)(kernel)
        tuner.gpu_configs = list(configs)
        AUTOTUNED.append(tuner)
        return tuner

    return decorator


@triton.constexpr_function
def compute_dtype(dtype):
    """Statistics and blends are computed in float32, or float64 for float64 tensors."""
    return tl.float64 if dtype == tl.float64 else tl.float32


def fp64_scalar(value):
    """A float64 scalar kernel argument (the kernels declare these "fp64"). The
    interpreter would pass a Python float, which Triton rounds to float32 at its
    first use, so give it a float64 scalar tensor instead."""
    if INTERPRET:
        from triton.runtime.interpreter import TensorHandle

        return tl.tensor(TensorHandle(np.array([value], dtype=np.float64), tl.float64), tl.float64)
    return float(value)


def device_guard(t):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def layout(t, name):
    """The layout the kernels see `t` in: "nchw" if contiguous (also when it is
    channels-last as well), "channels_last" if 4-D channels-last contiguous."""
    if t.is_contiguous():
        return "nchw"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    raise ValueError(f"fastgan triton: {name} must be contiguous or channels-last contiguous, "
                     f"got shape {tuple(t.shape)} and strides {t.stride()}")


def check_like(t, name, ref, ref_layout):
    """`t` has the dtype and device of `ref` and is laid out like it."""
    if t.dtype != ref.dtype or t.device != ref.device:
        raise ValueError(f"fastgan triton: {name} is {t.dtype} on {t.device}, expected {ref.dtype} on {ref.device}")
    fmt = torch.contiguous_format if ref_layout == "nchw" else torch.channels_last
    if not t.is_contiguous(memory_format=fmt):
        raise ValueError(f"fastgan triton: {name} must be laid out like the other inputs ({ref_layout}), "
                         f"got strides {t.stride()}")


def check_2x2(high, name):
    """`high` is a 4-D tensor of 2x2 blocks (even height and width); returns its layout."""
    if high.dim() != 4 or high.shape[2] % 2 or high.shape[3] % 2:
        raise ValueError(f"fastgan triton: {name} must be 4-D with an even height and width, got {tuple(high.shape)}")
    return layout(high, name)


@dataclass(frozen=True)
class KernelSpec:
    """A kernel as the host functions launch it on GPU, for tests/test_triton_aot.py.

    `signature` maps every argument to its Triton type, "{dtype}" standing for the
    tensor dtype ("fp32", "bf16", ...). `variants` holds (name, constexprs, configs)
    per host path: the arguments that path fixes (a layout, or an integer Triton
    specializes to a constant because it is always 1) and the autotune configs it
    tunes over. `dots`: the kernel calls tl.dot; any other must compile to no tt.dot (Triton
    rewrites a broadcast product summed over an axis into one: with K = 4, triton 3.6 fed its
    TF32 MMA the values twice, the fade_in_from_rgb bug, which the interpreter cannot show)."""

    name: str
    fn: object
    signature: dict
    variants: tuple
    dots: bool = False


# ---------------------------------------------------------------------------
# 2x2 blocks of 4-D tensors.
#
# A 4-D tensor is seen as rows x columns x K contiguous inner elements:
#   NCHW:          rows = N*C*H, columns = W, K = 1 (channels are folded into rows)
#   channels-last: rows = N*H,   columns = W, K = C
# Element (row, col, k) sits at (row * W + col) * K + k in both layouts, and
# halving H and W maps high-res rows/columns 2i and 2i + 1 to low-res i (H is
# even, so folding N and C into the rows keeps that true). NCHW launches pass
# K = 1, which Triton specializes to a constant: the columns are then known to
# be contiguous and the loads vectorize.

# Tiles [BLOCK_R, BLOCK_X, 2, BLOCK_K] of low-res (rows, columns, dx, inner) over
# two high-res rows: 1024 high-res elements, 8 a thread. NCHW: wide tiles for wide
# images, tall ones for the 4x4 to 16x16 stages. Channels-last: 4 inner lanes fit
# RGB, 16 suit wider tensors.
BLOCK_2X2_CONFIGS = {
    "nchw": [
        triton.Config({"BLOCK_R": 1, "BLOCK_X": 256, "BLOCK_K": 1}, num_warps=4),
        triton.Config({"BLOCK_R": 4, "BLOCK_X": 64, "BLOCK_K": 1}, num_warps=4),
        triton.Config({"BLOCK_R": 16, "BLOCK_X": 16, "BLOCK_K": 1}, num_warps=4),
        triton.Config({"BLOCK_R": 64, "BLOCK_X": 4, "BLOCK_K": 1}, num_warps=4),
    ],
    "channels_last": [
        triton.Config({"BLOCK_R": 1, "BLOCK_X": 64, "BLOCK_K": 4}, num_warps=4),
        triton.Config({"BLOCK_R": 8, "BLOCK_X": 8, "BLOCK_K": 4}, num_warps=4),
        triton.Config({"BLOCK_R": 1, "BLOCK_X": 16, "BLOCK_K": 16}, num_warps=4),
        triton.Config({"BLOCK_R": 4, "BLOCK_X": 4, "BLOCK_K": 16}, num_warps=4),
    ],
}
_BLOCK_2X2_INTERPRETER_CONFIGS = {
    "nchw": triton.Config({"BLOCK_R": 2, "BLOCK_X": 4, "BLOCK_K": 1}),
    "channels_last": triton.Config({"BLOCK_R": 2, "BLOCK_X": 2, "BLOCK_K": 2}),
}


def autotune_2x2(kernel):
    """{layout: `kernel` autotuned over that layout's tiles}."""
    return {name: autotune(configs, _BLOCK_2X2_INTERPRETER_CONFIGS[name], key=["R", "X", "K"])(kernel)
            for name, configs in BLOCK_2X2_CONFIGS.items()}


def launch_2x2(kernels, high, high_layout, pointers, alpha):
    """Run kernel(*pointers, R, X, K, alpha) from `autotune_2x2` over the 2x2 blocks of `high`."""
    n, c, h, w = high.shape
    rows, cols, k = (n * c * h // 2, w // 2, 1) if high_layout == "nchw" else (n * h // 2, w // 2, c)

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_R"]) * triton.cdiv(cols, meta["BLOCK_X"])
                * triton.cdiv(k, meta["BLOCK_K"]),)

    with device_guard(high):
        kernels[high_layout][grid](*pointers, rows, cols, k, fp64_scalar(alpha))


def spec_2x2(name, fn, pointers):
    """The KernelSpec of a kernel launched by `launch_2x2`."""
    signature = {p: "*{dtype}" for p in pointers}
    signature.update({"R": "i32", "X": "i32", "K": "i32", "alpha": "fp64",
                      "BLOCK_R": "constexpr", "BLOCK_X": "constexpr", "BLOCK_K": "constexpr"})
    variants = (("nchw", {"K": 1}, BLOCK_2X2_CONFIGS["nchw"]),
                ("channels_last", {}, BLOCK_2X2_CONFIGS["channels_last"]))
    return KernelSpec(name, fn, signature, variants)


@triton.jit
def block_2x2_offsets(R, X, K, BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's tile of low-res elements (of R rows, X columns, K inner) and of
    the 2x2 high-res blocks above them:

      low:  [BLOCK_R, BLOCK_X, 1, BLOCK_K] offsets of the low-res elements,
      top:  [BLOCK_R, BLOCK_X, 2, BLOCK_K] offsets of the high-res elements
            (2r, 2x + dx, k), axis 2 being the column parity dx,
      row:  the high-res row length: the bottom elements are at top + row,
      mask: [BLOCK_R, BLOCK_X, 1, BLOCK_K], the low-res elements in bounds (it
            broadcasts over dx).

    Axis 2 keeps each column pair (2x, 2x + 1) adjacent, so high-res rows are
    read and written as contiguous runs. Offsets are int64: any tensor size."""
    pid = tl.program_id(0)
    k_blocks = tl.cdiv(K, BLOCK_K)
    x_blocks = tl.cdiv(X, BLOCK_X)
    r = (pid // (k_blocks * x_blocks)).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    x = ((pid // k_blocks) % x_blocks).to(tl.int64) * BLOCK_X + tl.arange(0, BLOCK_X)
    k = (pid % k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    r = r[:, None, None, None]
    x = x[None, :, None, None]
    dx = tl.arange(0, 2)[None, None, :, None]
    k = k[None, None, None, :]

    row = tl.cast(2 * X, tl.int64) * K
    low = (r * X + x) * K + k
    top = 2 * r * row + (2 * x + dx) * K + k
    mask = (r < R) & (x < X) & (k < K)
    return low, top, row, mask
