// The `fastgan._C_cuda` Python module: importing it registers the `fastgan_cuda::*` ops.
// Each .cu file registers its own CUDA implementations with TORCH_LIBRARY_IMPL.
#include <Python.h>

#include "register.h"
#include "schemas.h"

#ifndef FASTGAN_CUDA_ARCHS
#define FASTGAN_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(fastgan_cuda, m) { fastgan::define_kernel_schemas(m); }
FASTGAN_REGISTER_AUTOGRAD(fastgan_cuda, CUDA)

extern "C" PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C_cuda", "fastgan CUDA kernels", -1, nullptr};
  PyObject* mod = PyModule_Create(&def);
  if (mod == nullptr) return nullptr;
  PyModule_AddStringConstant(mod, "cuda_archs", FASTGAN_CUDA_ARCHS);  // TORCH_CUDA_ARCH_LIST at build time
  return mod;
}
