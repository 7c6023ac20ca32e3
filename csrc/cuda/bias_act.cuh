// The epilogue of bias_act (SPEC 3) on the device, shared by the kernels of
// bias_act and bias_act_pixel_norm: a leaky ReLU of `slope` (1: linear, 0: relu),
// times gain, clamped (clamp < 0: none), and the factor of grad in its gradient.
#pragma once

#include "common.cuh"

namespace fastgan::cuda {

template <typename acc_t>
struct Epilogue {
  acc_t x_mul, slope, gain, clamp;

  __device__ __forceinline__ acc_t operator()(acc_t v) const {  // v = x * x_mul + bias * b_mul
    acc_t y = (v > acc_t(0) ? v : v * slope) * gain;
    if (clamp >= acc_t(0)) y = y < -clamp ? -clamp : (y > clamp ? clamp : y);
    return y;
  }
  // The factor of grad in grad_x, from the output y.
  __device__ __forceinline__ acc_t factor(acc_t y) const {
    if (clamp >= acc_t(0) && !(abs(y) < clamp)) return acc_t(0);
    return y > acc_t(0) ? x_mul * gain : x_mul * gain * slope;
  }
};

template <typename scalar_t>
Epilogue<at::opmath_type<scalar_t>> make_epilogue(double x_mul, double slope, double gain, double clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  return {static_cast<acc_t>(x_mul), static_cast<acc_t>(slope), static_cast<acc_t>(gain), static_cast<acc_t>(clamp)};
}

}  // namespace fastgan::cuda
