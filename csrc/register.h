// What each extension's module.cpp registers besides its kernels: the C++ autograd of bias_act
// (autograd.h) and the fused blocks' training ops (block_autograd.h), with the op names of its
// namespace (fastgan_cpu or fastgan_cuda); the blocks' ops also at the backend's key (`key`: CPU or
// CUDA), where inference mode sends them.
#pragma once

#include "autograd.h"
#include "block_autograd.h"

#define FASTGAN_REGISTER_AUTOGRAD(ns, key)                                            \
  namespace {                                                                         \
  struct ns##_autograd_names {                                                        \
    static constexpr const char* kNamespace = #ns;                                    \
    static constexpr const char* kBiasAct = #ns "::bias_act";                         \
    static constexpr const char* kBiasActBackward = #ns "::bias_act_backward";        \
    static constexpr const char* kBiasActBackwardBias = #ns "::bias_act_backward_bias";\
  };                                                                                  \
  }                                                                                   \
  TORCH_LIBRARY_IMPL(ns, Autograd, m) {                                               \
    fastgan::register_autograd<ns##_autograd_names>(m);                               \
    fastgan::blocks::register_blocks<ns##_autograd_names, true>(m);                   \
  }                                                                                   \
  TORCH_LIBRARY_IMPL(ns, key, m) { fastgan::blocks::register_blocks<ns##_autograd_names, false>(m); }
