// The transposed convolution (groups 1, dilation 1) and its backward on CPU.
//
// On small inputs (at most kGemmMaxPixels pixels: the 1x1 and 4x4 DCGAN blocks, wide in
// channels) it runs as plain GEMMs, which MKL runs near this machine's peak while oneDNN's
// transposed convolution reached about half of it there (measured, 2 threads, 64x512x4x4 ->
// 64x256x8x8: GEMM 14.5 ms against 24-25 ms; backward GEMMs 29 ms against 47-49 ms; on the
// 1x1 block the backward took 9.4 ms in oneDNN and 0.9 ms as two GEMMs):
//   forward:  cols[N*H*W, C_out*kH*kW] = x_rows[N*H*W, C_in] @ W[C_in, C_out*kH*kW], then the
//             col2im scatter-add of cols into z (channels-last), image by image in cache;
//   backward: gcols = im2col(grad) (the gather of the same positions), then
//             grad_x_rows = gcols @ W^T and grad_W = x_rows^T @ gcols.
// x_rows is x channels-last seen as rows, so no copy; W keeps its own layout. A 1x1 input
// without padding needs no col2im at all: cols is z, NCHW.
// Larger inputs keep oneDNN: forward conv_transpose2d, backward as the direct convolution
// it is the adjoint of (grad_x = conv2d(grad, W), the weight gradient of that conv2d),
// channels-last, which ran faster than the transposed convolution's own backward.
#include "conv_transpose_gemm.h"

#include "common.h"

namespace fastgan::cpu {
namespace {

// The largest input (H * W) that takes the GEMM path.
constexpr int64_t kGemmMaxPixels = 16;

struct Geometry {
  int64_t n, c_in, h, w, c_out, kh, kw, oh, ow, sh, sw, ph, pw;
  int64_t taps() const { return kh * kw; }
  int64_t row() const { return c_out * taps(); }  // values in a row of cols
  // A 1x1 input whose output is the whole kernel: cols is z in NCHW.
  bool cols_is_z() const { return h == 1 && w == 1 && ph == 0 && pw == 0 && oh == kh && ow == kw; }
};

Geometry geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef output_padding) {
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(1), weight.size(2), weight.size(3),
             0, 0, stride[0], stride[1], padding[0], padding[1]};
  g.oh = (g.h - 1) * g.sh - 2 * g.ph + g.kh + output_padding[0];
  g.ow = (g.w - 1) * g.sw - 2 * g.pw + g.kw + output_padding[1];
  return g;
}

bool use_gemm(const at::Tensor& x, const Geometry& g) {
  const bool dtype_ok = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
  const bool layout_ok = x.is_contiguous(at::MemoryFormat::ChannelsLast) || (g.h == 1 && g.w == 1);
  return dtype_ok && layout_ok && g.h * g.w <= kGemmMaxPixels;
}

// x channels-last as rows [N * H * W, C_in] (a view).
at::Tensor rows_of(const at::Tensor& x) { return x.permute({0, 2, 3, 1}).reshape({-1, x.size(1)}); }

// For input pixel (i, j): the offset in an image's channels-last z of each tap's output pixel,
// or -1 where the tap falls outside (padding / cropping).
std::vector<int64_t> tap_offsets(const Geometry& g, int64_t i, int64_t j) {
  std::vector<int64_t> off(g.taps());
  for (int64_t a = 0; a < g.kh; ++a) {
    for (int64_t b = 0; b < g.kw; ++b) {
      const int64_t oy = i * g.sh - g.ph + a, ox = j * g.sw - g.pw + b;
      const bool in = oy >= 0 && oy < g.oh && ox >= 0 && ox < g.ow;
      off[a * g.kw + b] = in ? (oy * g.ow + ox) * g.c_out : -1;
    }
  }
  return off;
}

// z[n] (channels-last) = bias + the sum of its taps' cols, then relu; image by image, the
// image's z (C_out * oH * oW values) staying in cache.
template <typename T>
void col2im(const T* cols, const T* bias, T* z, const Geometry& g, bool relu) {
  const int64_t taps = g.taps(), row = g.row(), image = g.oh * g.ow * g.c_out;
  std::vector<std::vector<int64_t>> offsets;
  for (int64_t i = 0; i < g.h; ++i)
    for (int64_t j = 0; j < g.w; ++j) offsets.push_back(tap_offsets(g, i, j));
  at::parallel_for(0, g.n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T* zn = z + n * image;
      for (int64_t p = 0; p < g.oh * g.ow; ++p)
        for (int64_t co = 0; co < g.c_out; ++co) zn[p * g.c_out + co] = bias ? bias[co] : T(0);
      for (int64_t pix = 0; pix < g.h * g.w; ++pix) {
        const T* src = cols + (n * g.h * g.w + pix) * row;
        const auto& off = offsets[pix];
        for (int64_t k = 0; k < taps; ++k) {
          if (off[k] < 0) continue;
          T* dst = zn + off[k];
          for (int64_t co = 0; co < g.c_out; ++co) dst[co] += src[co * taps + k];
        }
      }
      if (relu) {
        for (int64_t e = 0; e < image; ++e) zn[e] = zn[e] > T(0) || std::isnan(zn[e]) ? zn[e] : T(0);
      }
    }
  });
}

// gcols rows [N * H * W, C_out * kH * kW] gathered from grad (channels-last), zeros where a
// tap falls outside.
template <typename T>
void im2col(const T* grad, T* gcols, const Geometry& g) {
  const int64_t taps = g.taps(), row = g.row(), image = g.oh * g.ow * g.c_out;
  std::vector<std::vector<int64_t>> offsets;
  for (int64_t i = 0; i < g.h; ++i)
    for (int64_t j = 0; j < g.w; ++j) offsets.push_back(tap_offsets(g, i, j));
  at::parallel_for(0, g.n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* gn = grad + n * image;
      for (int64_t pix = 0; pix < g.h * g.w; ++pix) {
        T* dst = gcols + (n * g.h * g.w + pix) * row;
        const auto& off = offsets[pix];
        for (int64_t k = 0; k < taps; ++k) {
          if (off[k] < 0) {
            for (int64_t co = 0; co < g.c_out; ++co) dst[co * taps + k] = T(0);
            continue;
          }
          const T* src = gn + off[k];
          for (int64_t co = 0; co < g.c_out; ++co) dst[co * taps + k] = src[co];
        }
      }
    }
  });
}

at::Tensor forward_gemm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const Geometry& g, bool relu) {
  auto cols = at::mm(rows_of(x), weight.reshape({g.c_in, g.row()}));
  if (g.cols_is_z()) {
    auto z = cols.view({g.n, g.c_out, g.oh, g.ow});
    if (bias.has_value() && bias->defined()) z.add_(bias->view({1, -1, 1, 1}));
    return relu ? z.relu_() : z;
  }
  auto z = at::empty({g.n, g.c_out, g.oh, g.ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastgan_cpu::col2im", [&] {
    const scalar_t* b = bias.has_value() && bias->defined() ? bias->contiguous().const_data_ptr<scalar_t>() : nullptr;
    col2im(cols.const_data_ptr<scalar_t>(), b, z.mutable_data_ptr<scalar_t>(), g, relu);
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor> backward_gemm(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                                 const Geometry& g, bool need_x, bool need_weight) {
  at::Tensor gcols;
  if (g.cols_is_z()) {
    gcols = grad.contiguous().view({g.n, g.row()});
  } else {
    const auto gl = grad.contiguous(at::MemoryFormat::ChannelsLast);
    gcols = at::empty({g.n * g.h * g.w, g.row()}, grad.options());
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fastgan_cpu::im2col", [&] {
      im2col(gl.const_data_ptr<scalar_t>(), gcols.mutable_data_ptr<scalar_t>(), g);
    });
  }
  at::Tensor grad_x, grad_w;
  const auto w2 = weight.reshape({g.c_in, g.row()});
  if (need_x) grad_x = at::mm(gcols, w2.t()).view({g.n, g.h, g.w, g.c_in}).permute({0, 3, 1, 2});
  if (need_weight) grad_w = at::mm(rows_of(x).t(), gcols).view(weight.sizes());
  return {grad_x, grad_w};
}

void check_args(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(weight.dim() == 4 && x.dim() == 4 && weight.size(0) == x.size(1), "fastgan_cpu::", op,
              ": weight must be [C_in, C_out, kH, kW] with C_in = x.size(1), got x ", x.sizes(), " and weight ",
              weight.sizes());
}

at::Tensor empty_if_undefined(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

std::tuple<at::Tensor, at::Tensor> conv_transpose_backward(const at::Tensor& grad, const at::Tensor& x,
                                                           const at::Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                           bool need_x, bool need_weight) {
  check_args(x, weight, "conv_transpose_backward");
  const auto g = geometry(x, weight, stride, padding, output_padding);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == g.n && grad.size(1) == g.c_out && grad.size(2) == g.oh &&
                  grad.size(3) == g.ow,
              "fastgan_cpu::conv_transpose_backward: grad must have the output's shape [", g.n, ", ", g.c_out, ", ",
              g.oh, ", ", g.ow, "], got ", grad.sizes());
  at::Tensor grad_x, grad_w;
  if (use_gemm(x, g)) {
    std::tie(grad_x, grad_w) = backward_gemm(grad, x, weight, g, need_x, need_weight);
  } else if (g.h * g.w >= 64) {
    // The direct convolution this one is the adjoint of, channels-last.
    const auto cl = at::MemoryFormat::ChannelsLast;
    const auto gl = grad.contiguous(cl), xl = x.contiguous(cl), wl = weight.contiguous(cl);
    if (need_x) grad_x = at::conv2d(gl, wl, {}, stride, padding);
    if (need_weight) {
      grad_w = std::get<1>(at::convolution_backward(xl, gl, wl, c10::nullopt, stride, padding, {1, 1}, false,
                                                    {0, 0}, 1, {false, true, false}));
    }
  } else {
    std::tie(grad_x, grad_w, std::ignore) =
        at::convolution_backward(grad.contiguous(), x.contiguous(), weight.contiguous(), c10::nullopt, stride, padding,
                                 {1, 1}, true, output_padding, 1, {need_x, need_weight, false});
  }
  if (grad_w.defined()) grad_w = grad_w.contiguous();
  if (grad_x.defined()) grad_x = grad_x.contiguous(x.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
  return {empty_if_undefined(grad_x, x), empty_if_undefined(grad_w, x)};
}

}  // namespace

bool conv_transpose_uses_gemm(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef output_padding) {
  return use_gemm(x, geometry(x, weight, stride, padding, output_padding));
}

at::Tensor conv_transpose_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                                  bool relu) {
  check_args(x, weight, "conv_transpose");
  const auto g = geometry(x, weight, stride, padding, output_padding);
  if (use_gemm(x, g)) return forward_gemm(x, weight.contiguous(), bias, g, relu);
  auto z = at::conv_transpose2d(x, weight, bias, stride, padding, output_padding, 1, {1, 1});
  if (!z.is_contiguous() && !z.is_contiguous(at::MemoryFormat::ChannelsLast)) z = z.contiguous();
  return relu ? z.relu_() : z;
}

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) { m.impl("conv_transpose_backward", &conv_transpose_backward); }

}  // namespace fastgan::cpu
