// The transposed convolution of the DCGAN blocks on CPU: oneDNN, or for small inputs one GEMM
// and a col2im (see convolution.cpp). Used by conv_transpose_bn_relu.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace fastgan::cpu {

// x [N, C_in, H, W] and weight [C_in, C_out, kH, kW] of a transposed convolution, else an error
// naming `op`.
void check_conv_transpose_args(const at::Tensor& x, const at::Tensor& weight, const char* op);

// The weight in the layout oneDNN's convolution of x wants: channels-last for a channels-last x.
// ATen would convert it itself, with its element-wise strided copy (2.5 ms per call for the 4x4
// block's 8 MB weight here); this uses register tiles (layout.h).
at::Tensor weight_for(const at::Tensor& x, const at::Tensor& weight);

// Whether conv_transpose_forward (with a bias or not) runs GEMMs (small inputs) rather than oneDNN.
bool conv_transpose_uses_gemm(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef output_padding, bool has_bias);

// z = conv_transpose2d(x, weight, bias) (relu applied when `relu`); z channels-last when x is
// channels-last, except the 1x1 input without padding, whose z is NCHW (see the .cpp).
at::Tensor conv_transpose_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                                  bool relu);

}  // namespace fastgan::cpu
