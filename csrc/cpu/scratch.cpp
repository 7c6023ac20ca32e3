// Why keep a buffer: a fresh allocation of 32 MB or more comes from mmap, and every call then pays
// a page fault per 4 KB page while the kernel first writes it. Measured here (AMD EPYC, 2 threads):
// 8193 faults and ~9 ms for the 32 MB im2col rows of the 4x4 generator block's gradient at batch
// 128, against a 42 ms GEMM on them. The memory stays held: the largest such temporary so far per
// thread that ran a kernel using it (the README says which and how large).
#include "scratch.h"

namespace fastgan::cpu {

at::Tensor scratch_buffer(int64_t numel, const at::TensorOptions& options) {
  thread_local at::Tensor buffer;
  if (!buffer.defined() || buffer.numel() < numel || buffer.dtype() != options.dtype()) {
    buffer = at::Tensor();  // free the old one first: the peak is the new size, not the sum
    buffer = at::empty({numel}, options);
  }
  return buffer.narrow(0, 0, numel);
}

}  // namespace fastgan::cpu
