// The epilogue of bias_act (SPEC 3), shared by the CPU kernels of bias_act and
// bias_act_pixel_norm: a leaky ReLU of `slope` (1: linear, 0: relu), times gain,
// clamped, and the factor of grad in its gradient.
#pragma once

#include "common.h"

namespace fastgan::cpu {

// The epilogue's constants in the compute type, scalar and vector.
template <typename T>
struct Epilogue {
  using acc_t = at::opmath_type<T>;
  using Vec = AccVec<T>;
  acc_t x_mul, slope, gain, clamp;  // clamp < 0: none

  acc_t operator()(acc_t v) const {  // v = x * x_mul + bias * b_mul
    acc_t y = (v > acc_t(0) ? v : v * slope) * gain;
    if (clamp >= acc_t(0)) y = std::min(std::max(y, -clamp), clamp);
    return y;
  }
  Vec operator()(const Vec& v) const {
    Vec y = Vec::blendv(v * Vec(slope), v, v > Vec(0)) * Vec(gain);
    if (clamp >= acc_t(0)) y = at::vec::clamp(y, Vec(-clamp), Vec(clamp));
    return y;
  }
  // The factor of grad in grad_x, from the output y.
  acc_t factor(acc_t y) const {
    const acc_t k = x_mul * gain;
    if (clamp >= acc_t(0) && !(std::abs(y) < clamp)) return acc_t(0);
    return y > acc_t(0) ? k : k * slope;
  }
  Vec factor(const Vec& y) const {
    const acc_t k = x_mul * gain;
    Vec f = Vec::blendv(Vec(k * slope), Vec(k), y > Vec(0));
    if (clamp >= acc_t(0)) f = Vec::blendv(Vec(0), f, y.abs() < Vec(clamp));
    return f;
  }
};

}  // namespace fastgan::cpu
