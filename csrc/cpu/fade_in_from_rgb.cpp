// SPEC 6, discriminator side: out = (1 - alpha) * lrelu(z) + alpha * x_high with
// z = w_mul * W avg_pool_2x2(img) + b_mul * bias, the equalized 1x1 conv over the Ci
// colour channels; and its backward (z recomputed, gz = (1 - alpha) * lrelu'(z) * grad):
//   grad_img = up_2x(w_mul * W^T gz) / 4, grad_x_high = alpha * grad,
//   grad_weight = w_mul * sum gz p^T, grad_bias = b_mul * sum gz;
// and the gradient penalty's terms of the backward's backward (schemas.h), as the backward's tasks.
// A task takes tiles of low-resolution rows (n, h0 .. h0 + nh), up to kTilePixels pixels:
// it pools the image rows above them into p[Ci][tile pixels] (float), then walks x_high's
// Co channels. NCHW vectorizes along the tile's pixels (contiguous in each channel plane,
// however narrow the rows: 4x4 maps are one vector), channels-last along the Co channels. The weight sums go to per-block
// partials, added in a fixed order at the end (deterministic).
#include <vector>

#include "common.h"

namespace fastgan::cpu {
namespace {

constexpr int64_t kTilePixels = 256;

struct Shape {
  int64_t n, ci, co, h, w;
  bool nhwc;
  int64_t rt() const { return std::clamp<int64_t>(kTilePixels / std::max<int64_t>(w, 1), 1, std::max<int64_t>(h, 1)); }
  int64_t tiles_per_sample() const { return (h + rt() - 1) / rt(); }
  int64_t tiles() const { return n * tiles_per_sample(); }
  int64_t pl() const { return rt() * w; }  // the stride of a colour in p
};

// Tile t: sample n, rows h0 .. h0 + nh, len = nh * W pixels.
struct Tile {
  int64_t n, h0, nh, len;
};

inline Tile tile_of(const Shape& s, int64_t t) {
  const int64_t n = t / s.tiles_per_sample(), h0 = t % s.tiles_per_sample() * s.rt();
  const int64_t nh = std::min(s.rt(), s.h - h0);
  return {n, h0, nh, nh * s.w};
}

// The lrelu derivative: 1 where z > 0, else slope (as PyTorch's leaky_relu backward).
template <typename V>
V lrelu_slope_vec(const V& z, const V& slope) {
  return V::blendv(slope, V(1), z > V(0));
}

template <typename acc_t>
acc_t lrelu_slope(acc_t z, acc_t slope) {
  return z > acc_t(0) ? acc_t(1) : slope;
}

// Weights and bias scaled and in acc_t: wt[i * Co + o] = w_mul * W[o, i], bb[o] = b_mul * bias[o].
template <typename T>
struct Scaled {
  std::vector<at::opmath_type<T>> wt, bb;
  Scaled(const T* weight, const T* bias, const Shape& s, double w_mul, double b_mul) : wt(s.ci * s.co), bb(s.co) {
    using acc_t = at::opmath_type<T>;
    for (int64_t o = 0; o < s.co; ++o) {
      bb[o] = static_cast<acc_t>(b_mul) * static_cast<acc_t>(bias[o]);
      for (int64_t i = 0; i < s.ci; ++i)
        wt[i * s.co + o] = static_cast<acc_t>(w_mul) * static_cast<acc_t>(weight[o * s.ci + i]);
    }
  }
  // z of channel o at pixel w of a pooled tile p[Ci][pl].
  at::opmath_type<T> z(const at::opmath_type<T>* p, const Shape& s, int64_t o, int64_t w) const {
    at::opmath_type<T> v = bb[o];
    for (int64_t i = 0; i < s.ci; ++i) v += wt[i * s.co + o] * p[i * s.pl() + w];
    return v;
  }
};

// p[i * pl + r * W + w] = avg_pool_2x2(img) at low pixel (n, h0 + r, w) of tile tl, colour i.
template <typename T>
void pool_rgb_tile(const T* img, const Shape& s, const Tile& tl, at::opmath_type<T>* p) {
  using acc_t = at::opmath_type<T>;
  const int64_t hl = 2 * s.w, pl = s.pl();
  for (int64_t r = 0; r < tl.nh; ++r) {
    const int64_t h = tl.h0 + r;
    if (!s.nhwc) {
      for (int64_t i = 0; i < s.ci; ++i) {
        const T* top = img + ((tl.n * s.ci + i) * 2 * s.h + 2 * h) * hl;
        pool_row(top, top + hl, p + i * pl + r * s.w, RowPairs{1, s.w, 1}, acc_t(0.25));
      }
      continue;
    }
    const T* top = img + (tl.n * 2 * s.h + 2 * h) * hl * s.ci;
    const T* bottom = top + hl * s.ci;
    for (int64_t w = 0; w < s.w; ++w) {
      for (int64_t i = 0; i < s.ci; ++i) {
        const int64_t k = 2 * w * s.ci + i;
        p[i * pl + r * s.w + w] = acc_t(0.25) * (static_cast<acc_t>(top[k]) + static_cast<acc_t>(top[k + s.ci]) +
                                                 static_cast<acc_t>(bottom[k]) + static_cast<acc_t>(bottom[k + s.ci]));
      }
    }
  }
}

// Writes the 2x2 up-sampling of scale * gp[i * pl + r * W + w] into grad_img above tile tl.
template <typename T>
void unpool_rgb_tile(const at::opmath_type<T>* gp, const Shape& s, const Tile& tl, at::opmath_type<T> scale, T* gi) {
  const int64_t hl = 2 * s.w, pl = s.pl();
  // NCHW: rows of colour i, pixels 1 apart; NHWC: rows of all colours, pixels Ci apart.
  const int64_t pix = s.nhwc ? s.ci : 1;
  for (int64_t r = 0; r < tl.nh; ++r) {
    const int64_t h = tl.h0 + r;
    for (int64_t i = 0; i < s.ci; ++i) {
      T* top = s.nhwc ? gi + (tl.n * 2 * s.h + 2 * h) * hl * s.ci + i : gi + ((tl.n * s.ci + i) * 2 * s.h + 2 * h) * hl;
      T* bottom = top + hl * pix;
      for (int64_t w = 0; w < s.w; ++w) {
        const T v = static_cast<T>(scale * gp[i * pl + r * s.w + w]);
        top[2 * w * pix] = v;
        top[(2 * w + 1) * pix] = v;
        bottom[2 * w * pix] = v;
        bottom[(2 * w + 1) * pix] = v;
      }
    }
  }
}

// The len outputs of channel o on an NCHW tile, vectorized along the pixels.
template <typename T>
void forward_nchw_channel(const at::opmath_type<T>* p, const Scaled<T>& sc, const Shape& s, int64_t o, int64_t len,
                          const T* xh, T* out, double alpha, double slope) {
  using acc_t = at::opmath_type<T>;
  const acc_t a = static_cast<acc_t>(alpha), b = static_cast<acc_t>(1.0 - alpha), sl = static_cast<acc_t>(slope);
  int64_t j = 0;
  if constexpr (kChunked<T>) {
    using Vec = AccVec<T>;
    for (; j + kChunk<T> <= len; j += kChunk<T>) {
      auto xv = load_chunk(xh + j);
      for (int q = 0; q < kParts<T>; ++q) {
        Vec z(sc.bb[o]);
        for (int64_t i = 0; i < s.ci; ++i)
          z = at::vec::fmadd(Vec(sc.wt[i * s.co + o]), Vec::loadu(p + i * s.pl() + j + q * Vec::size()), z);
        xv[q] = at::vec::fmadd(Vec(a), xv[q], Vec(b) * z * lrelu_slope_vec(z, Vec(sl)));
      }
      store_chunk(out + j, xv);
    }
  }
  for (; j < len; ++j) {
    const acc_t z = sc.z(p, s, o, j);
    out[j] = static_cast<T>(a * static_cast<acc_t>(xh[j]) + b * z * lrelu_slope(z, sl));
  }
}

// The Co outputs of channels-last pixel w, vectorized along the channels.
template <typename T>
void forward_nhwc_pixel(const at::opmath_type<T>* p, const Scaled<T>& sc, const Shape& s, int64_t w, const T* xh,
                        T* out, double alpha, double slope) {
  using acc_t = at::opmath_type<T>;
  const acc_t a = static_cast<acc_t>(alpha), b = static_cast<acc_t>(1.0 - alpha), sl = static_cast<acc_t>(slope);
  int64_t o = 0;
  if constexpr (kChunked<T>) {
    using Vec = AccVec<T>;
    for (; o + kChunk<T> <= s.co; o += kChunk<T>) {
      auto xv = load_chunk(xh + o);
      auto z = load_acc_chunk<T>(sc.bb.data() + o);
      for (int64_t i = 0; i < s.ci; ++i) {
        const auto wv = load_acc_chunk<T>(sc.wt.data() + i * s.co + o);
        for (int q = 0; q < kParts<T>; ++q) z[q] = at::vec::fmadd(Vec(p[i * s.pl() + w]), wv[q], z[q]);
      }
      for (int q = 0; q < kParts<T>; ++q) xv[q] = at::vec::fmadd(Vec(a), xv[q], Vec(b) * z[q] * lrelu_slope_vec(z[q], Vec(sl)));
      store_chunk(out + o, xv);
    }
  }
  for (; o < s.co; ++o) {
    const acc_t z = sc.z(p, s, o, w);
    out[o] = static_cast<T>(a * static_cast<acc_t>(xh[o]) + b * z * lrelu_slope(z, sl));
  }
}

template <typename T>
void fade_in_from_rgb_kernel(const T* img, const T* xh, const T* weight, const T* bias, T* out, const Shape& s,
                             double alpha, double w_mul, double b_mul, double slope) {
  using acc_t = at::opmath_type<T>;
  const Scaled<T> sc(weight, bias, s, w_mul, b_mul);
  at::parallel_for(0, s.tiles(), grain(s.co * s.pl()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> p(s.ci * s.pl());
    for (int64_t t = begin; t < end; ++t) {
      const Tile tl = tile_of(s, t);
      pool_rgb_tile(img, s, tl, p.data());
      if (s.nhwc) {
        for (int64_t w = 0; w < tl.len; ++w) {
          const int64_t off = ((tl.n * s.h + tl.h0) * s.w + w) * s.co;
          forward_nhwc_pixel(p.data(), sc, s, w, xh + off, out + off, alpha, slope);
        }
      } else {
        for (int64_t o = 0; o < s.co; ++o) {
          const int64_t off = ((tl.n * s.co + o) * s.h + tl.h0) * s.w;
          forward_nchw_channel(p.data(), sc, s, o, tl.len, xh + off, out + off, alpha, slope);
        }
      }
    }
  });
}

// Backward state of a task: pooled row p, its gradient gp, and the weight partials
// part[(1 + i) * Co + o] = sum gz * p_i, part[o] = sum gz (unscaled).
template <typename T>
struct BackwardRow {
  const Shape& s;
  const Scaled<T>& sc;
  at::opmath_type<T> a, b, sl;
  at::opmath_type<T>* p;
  at::opmath_type<T>* gp;
  at::opmath_type<T>* part;

  // One channel o of an NCHW tile: grad and grad_x_high runs of len pixels.
  void nchw_channel(int64_t o, int64_t len, const T* g, T* gxh) {
    const int64_t pl = s.pl();
    using acc_t = at::opmath_type<T>;
    int64_t j = 0;
    if constexpr (kChunked<T>) {
      using Vec = AccVec<T>;
      Vec sum_b(0);
      std::array<Vec, 4> sum_w{Vec(0), Vec(0), Vec(0), Vec(0)};  // colours 0..3; more in the tail loop below
      const int64_t vi = std::min<int64_t>(s.ci, 4);
      for (; j + kChunk<T> <= len; j += kChunk<T>) {
        auto gv = load_chunk(g + j);
        for (int q = 0; q < kParts<T>; ++q) {
          const int64_t k = j + q * Vec::size();
          Vec z(sc.bb[o]);
          for (int64_t i = 0; i < s.ci; ++i) z = at::vec::fmadd(Vec(sc.wt[i * s.co + o]), Vec::loadu(p + i * pl + k), z);
          const Vec gz = Vec(b) * gv[q] * lrelu_slope_vec(z, Vec(sl));
          gv[q] = Vec(a) * gv[q];
          sum_b = sum_b + gz;
          for (int64_t i = 0; i < s.ci; ++i) {
            const Vec pv = Vec::loadu(p + i * pl + k);
            if (i < vi) {
              sum_w[i] = at::vec::fmadd(gz, pv, sum_w[i]);
            } else {
              part[(1 + i) * s.co + o] += vec_sum(gz * pv);
            }
            at::vec::fmadd(Vec(sc.wt[i * s.co + o]), gz, Vec::loadu(gp + i * pl + k)).store(gp + i * pl + k);
          }
        }
        store_chunk(gxh + j, gv);
      }
      part[o] += vec_sum(sum_b);
      for (int64_t i = 0; i < vi; ++i) part[(1 + i) * s.co + o] += vec_sum(sum_w[i]);
    }
    for (; j < len; ++j) scalar(o, j, g[j], gxh[j]);
  }

  // The scalar code of channel o at tile pixel k: grad value gv in, grad_x_high value out.
  void scalar(int64_t o, int64_t k, T gv_in, T& out) {
    using acc_t = at::opmath_type<T>;
    const int64_t pl = s.pl();
    const acc_t gv = static_cast<acc_t>(gv_in);
    const acc_t gz = b * gv * lrelu_slope(sc.z(p, s, o, k), sl);
    out = static_cast<T>(a * gv);
    part[o] += gz;
    for (int64_t i = 0; i < s.ci; ++i) {
      part[(1 + i) * s.co + o] += gz * p[i * pl + k];
      gp[i * pl + k] += sc.wt[i * s.co + o] * gz;
    }
  }

  // One NHWC pixel w of the tile: grad and grad_x_high hold its Co channels.
  void nhwc_pixel(int64_t w, const T* g, T* gxh) {
    using acc_t = at::opmath_type<T>;
    const int64_t pl = s.pl();
    int64_t o = 0;
    if constexpr (kChunked<T>) {
      using Vec = AccVec<T>;
      std::array<Vec, 4> dot{Vec(0), Vec(0), Vec(0), Vec(0)};  // gp of colours 0..3, more below
      const int64_t vi = std::min<int64_t>(s.ci, 4);
      for (; o + kChunk<T> <= s.co; o += kChunk<T>) {
        auto gv = load_chunk(g + o);
        auto z = load_acc_chunk<T>(sc.bb.data() + o);
        for (int64_t i = 0; i < s.ci; ++i) {
          const auto wv = load_acc_chunk<T>(sc.wt.data() + i * s.co + o);
          for (int q = 0; q < kParts<T>; ++q) z[q] = at::vec::fmadd(Vec(p[i * pl + w]), wv[q], z[q]);
        }
        Chunk<T> gz;
        for (int q = 0; q < kParts<T>; ++q) {
          gz[q] = Vec(b) * gv[q] * lrelu_slope_vec(z[q], Vec(sl));
          gv[q] = Vec(a) * gv[q];
        }
        store_chunk(gxh + o, gv);
        auto pb = load_acc_chunk<T>(part + o);
        for (int q = 0; q < kParts<T>; ++q) pb[q] = pb[q] + gz[q];
        store_acc_chunk<T>(part + o, pb);
        for (int64_t i = 0; i < s.ci; ++i) {
          auto pw = load_acc_chunk<T>(part + (1 + i) * s.co + o);
          const auto wv = load_acc_chunk<T>(sc.wt.data() + i * s.co + o);
          for (int q = 0; q < kParts<T>; ++q) {
            pw[q] = at::vec::fmadd(Vec(p[i * pl + w]), gz[q], pw[q]);
            if (i < vi) {
              dot[i] = at::vec::fmadd(wv[q], gz[q], dot[i]);
            } else {
              gp[i * pl + w] += vec_sum(wv[q] * gz[q]);
            }
          }
          store_acc_chunk<T>(part + (1 + i) * s.co + o, pw);
        }
      }
      for (int64_t i = 0; i < vi; ++i) gp[i * pl + w] += vec_sum(dot[i]);
    }
    for (; o < s.co; ++o) scalar(o, w, g[o], gxh[o]);
  }

  static at::opmath_type<T> vec_sum(const AccVec<T>& v) {
    using acc_t = at::opmath_type<T>;
    return at::vec::vec_reduce_all<acc_t>([](const AccVec<T>& u, const AccVec<T>& x) { return u + x; }, v);
  }
};

template <typename T>
void fade_in_from_rgb_backward_kernel(const T* grad, const T* img, const T* weight, const T* bias, T* g_img, T* g_xh,
                                      T* g_weight, T* g_bias, const Shape& s, double alpha, double w_mul,
                                      double b_mul, double slope) {
  using acc_t = at::opmath_type<T>;
  const Scaled<T> sc(weight, bias, s, w_mul, b_mul);
  // Fixed blocks of tiles, each with its own partials: the sums do not depend on the thread count.
  const int64_t per_block = grain(s.co * s.pl()), blocks = (s.tiles() + per_block - 1) / per_block;
  const int64_t np = (1 + s.ci) * s.co;
  std::vector<acc_t> partial(blocks * np, acc_t(0));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> p(s.ci * s.pl()), gp(s.ci * s.pl());
    for (int64_t blk = begin; blk < end; ++blk) {
      BackwardRow<T> br{s, sc, static_cast<acc_t>(alpha), static_cast<acc_t>(1.0 - alpha), static_cast<acc_t>(slope),
                        p.data(), gp.data(), partial.data() + blk * np};
      for (int64_t t = blk * per_block; t < std::min(s.tiles(), (blk + 1) * per_block); ++t) {
        const Tile tl = tile_of(s, t);
        pool_rgb_tile(img, s, tl, p.data());
        std::fill(gp.begin(), gp.end(), acc_t(0));
        if (s.nhwc) {
          for (int64_t w = 0; w < tl.len; ++w) {
            const int64_t off = ((tl.n * s.h + tl.h0) * s.w + w) * s.co;
            br.nhwc_pixel(w, grad + off, g_xh + off);
          }
        } else {
          for (int64_t o = 0; o < s.co; ++o) {
            const int64_t off = ((tl.n * s.co + o) * s.h + tl.h0) * s.w;
            br.nchw_channel(o, tl.len, grad + off, g_xh + off);
          }
        }
        unpool_rgb_tile(gp.data(), s, tl, static_cast<acc_t>(0.25), g_img);
      }
    }
  });
  for (int64_t k = 0; k < np; ++k) {
    acc_t total = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) total += partial[blk * np + k];
    const int64_t o = k % s.co, i = k / s.co - 1;
    if (i < 0) {
      g_bias[o] = static_cast<T>(static_cast<acc_t>(b_mul) * total);
    } else {
      g_weight[o * s.ci + i] = static_cast<T>(static_cast<acc_t>(w_mul) * total);
    }
  }
}

// Double backward state of a task (schemas.h: fade_in_from_rgb_double_backward): pooled rows p
// (img, for the mask) and q (gg_img), and the weight partials part[i * Co + o] = sum m * grad * q_i
// (unscaled; null without d_weight). grad runs are read, and d_grad runs written, only when given.
template <typename T>
struct DoubleBackwardRow {
  using acc_t = at::opmath_type<T>;
  const Shape& s;
  const Scaled<T>& sc;
  acc_t b, sl;
  const acc_t* p;
  const acc_t* q;
  acc_t* part;

  // One channel o of an NCHW tile: runs of len pixels.
  void nchw_channel(int64_t o, int64_t len, const T* g, T* dg) {
    const int64_t pl = s.pl();
    int64_t j = 0;
    if constexpr (kChunked<T>) {
      using Vec = AccVec<T>;
      std::array<Vec, 4> sum_w{Vec(0), Vec(0), Vec(0), Vec(0)};  // colours 0..3; more go to part directly
      const int64_t vi = std::min<int64_t>(s.ci, 4);
      for (; j + kChunk<T> <= len; j += kChunk<T>) {
        Chunk<T> gv, dv;
        if (g) gv = load_chunk(g + j);
        for (int r = 0; r < kParts<T>; ++r) {
          const int64_t k = j + r * Vec::size();
          Vec z(sc.bb[o]), t(0);
          for (int64_t i = 0; i < s.ci; ++i) {
            const Vec w(sc.wt[i * s.co + o]);
            z = at::vec::fmadd(w, Vec::loadu(p + i * pl + k), z);
            if (dg) t = at::vec::fmadd(w, Vec::loadu(q + i * pl + k), t);
          }
          const Vec m = lrelu_slope_vec(z, Vec(sl));
          if (dg) dv[r] = Vec(b) * m * t;
          if (g) {
            const Vec gm = m * gv[r];
            for (int64_t i = 0; i < s.ci; ++i) {
              const Vec qv = Vec::loadu(q + i * pl + k);
              if (i < vi) {
                sum_w[i] = at::vec::fmadd(gm, qv, sum_w[i]);
              } else {
                part[i * s.co + o] += BackwardRow<T>::vec_sum(gm * qv);
              }
            }
          }
        }
        if (dg) store_chunk(dg + j, dv);
      }
      if (g) {
        for (int64_t i = 0; i < vi; ++i) part[i * s.co + o] += BackwardRow<T>::vec_sum(sum_w[i]);
      }
    }
    for (; j < len; ++j) scalar(o, j, g ? g + j : nullptr, dg ? dg + j : nullptr);
  }

  // One NHWC pixel w of the tile: its Co channels, vectorized along them.
  void nhwc_pixel(int64_t w, const T* g, T* dg) {
    const int64_t pl = s.pl();
    int64_t o = 0;
    if constexpr (kChunked<T>) {
      using Vec = AccVec<T>;
      for (; o + kChunk<T> <= s.co; o += kChunk<T>) {
        auto z = load_acc_chunk<T>(sc.bb.data() + o);
        Chunk<T> t, m;
        for (int r = 0; r < kParts<T>; ++r) t[r] = Vec(0);
        for (int64_t i = 0; i < s.ci; ++i) {
          const auto wv = load_acc_chunk<T>(sc.wt.data() + i * s.co + o);
          for (int r = 0; r < kParts<T>; ++r) {
            z[r] = at::vec::fmadd(Vec(p[i * pl + w]), wv[r], z[r]);
            if (dg) t[r] = at::vec::fmadd(Vec(q[i * pl + w]), wv[r], t[r]);
          }
        }
        for (int r = 0; r < kParts<T>; ++r) m[r] = lrelu_slope_vec(z[r], Vec(sl));
        if (dg) {
          for (int r = 0; r < kParts<T>; ++r) t[r] = Vec(b) * m[r] * t[r];
          store_chunk(dg + o, t);
        }
        if (g) {
          auto gm = load_chunk(g + o);
          for (int r = 0; r < kParts<T>; ++r) gm[r] = m[r] * gm[r];
          for (int64_t i = 0; i < s.ci; ++i) {
            auto pw = load_acc_chunk<T>(part + i * s.co + o);
            for (int r = 0; r < kParts<T>; ++r) pw[r] = at::vec::fmadd(Vec(q[i * pl + w]), gm[r], pw[r]);
            store_acc_chunk<T>(part + i * s.co + o, pw);
          }
        }
      }
    }
    for (; o < s.co; ++o) scalar(o, w, g ? g + o : nullptr, dg ? dg + o : nullptr);
  }

  // The scalar code of channel o at tile pixel k.
  void scalar(int64_t o, int64_t k, const T* g, T* dg) {
    const int64_t pl = s.pl();
    const acc_t m = lrelu_slope(sc.z(p, s, o, k), sl);
    if (dg) {
      acc_t t = 0;
      for (int64_t i = 0; i < s.ci; ++i) t += sc.wt[i * s.co + o] * q[i * pl + k];
      *dg = static_cast<T>(b * m * t);
    }
    if (g) {
      const acc_t gm = m * static_cast<acc_t>(*g);
      for (int64_t i = 0; i < s.ci; ++i) part[i * s.co + o] += gm * q[i * pl + k];
    }
  }
};

// d_grad and d_weight of schemas.h's fade_in_from_rgb_double_backward; either may be null (not asked).
template <typename T>
void fade_in_from_rgb_double_backward_kernel(const T* grad, const T* img, const T* gg_img, const T* weight,
                                             const T* bias, T* d_grad, T* d_weight, const Shape& s, double alpha,
                                             double w_mul, double b_mul, double slope) {
  using acc_t = at::opmath_type<T>;
  const Scaled<T> sc(weight, bias, s, w_mul, b_mul);
  // Fixed blocks of tiles, each with its own partials, as the backward's.
  const int64_t per_block = grain(s.co * s.pl()), blocks = (s.tiles() + per_block - 1) / per_block;
  const int64_t np = s.ci * s.co;
  std::vector<acc_t> partial(d_weight ? blocks * np : 0, acc_t(0));
  const acc_t b = static_cast<acc_t>(1.0 - alpha);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> p(s.ci * s.pl()), q(s.ci * s.pl());
    for (int64_t blk = begin; blk < end; ++blk) {
      DoubleBackwardRow<T> row{s, sc, b, static_cast<acc_t>(slope), p.data(), q.data(),
                               d_weight ? partial.data() + blk * np : nullptr};
      for (int64_t t = blk * per_block; t < std::min(s.tiles(), (blk + 1) * per_block); ++t) {
        const Tile tl = tile_of(s, t);
        pool_rgb_tile(img, s, tl, p.data());
        pool_rgb_tile(gg_img, s, tl, q.data());
        if (s.nhwc) {
          for (int64_t w = 0; w < tl.len; ++w) {
            const int64_t off = ((tl.n * s.h + tl.h0) * s.w + w) * s.co;
            row.nhwc_pixel(w, d_weight ? grad + off : nullptr, d_grad ? d_grad + off : nullptr);
          }
        } else {
          for (int64_t o = 0; o < s.co; ++o) {
            const int64_t off = ((tl.n * s.co + o) * s.h + tl.h0) * s.w;
            row.nchw_channel(o, tl.len, d_weight ? grad + off : nullptr, d_grad ? d_grad + off : nullptr);
          }
        }
      }
    }
  });
  if (!d_weight) return;
  const acc_t scale = static_cast<acc_t>(w_mul) * b;
  for (int64_t k = 0; k < np; ++k) {
    acc_t total = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) total += partial[blk * np + k];
    d_weight[k % s.co * s.ci + k / s.co] = static_cast<T>(scale * total);
  }
}

Shape check_shapes(const char* op, const at::Tensor& img, const at::Tensor& xh, const at::Tensor& weight,
                   const at::Tensor& bias, at::MemoryFormat fmt) {
  TORCH_CHECK(img.dim() == 4 && xh.dim() == 4, "fastgan_cpu::", op, ": img and x_high must be 4-D, got ", img.sizes(),
              " and ", xh.sizes());
  const int64_t n = xh.size(0), co = xh.size(1), h = xh.size(2), w = xh.size(3), ci = img.size(1);
  TORCH_CHECK(img.size(0) == n && img.size(2) == 2 * h && img.size(3) == 2 * w, "fastgan_cpu::", op,
              ": img must be [N, Ci, 2H, 2W] for x_high ", xh.sizes(), ", got ", img.sizes());
  const std::array<int64_t, 4> wsizes{co, ci, 1, 1};
  TORCH_CHECK(weight.sizes() == at::IntArrayRef(wsizes) && weight.is_contiguous(), "fastgan_cpu::", op,
              ": weight must be contiguous ", at::IntArrayRef(wsizes), ", got ", weight.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == co && bias.is_contiguous(), "fastgan_cpu::", op,
              ": bias must be contiguous [", co, "], got ", bias.sizes());
  check_like(img, "img", xh, fmt);
  TORCH_CHECK(weight.scalar_type() == xh.scalar_type() && bias.scalar_type() == xh.scalar_type(), "fastgan_cpu::", op,
              ": weight and bias must have dtype ", xh.scalar_type());
  return {n, ci, co, h, w, fmt == at::MemoryFormat::ChannelsLast};
}

at::Tensor fade_in_from_rgb(const at::Tensor& img, const at::Tensor& x_high, const at::Tensor& weight,
                            const at::Tensor& bias, double alpha, double w_mul, double b_mul, double slope) {
  const auto fmt = layout_of(x_high, "x_high");
  const Shape s = check_shapes("fade_in_from_rgb", img, x_high, weight, bias, fmt);
  auto out = at::empty(x_high.sizes(), x_high.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fastgan_cpu::fade_in_from_rgb", [&] {
    fade_in_from_rgb_kernel(img.const_data_ptr<scalar_t>(), x_high.const_data_ptr<scalar_t>(),
                            weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                            out.mutable_data_ptr<scalar_t>(), s, alpha, w_mul, b_mul, slope);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fade_in_from_rgb_backward(
    const at::Tensor& grad, const at::Tensor& img, const at::Tensor& weight, const at::Tensor& bias, double alpha,
    double w_mul, double b_mul, double slope) {
  const auto fmt = layout_of(grad, "grad");
  const Shape s = check_shapes("fade_in_from_rgb_backward", img, grad, weight, bias, fmt);
  auto g_img = at::empty(img.sizes(), img.options().memory_format(fmt));
  auto g_xh = at::empty(grad.sizes(), grad.options().memory_format(fmt));
  auto g_weight = at::empty(weight.sizes(), weight.options());
  auto g_bias = at::empty(bias.sizes(), bias.options());
  if (grad.numel() == 0) {
    g_img.zero_();
    g_weight.zero_();
    g_bias.zero_();
    return {g_img, g_xh, g_weight, g_bias};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "fastgan_cpu::fade_in_from_rgb_backward",
                                  [&] {
    fade_in_from_rgb_backward_kernel(grad.const_data_ptr<scalar_t>(), img.const_data_ptr<scalar_t>(),
                                     weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                                     g_img.mutable_data_ptr<scalar_t>(), g_xh.mutable_data_ptr<scalar_t>(),
                                     g_weight.mutable_data_ptr<scalar_t>(), g_bias.mutable_data_ptr<scalar_t>(), s,
                                     alpha, w_mul, b_mul, slope);
  });
  return {g_img, g_xh, g_weight, g_bias};
}

std::tuple<at::Tensor, at::Tensor> fade_in_from_rgb_double_backward(
    const at::Tensor& grad, const at::Tensor& img, const at::Tensor& gg_img, const at::Tensor& weight,
    const at::Tensor& bias, double alpha, double w_mul, double b_mul, double slope, bool need_grad, bool need_weight) {
  const char* op = "fade_in_from_rgb_double_backward";
  const auto fmt = layout_of(grad, "grad");
  const Shape s = check_shapes(op, img, grad, weight, bias, fmt);
  TORCH_CHECK(gg_img.sizes() == img.sizes(), "fastgan_cpu::", op, ": gg_img must have img's shape ", img.sizes(),
              ", got ", gg_img.sizes());
  check_like(gg_img, "gg_img", grad, fmt);
  auto d_grad =
      need_grad ? at::empty(grad.sizes(), grad.options().memory_format(fmt)) : at::empty({0}, grad.options());
  auto d_weight = need_weight ? at::empty(weight.sizes(), weight.options()) : at::empty({0}, weight.options());
  if (grad.numel() == 0 || !(need_grad || need_weight)) {
    if (need_weight) d_weight.zero_();
    return {d_grad, d_weight};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "fastgan_cpu::fade_in_from_rgb_double_backward", [&] {
    fade_in_from_rgb_double_backward_kernel(
        grad.const_data_ptr<scalar_t>(), img.const_data_ptr<scalar_t>(), gg_img.const_data_ptr<scalar_t>(),
        weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
        need_grad ? d_grad.mutable_data_ptr<scalar_t>() : nullptr,
        need_weight ? d_weight.mutable_data_ptr<scalar_t>() : nullptr, s, alpha, w_mul, b_mul, slope);
  });
  return {d_grad, d_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan_cpu, CPU, m) {
  m.impl("fade_in_from_rgb", &fade_in_from_rgb);
  m.impl("fade_in_from_rgb_backward", &fade_in_from_rgb_backward);
  m.impl("fade_in_from_rgb_double_backward", &fade_in_from_rgb_double_backward);
}

}  // namespace fastgan::cpu
