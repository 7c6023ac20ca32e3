"""The compiled extensions are built, import, and register a kernel for every op.

CI forces the CUDA build (FASTGAN_BUILD_CUDA=1) and sets FASTGAN_REQUIRE_CUDA_EXT=1,
so a CUDA extension that failed to build fails here instead of being skipped.
"""

import os
import re
import shutil
import subprocess

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


def _requested_archs(arch_list):
    """(SASS archs, PTX archs) of a TORCH_CUDA_ARCH_LIST string: "8.0;9.0+PTX" -> (["80", "90"], ["90"])."""
    sass, ptx = [], []
    for entry in re.split(r"[;,\s]+", arch_list.strip()):
        if not entry:
            continue
        arch, plus_ptx = entry.removesuffix("+PTX"), entry.endswith("+PTX")
        tag = arch.replace(".", "")  # "9.0a" -> "90a"
        sass.append(tag)
        if plus_ptx:
            ptx.append(tag)
    return sass, ptx


def test_requested_archs_parse():
    assert _requested_archs("8.0;9.0+PTX") == (["80", "90"], ["90"])
    assert _requested_archs("9.0a 12.0+PTX") == (["90a", "120"], ["120"])


def _cuobjdump():
    """cuobjdump on PATH, beside nvcc, in CUDA_HOME/bin, or the one triton bundles; None if absent."""
    dirs = [os.path.dirname(p) for p in (shutil.which("cuobjdump"),) if p]
    nvcc = shutil.which("nvcc")
    if nvcc:
        dirs.append(os.path.dirname(os.path.realpath(nvcc)))  # /usr/local/bin/nvcc may be a wrapper script
    if os.environ.get("CUDA_HOME"):
        dirs.append(os.path.join(os.environ["CUDA_HOME"], "bin"))
    try:
        import triton

        dirs.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin"))
    except ImportError:
        pass
    return next((os.path.join(d, "cuobjdump") for d in dirs if os.access(os.path.join(d, "cuobjdump"), os.X_OK)), None)


def _embedded(cuobjdump, path, kind):
    """The sm/compute tags of the ELF (kind "elf") or PTX ("ptx") images embedded in `path`."""
    out = subprocess.run([cuobjdump, f"--list-{kind}", path], capture_output=True, text=True)
    # No device code at all is exit status 255 with "does not contain device code": an empty list.
    assert out.returncode == 0 or "does not contain" in out.stdout + out.stderr, f"cuobjdump failed: {out.stderr}"
    return set(re.findall(r"\.sm_(\w+?)\.(?:cubin|ptx)\b", out.stdout))


def test_cuda_extension_has_sass_for_the_requested_archs():
    """The .so holds an sm_XX ELF for every arch of its TORCH_CUDA_ARCH_LIST and PTX for the +PTX ones,
    which must include the newest ("8.0;9.0+PTX"): PTX is what lets newer GPUs (sm_100, sm_120) run it."""
    mod = _cuda_extension()
    assert mod.cuda_archs, "the build recorded no CUDA architectures"
    cuobjdump = _cuobjdump()
    if cuobjdump is None and os.environ.get("FASTGAN_REQUIRE_CUDA_EXT") != "1":
        pytest.skip("cuobjdump not found (PATH, beside nvcc, CUDA_HOME/bin, triton's bundled bin): cannot list the device code")
    assert cuobjdump is not None, "cuobjdump not found, and FASTGAN_REQUIRE_CUDA_EXT=1"
    sass, ptx = _requested_archs(mod.cuda_archs)
    newest = max(sass, key=lambda a: int(re.match(r"\d+", a).group()))
    ptx = list(dict.fromkeys(ptx + [newest]))  # without PTX of the newest arch, newer GPUs cannot run it
    elf_found, ptx_found = _embedded(cuobjdump, mod.__file__, "elf"), _embedded(cuobjdump, mod.__file__, "ptx")
    missing = [f"sm_{a} ELF" for a in sass if a not in elf_found] + [f"sm_{a} PTX" for a in ptx if a not in ptx_found]
    assert not missing, (f"{os.path.basename(mod.__file__)} was built for {mod.cuda_archs!r} but lacks "
                         f"{', '.join(missing)} (has ELF {sorted(elf_found)}, PTX {sorted(ptx_found)}); "
                         f"the newest arch needs +PTX, e.g. TORCH_CUDA_ARCH_LIST='8.0;9.0+PTX' (setup.py's default)")
