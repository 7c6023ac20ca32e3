// The `fastgan._C` Python module: importing it registers the `fastgan_cpu::*` ops.
// Each kernel file registers its own CPU implementations with TORCH_LIBRARY_IMPL.
#include <Python.h>

#include "register.h"
#include "schemas.h"

#ifndef FASTGAN_CPU_CAPABILITY
#define FASTGAN_CPU_CAPABILITY "DEFAULT"
#endif

TORCH_LIBRARY(fastgan_cpu, m) { fastgan::define_kernel_schemas(m); }
FASTGAN_REGISTER_AUTOGRAD(fastgan_cpu, CPU)

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fastgan CPU kernels", -1, nullptr};
  PyObject* mod = PyModule_Create(&def);
  if (mod == nullptr) return nullptr;
  // What the build really runs: the at::vec ISA, and OpenMP (else at::parallel_for is serial).
  PyModule_AddStringConstant(mod, "cpu_capability", FASTGAN_CPU_CAPABILITY);
#ifdef _OPENMP
  PyModule_AddIntConstant(mod, "openmp", 1);
#else
  PyModule_AddIntConstant(mod, "openmp", 0);
#endif
  return mod;
}
