// The `fastgan._C` Python module: importing it registers the `fastgan_cpu::*` ops.
// Each kernel file registers its own CPU implementations with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <ATen/Parallel.h>

#include "schemas.h"

#ifndef FASTGAN_CPU_CAPABILITY
#define FASTGAN_CPU_CAPABILITY "DEFAULT"
#endif

TORCH_LIBRARY(fastgan_cpu, m) { fastgan::define_kernel_schemas(m); }

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fastgan CPU kernels", -1, nullptr};
  PyObject* mod = PyModule_Create(&def);
  if (mod == nullptr) return nullptr;
  // What the build really runs: the at::vec ISA and whether at::parallel_for uses OpenMP.
  PyModule_AddStringConstant(mod, "cpu_capability", FASTGAN_CPU_CAPABILITY);
  PyModule_AddStringConstant(mod, "parallel_backend", at::get_parallel_info().find("OpenMP") != std::string::npos ? "OpenMP" : "native");
#ifdef _OPENMP
  PyModule_AddIntConstant(mod, "openmp", 1);
#else
  PyModule_AddIntConstant(mod, "openmp", 0);
#endif
  return mod;
}
