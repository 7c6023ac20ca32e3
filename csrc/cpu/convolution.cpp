// The convolutions of the DCGAN blocks on CPU: the generator's transposed convolution and the
// discriminator's direct convolution (groups 1, dilation 1), forward and backward.
//
// The two are adjoint: conv2d(., W) with W [C_out, C_in, kH, kW] is the data gradient of
// conv_transpose2d(., W) and the other way round, so both run on the same two pieces, in the
// transposed convolution's terms (input [N, C_in, H, W] of few pixels, output [N, C_out, oH, oW]):
//   col2im: the scatter-add of cols [N*H*W, C_out*kH*kW] into the output, channels-last;
//   im2col: the gather of an output-shaped tensor into such rows, zeros where a tap falls outside.
// Plain GEMMs (gemm.h) around them, rows being channels-last tensors seen as [pixels, channels]
// (no copy) and W keeping its own layout:
//   transposed forward:  cols = x_rows @ W[C_in, C_out*kH*kW], then col2im;
//   transposed backward: gcols = im2col(grad); grad_x_rows = gcols @ W^T, grad_W = x_rows^T @ gcols;
//   direct forward:      z_rows = im2col(x) @ W[C_out, C_in*kH*kW]^T;
//   direct backward:     grad_x = col2im(grad_rows @ W), grad_W = grad_rows^T @ im2col(x).
// A 1x1 small side without padding needs no col2im / im2col at all (cols is the NCHW tensor).
// Which products take this path, measured (2 threads; the Intel Xeon machines this was first
// tuned on, then the AMD EPYC (Zen 4) ones it runs on now):
// - the 1x1 transposed convolution (the first generator block), everything: oneDNN took 9.4 ms
//   for its backward on the Xeon against 0.9 as two GEMMs, and the GEMMs win 2-2.5x on EPYC too;
// - the weight gradient of the 4x4 transposed convolution (64x512x4x4 -> 64x256x8x8): 20.6 ms
//   against oneDNN's 34.5 on EPYC (b128: 42 against 56), 29 against 47-49 with grad_x on the Xeon;
// - the weight gradient of the direct convolution with a small output (the discriminator's
//   8x8 -> 4x4, the adjoint of the 4x4 block above): oneDNN's also converts its result with
//   ATen's strided copy (2.6-3.3 ms of 8 MB here); on Intel CPUs its forward and grad_x too
//   (gemm_max_pixels).
// The rest is oneDNN, channels-last: the transposed forward as conv_transpose2d (on EPYC the 4x4
// block ran 22.5 ms there against 24.3 as GEMM + col2im at batch 64, and 43 against 59 at 128,
// where the fresh 32 MB cols buffer alone cost ~9 ms of page faults); its data gradient as the
// direct convolution it is the adjoint of (grad_x = conv2d(grad, W): 16.8 ms against 20.0 as a
// GEMM on the 4x4 block), which ran faster than the transposed convolution's own backward; the
// weight gradient of larger inputs as that conv2d's; the direct convolution and its backward as
// they are.
#include "convolution.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdlib>

#include "common.h"
#include "gemm.h"
#include "layout.h"
#include "scratch.h"

namespace fastgan::cpu {
namespace {

// The largest small side (H * W) that takes the GEMM path. The transposed convolution: 1 (the first
// generator block). The direct one (the discriminator's 8x8 -> 4x4): 16 on Intel CPUs, 0
// elsewhere: on the AMD EPYC machines oneDNN's conv2d ran it without writing out the im2col
// rows, faster than im2col + GEMM (batch 128: 42 ms against 58 forward; backward a tie).
// FASTGAN_CPU_CONV2D_GEMM_MAX_PIXELS, read once, overrides the direct one (the tests run both).
int64_t gemm_max_pixels(bool direct) {
  static const int64_t direct_max = [] {
    if (const char* env = std::getenv("FASTGAN_CPU_CONV2D_GEMM_MAX_PIXELS")) return int64_t{std::atoll(env)};
    __builtin_cpu_init();
    return int64_t{__builtin_cpu_is("intel") ? 16 : 0};
  }();
  return direct ? direct_max : 1;
}

// The weight gradient as a GEMM up to this many pixels on the small side (the 4x4 generator block,
// the discriminator's 8x8 -> 4x4), the data gradient from oneDNN. bfloat16 up to 64 (the 8x8 ones):
// oneDNN's bf16 matmul runs ~4.5x its float32 one here, and the 16x16 -> 8x8 weight gradient took
// 6.4 ms as im2col + GEMM against oneDNN's 7.2 (batch 64; 13.8 against 14.8 at 128); at 256 pixels
// the GEMM lost (8.6 against 6.4).
int64_t weight_gemm_max_pixels(const at::Tensor& small) { return small.scalar_type() == at::kBFloat16 ? 64 : 16; }

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

// conv2d(x, weight) in the terms of its adjoint transposed convolution: input z [N, C_out, oH, oW]
// (conv2d's output), output x.
Geometry direct_geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding) {
  const int64_t kh = weight.size(2), kw = weight.size(3);
  return {x.size(0), weight.size(0), (x.size(2) + 2 * padding[0] - kh) / stride[0] + 1,
          (x.size(3) + 2 * padding[1] - kw) / stride[1] + 1, x.size(1), kh, kw, x.size(2), x.size(3),
          stride[0], stride[1], padding[0], padding[1]};
}

// `small` is the tensor on the small side (x of the transposed convolution, z of the direct one),
// or a tensor in the layout it will have. bfloat16 products take the GEMM paths too: oneDNN's bf16
// matmul (AVX512-BF16; float32 accumulation, one rounding) ran 800-950 GFLOP/s here against 180-200
// for float32, where oneDNN's bf16 convolutions ran the weight gradient of the 8x8 -> 4x4 block 2.5x
// slower than its float32 GEMM. Not through col2im (`sums_taps`), which adds taps in T: a rounding
// per tap where the convolution rounds once.
bool use_gemm_up_to(const at::Tensor& small, const Geometry& g, int64_t max_pixels, bool sums_taps) {
  const auto s = small.scalar_type();
  const bool dtype_ok = s == at::kFloat || s == at::kDouble || (s == at::kBFloat16 && !sums_taps);
  const bool layout_ok = small.is_contiguous(at::MemoryFormat::ChannelsLast) || (g.h == 1 && g.w == 1);
  return dtype_ok && layout_ok && g.h > 0 && g.w > 0 && g.h * g.w <= max_pixels;
}

// The transposed forward by GEMM rounds more than once where col2im sums taps, or the bias is added
// to the rounded product.
bool sums_taps_forward(const Geometry& g, bool has_bias) { return !g.cols_is_z() || has_bias; }

bool use_gemm(const at::Tensor& small, const Geometry& g, bool direct, bool sums_taps) {
  return use_gemm_up_to(small, g, gemm_max_pixels(direct), sums_taps);
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

// tap_offsets of every input pixel, in row-major order.
std::vector<std::vector<int64_t>> all_tap_offsets(const Geometry& g) {
  std::vector<std::vector<int64_t>> offsets;
  for (int64_t i = 0; i < g.h; ++i)
    for (int64_t j = 0; j < g.w; ++j) offsets.push_back(tap_offsets(g, i, j));
  return offsets;
}

// A row of cols holds [C_out, taps]; z and the gathered gradient hold a tap's channels
// contiguously. Both directions go through [taps, 16 channels] tiles transposed in registers
// (transpose_tile, layout.h): element by element, every write (im2col) or read (col2im) of a row
// strode by `taps` values, and im2col of the 4x4 block's 16 MB gradient took ~5 ms here against
// ~1 ms in tiles.
constexpr int64_t kTile = kTransposeTile;

// dst[c] = src[c] + (add ? dst[c] : 0) for c < count <= kTile (src zeros where null), in vectors.
template <typename T>
void put_row(T* dst, const T* src, int64_t count, bool add) {
  using Vec = at::vec::Vectorized<T>;
  for (int64_t c = 0; c < count; c += Vec::size()) {
    const int64_t m = std::min<int64_t>(Vec::size(), count - c);
    auto v = src ? Vec::loadu(src + c, m) : Vec(T(0));
    if (add) v = v + Vec::loadu(dst + c, m);
    v.store(dst + c, m);
  }
}

// z[n] (channels-last) = bias + the sum of its taps' cols, then relu; image by image, the
// image's z (C_out * oH * oW values) staying in cache.
template <typename T>
void col2im(const T* cols, const T* bias, T* z, const Geometry& g, bool relu) {
  const int64_t taps = g.taps(), row = g.row(), image = g.oh * g.ow * g.c_out;
  const auto offsets = all_tap_offsets(g);
  at::parallel_for(0, g.n, 1, [&](int64_t begin, int64_t end) {
    alignas(64) T tile[kTile * kTile];
    for (int64_t n = begin; n < end; ++n) {
      T* zn = z + n * image;
      for (int64_t p = 0; p < g.oh * g.ow; ++p)
        for (int64_t co = 0; co < g.c_out; ++co) zn[p * g.c_out + co] = bias ? bias[co] : T(0);
      for (int64_t pix = 0; pix < g.h * g.w; ++pix) {
        const T* src = cols + (n * g.h * g.w + pix) * row;
        const auto& off = offsets[pix];
        for (int64_t co0 = 0; co0 < g.c_out; co0 += kTile) {
          const int64_t cn = std::min(kTile, g.c_out - co0);
          for (int64_t k0 = 0; k0 < taps; k0 += kTile) {
            const int64_t kn = std::min(kTile, taps - k0);
            // tile[k][c] = src[(co0 + c) * taps + k0 + k]
            transpose_tile<T>(src + co0 * taps + k0, taps, tile, kTile, cn, kn);
            for (int64_t k = 0; k < kn; ++k) {
              if (off[k0 + k] < 0) continue;
              put_row(zn + off[k0 + k] + co0, tile + k * kTile, cn, true);
            }
          }
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
  const auto offsets = all_tap_offsets(g);
  at::parallel_for(0, g.n, 1, [&](int64_t begin, int64_t end) {
    alignas(64) T tile[kTile * kTile];
    for (int64_t n = begin; n < end; ++n) {
      const T* gn = grad + n * image;
      for (int64_t pix = 0; pix < g.h * g.w; ++pix) {
        T* dst = gcols + (n * g.h * g.w + pix) * row;
        const auto& off = offsets[pix];
        for (int64_t co0 = 0; co0 < g.c_out; co0 += kTile) {
          const int64_t cn = std::min(kTile, g.c_out - co0);
          for (int64_t k0 = 0; k0 < taps; k0 += kTile) {
            const int64_t kn = std::min(kTile, taps - k0);
            for (int64_t k = 0; k < kn; ++k) {  // tile[k][c] = tap k0 + k's channel co0 + c, or 0
              const int64_t o = off[k0 + k];
              put_row(tile + k * kTile, o < 0 ? nullptr : gn + o + co0, cn, false);
            }
            transpose_tile<T>(tile, kTile, dst + co0 * taps + k0, taps, kn, cn);
          }
        }
      }
    }
  });
}

// The transposed convolution of x (the small side) by GEMM and col2im, channels-last out.
at::Tensor forward_gemm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const Geometry& g, bool relu) {
  auto cols = gemm(rows_of(x), weight.reshape({g.c_in, g.row()}));
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

// im2col of an output-shaped tensor: rows [N * H * W, C_out * kH * kW], in this thread's scratch
// buffer when `scratch` (valid until the next im2col_rows into scratch on this thread).
at::Tensor im2col_rows(const at::Tensor& t, const Geometry& g, bool scratch = false) {
  if (g.cols_is_z()) return t.contiguous().view({g.n, g.row()});
  const auto tl = dense_as(t, at::MemoryFormat::ChannelsLast);
  auto cols = scratch ? scratch_buffer(g.n * g.h * g.w * g.row(), t.options()).view({g.n * g.h * g.w, g.row()})
                      : at::empty({g.n * g.h * g.w, g.row()}, t.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), "fastgan_cpu::im2col", [&] {
    im2col(tl.const_data_ptr<scalar_t>(), cols.mutable_data_ptr<scalar_t>(), g);
  });
  return cols;
}

// Rows [N * H * W, C] of the small side as a channels-last [N, C, H, W] tensor (a view).
at::Tensor from_rows(const at::Tensor& rows, const Geometry& g) {
  return rows.view({g.n, g.h, g.w, rows.size(1)}).permute({0, 3, 1, 2});
}

at::MemoryFormat format_of(const at::Tensor& t) {
  return t.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
}

// oneDNN's conv2d(x, weight) with an output of g.h x g.w pixels, in x's layout. bfloat16 with a small
// output (<= 16 pixels: the 8x8 -> 4x4 products) goes through NCHW: oneDNN's NCHW kernel ran it in
// 4.2 ms at batch 64 here, transposes included, against 6.9 channels-last, and an NCHW weight needs
// no reorder (float32 and larger outputs ran as fast or faster channels-last).
at::Tensor onednn_conv2d(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, const Geometry& g) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  if (x.scalar_type() == at::kBFloat16 && g.h * g.w <= 16 && !x.is_contiguous() && x.is_contiguous(cl)) {
    const auto z = at::conv2d(dense_as(x, at::MemoryFormat::Contiguous), weight.contiguous(), {}, stride, padding);
    return dense_as(z, cl);
  }
  return at::conv2d(x, weight_for(x, weight), {}, stride, padding);
}

// (grad_x in x's layout, grad_weight in the weight's), [0] for a gradient not computed.
std::tuple<at::Tensor, at::Tensor> finish_backward(const at::Tensor& grad_x, const at::Tensor& grad_w,
                                                   const at::Tensor& x, const at::Tensor& weight) {
  const auto none = at::empty({0}, x.options());
  return {grad_x.defined() ? dense_as(grad_x, format_of(x)) : none,
          grad_w.defined() ? dense_as(grad_w, format_of(weight)) : none};
}

std::tuple<at::Tensor, at::Tensor> conv_transpose_backward(const at::Tensor& grad, const at::Tensor& x,
                                                           const at::Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                           bool need_x, bool need_weight) {
  check_conv_transpose_args(x, weight, "conv_transpose_backward");
  const auto g = geometry(x, weight, stride, padding, output_padding);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == g.n && grad.size(1) == g.c_out && grad.size(2) == g.oh &&
                  grad.size(3) == g.ow,
              "fastgan_cpu::conv_transpose_backward: grad must have the output's shape [", g.n, ", ", g.c_out, ", ",
              g.oh, ", ", g.ow, "], got ", grad.sizes());
  at::Tensor grad_x, grad_w;
  if (use_gemm(x, g, false, false)) {
    const auto gcols = im2col_rows(grad, g);
    const auto w2 = weight.reshape({g.c_in, g.row()});
    if (need_x) grad_x = from_rows(gemm(gcols, w2.t()), g);
    if (need_weight) grad_w = gemm(rows_of(x).t(), gcols).view(weight.sizes());
  } else if (const bool weight_gemm = use_gemm_up_to(x, g, weight_gemm_max_pixels(x), false);
             weight_gemm || g.h * g.w >= 64) {
    // The direct convolution this one is the adjoint of, channels-last.
    const auto cl = at::MemoryFormat::ChannelsLast;
    const auto gl = dense_as(grad, cl), xl = dense_as(x, cl);
    if (need_x) grad_x = onednn_conv2d(gl, weight, stride, padding, g);
    if (need_weight && weight_gemm) {
      grad_w = gemm(rows_of(xl).t(), im2col_rows(gl, g, true)).view(weight.sizes());
    } else if (need_weight) {
      grad_w = std::get<1>(at::convolution_backward(xl, gl, weight_for(xl, weight), c10::nullopt, stride, padding,
                                                    {1, 1}, false, {0, 0}, 1, {false, true, false}));
    }
  } else {
    std::tie(grad_x, grad_w, std::ignore) =
        at::convolution_backward(grad.contiguous(), x.contiguous(), weight.contiguous(), c10::nullopt, stride, padding,
                                 {1, 1}, true, output_padding, 1, {need_x, need_weight, false});
  }
  return finish_backward(grad_x, grad_w, x, weight);
}

void check_direct_args(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                       const char* op) {
  TORCH_CHECK(weight.dim() == 4 && x.dim() == 4 && weight.size(1) == x.size(1), "fastgan_cpu::", op,
              ": weight must be [C_out, C_in, kH, kW] with C_in = x.size(1), got x ", x.sizes(), " and weight ",
              weight.sizes());
  const auto g = direct_geometry(x, weight, stride, padding);
  TORCH_CHECK(g.h > 0 && g.w > 0, "fastgan_cpu::", op, ": the output would be empty for x ", x.sizes(),
              " and weight ", weight.sizes());
}

// z = conv2d(x, weight), in x's layout.
at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding) {
  check_direct_args(x, weight, stride, padding, "conv2d");
  const auto g = direct_geometry(x, weight, stride, padding);
  at::Tensor z;
  if (use_gemm(x, g, true, false)) {
    z = from_rows(gemm(im2col_rows(x, g), weight.reshape({g.c_in, g.row()}).t()), g);
  } else {
    z = onednn_conv2d(x, weight, stride, padding, g);
  }
  return dense_as(z, x.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
}

std::tuple<at::Tensor, at::Tensor> conv2d_backward(const at::Tensor& grad, const at::Tensor& x,
                                                   const at::Tensor& weight, at::IntArrayRef stride,
                                                   at::IntArrayRef padding, bool need_x, bool need_weight) {
  check_direct_args(x, weight, stride, padding, "conv2d_backward");
  const auto g = direct_geometry(x, weight, stride, padding);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == g.n && grad.size(1) == g.c_in && grad.size(2) == g.h &&
                  grad.size(3) == g.w,
              "fastgan_cpu::conv2d_backward: grad must have the output's shape [", g.n, ", ", g.c_in, ", ", g.h, ", ",
              g.w, "], got ", grad.sizes());
  at::Tensor grad_x, grad_w;
  // grad_x by GEMM goes through col2im (sums taps) unless cols is grad_x itself.
  const bool all_gemm = use_gemm(x, g, true, !g.cols_is_z()),
             weight_gemm = need_weight && use_gemm_up_to(x, g, weight_gemm_max_pixels(x), false);
  if (!all_gemm) {
    std::tie(grad_x, grad_w, std::ignore) =
        at::convolution_backward(grad, x, weight_for(x, weight), c10::nullopt, stride, padding, {1, 1}, false, {0, 0},
                                 1, {need_x, need_weight && !weight_gemm, false});
  }
  if (all_gemm || weight_gemm) {
    const auto gl = dense_as(grad, g.h * g.w == 1 ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
    if (need_x && all_gemm) grad_x = forward_gemm(gl, weight.contiguous(), c10::nullopt, g, false);
    if (need_weight) grad_w = gemm(rows_of(gl).t(), im2col_rows(x, g, true)).view(weight.sizes());
  }
  return finish_backward(grad_x, grad_w, x, weight);
}

}  // namespace

void check_conv_transpose_args(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(weight.dim() == 4 && x.dim() == 4 && weight.size(0) == x.size(1), "fastgan_cpu::", op,
              ": weight must be [C_in, C_out, kH, kW] with C_in = x.size(1), got x ", x.sizes(), " and weight ",
              weight.sizes());
}

at::Tensor weight_for(const at::Tensor& x, const at::Tensor& weight) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  return x.is_contiguous(cl) && !x.is_contiguous() ? dense_as(weight, cl) : weight;
}

bool conv_transpose_uses_gemm(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef output_padding, bool has_bias) {
  const auto g = geometry(x, weight, stride, padding, output_padding);
  return use_gemm(x, g, false, sums_taps_forward(g, has_bias));
}

at::Tensor conv_transpose_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                                  bool relu) {
  check_conv_transpose_args(x, weight, "conv_transpose");
  const auto g = geometry(x, weight, stride, padding, output_padding);
  if (use_gemm(x, g, false, sums_taps_forward(g, bias.has_value() && bias->defined()))) {
    return forward_gemm(x, weight.contiguous(), bias, g, relu);
  }
  auto z = at::conv_transpose2d(x, weight_for(x, weight), bias, stride, padding, output_padding, 1, {1, 1});
  if (!z.is_contiguous() && !z.is_contiguous(at::MemoryFormat::ChannelsLast)) z = z.contiguous();
  return relu ? z.relu_() : z;
}

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("conv_transpose_backward", &conv_transpose_backward);
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_backward", &conv2d_backward);
}

}  // namespace fastgan::cpu
