"""Builds fastgan's compiled extensions.

- `fastgan._C`: CPU kernels, always built, with OpenMP and the host's vector ISA
  (AVX-512 or AVX2 for ATen's `at::vec`, and -march=native for the compiler).
- `fastgan._C_cuda`: CUDA kernels, built when nvcc and a CUDA build of torch are
  present. FASTGAN_BUILD_CUDA=1 forces it (and fails loudly if it cannot),
  FASTGAN_BUILD_CUDA=0 skips it. Architectures: TORCH_CUDA_ARCH_LIST, default "8.0;9.0+PTX":
  SASS for sm_80 and sm_90, plus compute_90 PTX that the driver JIT-compiles on newer GPUs
  (sm_100, sm_120), which SASS alone cannot run on.

Supported versions: Python >= 3.10, torch >= 2.11, triton >= 3.6 (the GPU target runs torch 2.11 +
triton 3.6; CI runs the newest). See README.md, "Supported versions".
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_toolkit_root():
    """The real toolkit root: `nvcc` on PATH may be a wrapper script, so ask nvcc itself."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True).stderr
    m = re.search(r"TOP=(\S+)", out)
    return os.path.realpath(m.group(1)) if m else os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


_want_cuda = os.environ.get("FASTGAN_BUILD_CUDA", "auto")
if _want_cuda not in ("0", "1", "auto"):
    sys.exit(f"FASTGAN_BUILD_CUDA must be 0, 1 or unset, got {_want_cuda!r}")
if _want_cuda != "0":
    _root = _cuda_toolkit_root()
    if _root:
        os.environ["CUDA_HOME"] = _root  # read by torch.utils.cpp_extension at import
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")  # PTX of the newest: runs on later GPUs too

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _cpu_isa_flags():
    """ATen's at::vec picks its vector width from CPU_CAPABILITY_* macros: set them for this host."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        flags = set()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512", ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-march=native"]
    if {"avx2", "fma"} <= flags:
        return "AVX2", ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-march=native"]
    return "DEFAULT", []


def _cu13_include_dirs():
    """The nvidia/cu13 wheel holds headers ATen/cuda needs (cusparse.h) that a bare nvcc lacks."""
    try:
        import nvidia
    except ImportError:
        return []
    return [d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "include")) if "cu1" in d]


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


capability, isa_flags = _cpu_isa_flags()
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", *isa_flags, f'-DFASTGAN_CPU_CAPABILITY="{capability}"']
extensions = [
    CppExtension(
        "fastgan._C",
        _sources("csrc/cpu/*.cpp"),
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
]

cuda_possible = CUDA_HOME is not None and torch.version.cuda is not None
if _want_cuda == "1" and not cuda_possible:
    sys.exit(f"FASTGAN_BUILD_CUDA=1 but the CUDA extension cannot be built: nvcc toolkit root "
             f"{CUDA_HOME!r}, torch built with CUDA {torch.version.cuda!r}. Install nvcc and a CUDA build of torch.")
if _want_cuda != "0" and cuda_possible:
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    extensions.append(
        CUDAExtension(
            "fastgan._C_cuda",
            _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu"),
            include_dirs=[os.path.join(HERE, "csrc"), *_cu13_include_dirs()],
            extra_compile_args={
                "cxx": ["-O3", "-std=c++20", f'-DFASTGAN_CUDA_ARCHS="{archs}"'],
                "nvcc": ["-O3", "-std=c++20", f'-DFASTGAN_CUDA_ARCHS="{archs}"'],
            },
        )
    )

setup(
    name="fastgan",
    version="0.1.0",
    description="Fused GAN operations for PyTorch: reference, cpu, triton and cuda backends",
    packages=find_packages(include=["fastgan", "fastgan.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "triton>=3.6; platform_system == 'Linux'"],
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
