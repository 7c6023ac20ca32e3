"""The compiled extensions are built, import, and register a kernel for every op.

CI forces the CUDA build (FASTGAN_BUILD_CUDA=1) and sets FASTGAN_REQUIRE_CUDA_EXT=1,
so a CUDA extension that failed to build fails here instead of being skipped.
"""

import os
import re

import pytest
import torch

from fastgan import _extensions

SCHEMAS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "schemas.h")
# Every kernel op csrc/schemas.h declares: both extensions must implement all of them.
KERNEL_OPS = re.findall(r'm\.def\("(\w+)\(', open(SCHEMAS).read())


def _host_has_avx512():
    try:
        return "avx512f" in open("/proc/cpuinfo").read()
    except OSError:
        return False


def test_cpu_extension_registers_every_kernel():
    assert _extensions.load("_C") is not None, _extensions.load_error("_C")
    for op in KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan_cpu::{op}", "CPU"), op


def test_cpu_extension_is_built_for_this_host():
    mod = _extensions.load("_C")
    assert mod.openmp == 1, "built without -fopenmp: at::parallel_for would run on one thread"
    if _host_has_avx512():
        assert mod.cpu_capability == "AVX512"


def _cuda_extension():
    mod = _extensions.load("_C_cuda")
    if mod is None and os.environ.get("FASTGAN_REQUIRE_CUDA_EXT") != "1":
        pytest.skip(f"CUDA extension not built: {_extensions.load_error('_C_cuda')}")
    assert mod is not None, _extensions.load_error("_C_cuda")
    return mod


def test_cuda_extension_registers_every_kernel():
    _cuda_extension()
    for op in KERNEL_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan_cuda::{op}", "CUDA"), op


def test_cuda_extension_has_sass_for_the_requested_archs():
    mod = _cuda_extension()
    assert mod.cuda_archs, "the build recorded no CUDA architectures"
