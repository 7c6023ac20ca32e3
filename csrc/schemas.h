// Schemas of the kernel-level ops. Both extensions define the same ops in their
// own namespace: `fastgan_cpu::*` (CPU dispatch key) and `fastgan_cuda::*` (CUDA).
// The public, autograd-aware ops live in Python as `fastgan::*` and call these.
//
// Layout contract: 4-D inputs arrive either contiguous (NCHW) or channels-last
// contiguous (NHWC) -- `x.is_contiguous()` tells which -- and all tensor inputs
// of one call share that layout; outputs are allocated in the same layout.
#pragma once

#include <torch/library.h>

namespace fastgan {

inline void define_kernel_schemas(torch::Library& m) {
  // A 4-D t dense in channels-last (channels_last) or NCHW layout: t itself when it already is,
  // else a converted copy (the public ops convert their NCHW inputs with it; CPU: register-tile
  // transposes, where PyTorch's strided copy goes element by element).
  m.def("to_layout(Tensor t, bool channels_last) -> Tensor");
  // SPEC 4: y = x * rsqrt(mean over dim 1 of x^2 + eps), x of rank >= 2.
  m.def("pixel_norm(Tensor x, float eps) -> Tensor");
  // grad_x = r * g - x * r^3 * sum_c(g * x) / C, r = rsqrt(mean_c(x^2) + eps).
  m.def("pixel_norm_backward(Tensor grad, Tensor x, float eps) -> Tensor");
  // SPEC 6: out = (1 - alpha) * upsample_nearest_2x(rgb_low) + alpha * rgb_high.
  m.def("fade_in(Tensor rgb_low, Tensor rgb_high, float alpha) -> Tensor");
  // (grad_low, grad_high) = ((1 - alpha) * sum_pool_2x2(grad), alpha * grad).
  m.def("fade_in_backward(Tensor grad, float alpha) -> (Tensor, Tensor)");
  // SPEC 6: out = (1 - alpha) * upsample_nearest_2x(avg_pool_2x2(x)) + alpha * x;
  // self-adjoint, so it is its own backward.
  m.def("blend_reals(Tensor x, float alpha) -> Tensor");

  // ---- SPEC 1: ConvTranspose2d + BatchNorm2d + ReLU. Tensors z, y of one call share a layout,
  // contiguous or channels-last (the backend picks z's; channels-last is preferred); grad_y may
  // come in either (an NCHW loss gradient), the kernel brings it to z's.
  // Per-channel vectors (mean, var, invstd, scale, shift, gamma) are float32 ([C_out]; float64
  // for float64 inputs). The conv bias is left out of z and its statistics in training: it
  // cancels in the normalization, and the Python op adds it to the running mean.
  //
  // Training forward, pass 1: z = conv_transpose2d(x, weight) (no bias, no dilation, groups 1),
  // and per channel the mean and the biased variance of z over (N, H, W), computed
  // accurately (Welford / Chan merge or two passes; never E[z^2] - E[z]^2 in float32).
  m.def("conv_transpose_stats(Tensor x, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] output_padding) -> (Tensor z, Tensor mean, Tensor var)");
  // The same z alone (eval with running statistics, normalized in place afterwards), plus the
  // conv bias when given (a vector in x's dtype, as eager's convolution adds it).
  m.def("conv_transpose(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] output_padding, "
        "Tensor? bias=None) -> Tensor");
  // Pass 2: y = act((z - mean) * scale + shift) per channel, into a new tensor in z's layout;
  // act(u) = u > 0 ? u : negative_slope * u: ReLU for slope 0 (the generator's blocks), LeakyReLU
  // otherwise (the discriminator's, SPEC 7). NaN propagates.
  m.def("bn_relu(Tensor z, Tensor mean, Tensor scale, Tensor shift, float negative_slope) -> Tensor");
  // The same in place, z <- y (when nothing needs z for the backward).
  m.def("bn_relu_(Tensor(a!) z, Tensor mean, Tensor scale, Tensor shift, float negative_slope) -> ()");
  // The per-channel step between the batch statistics and the normalization, one launch (on a GPU
  // the eager formula is ~6): invstd = rsqrt(var + eps), scale = gamma * invstd (invstd without
  // gamma), shift = beta (0 without), so bn_relu(z, mean, scale, shift) normalizes and
  // bn_relu_backward takes invstd. With running_mean / running_var (training) it also applies
  // nn.BatchNorm2d's update in place: num_batches_tracked += 1 (when given); m = momentum, or
  // 1 / num_batches_tracked (read on the device, no host sync) when momentum < 0 (momentum=None,
  // the cumulative average); running_mean += m * (mean + bias - running_mean) (bias: the conv bias
  // left out of z, or undefined), running_var += m * (var * count / (count - 1) - running_var),
  // computed in the statistics' dtype and stored in the running statistics' own.
  m.def("bn_finalize(Tensor mean, Tensor var, Tensor? gamma, Tensor? beta, float eps, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, Tensor? bias, float momentum, int count) "
        "-> (Tensor invstd, Tensor scale, Tensor shift)");
  // Backward of y = act(u), u = xhat * gamma + beta, xhat = (z - mean) * invstd, with the batch
  // statistics: gm = grad_y * (u > 0 ? 1 : negative_slope) (u recomputed from z), and in one pass
  // over (grad_y, z) both sums s1 = sum(gm), s2 = sum(gm * xhat) per channel, then
  // grad_z = gamma * invstd * (gm - s1 / n - xhat * s2 / n), grad_gamma = s2, grad_beta = s1.
  // gamma/beta undefined = affine=False (gamma 1, beta 0).
  m.def("bn_relu_backward(Tensor grad_y, Tensor z, Tensor mean, Tensor invstd, Tensor? gamma, "
        "Tensor? beta, float negative_slope) -> (Tensor grad_z, Tensor grad_gamma, Tensor grad_beta)");
  // bn_relu_backward in two halves, for statistics synchronized across processes (issue 17; as
  // torch's batch_norm_backward_reduce / _elemt around SyncBatchNorm's all-reduce): the reduce pass
  // alone, (sum_dy_xhat, sum_dy) = bn_relu_backward's (grad_gamma, grad_beta) over this z; then
  // grad_z from the sums and element count of the whole batch (every process's; count a
  // one-element tensor in the statistics' dtype, read on the device):
  // grad_z = gamma * invstd * (gm - sum_dy / count - xhat * sum_dy_xhat / count).
  m.def("bn_relu_backward_reduce(Tensor grad_y, Tensor z, Tensor mean, Tensor invstd, Tensor? gamma, "
        "Tensor? beta, float negative_slope) -> (Tensor sum_dy_xhat, Tensor sum_dy)");
  m.def("bn_relu_backward_elemt(Tensor grad_y, Tensor z, Tensor mean, Tensor invstd, Tensor? gamma, "
        "Tensor? beta, float negative_slope, Tensor sum_dy_xhat, Tensor sum_dy, Tensor count) -> Tensor");
  // Per-channel mean and biased variance of a 4-D z over (N, H, W), as conv_transpose_stats
  // computes them (accurately, never E[z^2] - E[z]^2 in float32): the statistics of a
  // convolution the backend did not run itself (the discriminator's Conv2d, SPEC 7).
  m.def("batch_stats(Tensor z) -> (Tensor mean, Tensor var)");
  // The statistics of processes' batches merged, then bn_finalize with them (issue 17): stats
  // [P, 2C + 1] holds process p's row (count, mean [C], biased var [C]) in the statistics' dtype;
  // merged in row order with Chan's formula (mean = sum n_p mean_p / n, M2 = sum n_p var_p +
  // sum n_p (mean_p - mean)^2, var = M2 / n), the running variance updated with M2 / (n - 1), the
  // total count n returned as a one-element tensor; nothing read on the host (so on cuda a total
  // count of 1 makes the running variance NaN rather than an error, which cpu raises).
  m.def("bn_gather_finalize(Tensor stats, Tensor? gamma, Tensor? beta, float eps, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, Tensor? bias, float momentum) "
        "-> (Tensor mean, Tensor var, Tensor invstd, Tensor scale, Tensor shift, Tensor count)");
  // batch_stats, then bn_finalize with count = N * H * W, as one op (the blocks' training forward:
  // one dispatch, and on a GPU the statistics' merge and the finalize in one launch).
  m.def("batch_stats_finalize(Tensor z, Tensor? gamma, Tensor? beta, float eps, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, Tensor? bias, float momentum) "
        "-> (Tensor mean, Tensor var, Tensor invstd, Tensor scale, Tensor shift)");
  // Eval forward with the statistics folded into the weight and bias by the caller:
  // y = relu(conv_transpose2d(x, weight, bias)).
  m.def("conv_transpose_bias_relu(Tensor x, Tensor weight, Tensor bias, int[2] stride, "
        "int[2] padding, int[2] output_padding) -> Tensor");

  // The convolution's backward from grad, the gradient of z = conv_transpose2d(x, weight)
  // (bias-free; the caller sums grad for a bias): (grad_x in x's layout, grad_weight in weight's),
  // a gradient not asked for coming back empty ([0]). The convolutions take weights dense in either
  // layout: cuDNN runs channels-last, so a channels-last weight costs it no copy per call.
  m.def("conv_transpose_backward(Tensor grad, Tensor x, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] output_padding, bool need_x, bool need_weight) -> (Tensor, Tensor)");

  // The discriminator's direct convolution z = conv2d(x, weight) (weight [C_out, C_in, kH, kW], no
  // bias, groups 1, dilation 1), z in x's layout, and its backward as conv_transpose_backward's.
  m.def("conv2d(Tensor x, Tensor weight, int[2] stride, int[2] padding) -> Tensor");
  m.def("conv2d_backward(Tensor grad, Tensor x, Tensor weight, int[2] stride, int[2] padding, bool need_x, "
        "bool need_weight) -> (Tensor, Tensor)");

  // The blocks' training forward as one op, with its autograd in C++ (block_autograd.h; not a
  // kernel of its own): [to_layout], conv2d or conv_transpose, batch_stats_finalize (the running
  // statistics updated in place as it says: momentum -1 for None; none given, none updated),
  // bn_relu. y in the layout the Python op's path gives. gamma / beta are in the statistics' dtype
  // (float32; float64 for float64 x). The backward: bn_relu_backward, then the
  // convolution's backward; the conv bias gets a zero gradient (it cancels in the normalization).
  m.def("conv2d_bn_leaky_relu_train(Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, Tensor? beta, float eps, "
        "int[2] stride, int[2] padding, float negative_slope, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
        "Tensor(c!)? num_batches_tracked, float momentum) -> Tensor");
  m.def("conv_transpose_bn_relu_train(Tensor x, Tensor weight, Tensor? bias, Tensor? gamma, Tensor? beta, "
        "float eps, int[2] stride, int[2] padding, int[2] output_padding, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, float momentum) -> Tensor");

  // ---- SPEC 10: virtual batch normalization (Salimans et al. 2016). z [N, C, H, W] (NCHW or
  // channels-last), its first ref_size samples the reference batch R: R's samples are normalized with
  // R's statistics, current sample i with those of R united with sample i (each sample weighted
  // 1 / (ref_size + 1)); per-sample mean and M2 merged with Chan's formula, never E[z^2] - mean^2.
  // y = act(virtual_batch_norm(z)) with act(u) = u > 0 ? u : negative_slope * u (1: identity);
  // gamma / beta [C] in the statistics' dtype (float32; float64 for float64 z) or None.
  // mean / invstd: [N, C], what each sample was normalized with.
  m.def("vbn_forward(Tensor z, int ref_size, Tensor? gamma, Tensor? beta, float eps, float negative_slope) -> "
        "(Tensor y, Tensor mean, Tensor invstd)");
  // -> (grad_z in z's layout, grad_gamma [C], grad_beta [C]); the formulas are in
  // fastgan/ops/virtual_batch_norm.py. grad_y may come in either dense layout.
  m.def("vbn_backward(Tensor grad_y, Tensor z, Tensor mean, Tensor invstd, int ref_size, Tensor? gamma, "
        "Tensor? beta, float negative_slope) -> (Tensor grad_z, Tensor grad_gamma, Tensor grad_beta)");
  // ---- SPEC 2: minibatch discrimination. M is the projection x @ T as a contiguous [N, B, C];
  // distances, exponentials and sums are computed in float32 (float64 for float64 M), tile by
  // tile, never as an [N, N, B] tensor.
  // o[i, b] = sum_{j != i} exp(-sum_c |M[i, b, c] - M[j, b, c]|), the j == i term masked out
  // (include_self adds exactly 1.0, the term exp(0)); o is [N, B] in M's dtype.
  m.def("minibatch_discrimination(Tensor M, bool include_self) -> Tensor");
  // dM[i, b, c] = -sum_{j != i} (grad[i, b] + grad[j, b]) * exp(-D[i, j, b]) * sign(M[i, b, c] - M[j, b, c]),
  // sign(0) = 0; grad is a contiguous [N, B] of M's dtype; dM is [N, B, C].
  m.def("minibatch_discrimination_backward(Tensor grad, Tensor M) -> Tensor");
  // ---- SPEC 3: the fused epilogue of the equalized layers (StyleGAN's bias_act). The three
  // activations are one leaky ReLU: slope 1 is linear, 0 relu, alpha lrelu; gain > 0.
  // y = clamp(act(x * x_mul + bias[c] * b_mul) * gain, -clamp, clamp), c the index along `dim`
  // (bias undefined: none; clamp < 0: no clamp). Channels-last inputs are 4-D with dim == 1.
  m.def("bias_act(Tensor x, Tensor? bias, int dim, float slope, float gain, float x_mul, float b_mul, "
        "float clamp) -> Tensor");
  // grad_x = grad * x_mul * gain * (y > 0 ? 1 : slope) * (clamp < 0 || |y| < clamp), with y the
  // output of bias_act (same signs as its pre-activation since gain > 0 and slope >= 0). Linear in
  // grad and piecewise constant in y: its own backward is this op again.
  m.def("bias_act_backward(Tensor grad, Tensor y, float slope, float gain, float x_mul, float clamp) -> Tensor");
  // (grad_x, grad_bias) in one pass over grad and y: grad_x as bias_act_backward and grad_bias[c] =
  // b_scale * the sum of grad_x (as rounded to y's dtype) over all dims but `dim`, accumulated in
  // float32 (float64 for float64) and rounded once to y's dtype: the bias's gradient without a
  // second pass over grad_x. Channels-last inputs are 4-D with dim == 1.
  m.def("bias_act_backward_bias(Tensor grad, Tensor y, int dim, float slope, float gain, float x_mul, "
        "float b_scale, float clamp) -> (Tensor, Tensor)");
  // SPEC 3 + 4 (the ProGAN generator): y = pixel_norm(a), a = lrelu(x + bias[c], slope) * gain,
  // normalizing over dim 1 (bias: [C]); a is never stored.
  m.def("bias_act_pixel_norm(Tensor x, Tensor bias, float slope, float gain, float eps) -> Tensor");
  // grad_x = gain * (a > 0 ? 1 : slope) * (r * g - a * r^3 * sum_c(g * a) / C), a recomputed.
  m.def("bias_act_pixel_norm_backward(Tensor grad, Tensor x, Tensor bias, float slope, float gain, "
        "float eps) -> Tensor");
  // ---- SPEC 5-6: minibatch standard deviation and the discriminator-side fade-in.
  // SPEC 5: out = cat([x, f broadcast], dim 1) [N, C + F, H, W] in x's layout, x [N, C, H, W]
  // seen as [G, N/G, F, C/F, H, W] (strided groups: sample n in group n mod N/G; group_size is
  // G, already min(group_size, N), and divides N; F = num_channels divides C). Per feature
  // s = sqrt(mean_g((x - mean_g(x))^2) + 1e-8), two-pass, in float32 (float64 for float64);
  // f[m, j] = mean of s over channel group j and the pixels.
  m.def("minibatch_stddev(Tensor x, int group_size, int num_channels) -> Tensor");
  // grad_x = grad[:, :C] + A[m, j] * (x - mean_g(x)) / (G * s), A[m, j] = sum over the group's
  // samples and pixels of grad[:, C + j] / (C/F * H * W). grad is [N, C + F, H, W] like x.
  m.def("minibatch_stddev_backward(Tensor grad, Tensor x, int group_size, int num_channels) -> Tensor");
  // Its own backward (gradient penalties differentiate it): gg like x, the gradient of grad_x; with
  // d = x - mean_g(x), s and A as above, u = sum_g(gg * d) per feature,
  //   d_grad = cat([gg, t broadcast]) like grad, t[m, j] = sum over the group's samples, channel
  //            group j and pixels of gg * d / (G * s), / (C/F * H * W);
  //   d_x    = A / (G * s) * (gg - mean_g(gg) - u * d / (G * s^2)).
  // Only what need_grad / need_x ask for is computed (the other output is empty).
  m.def("minibatch_stddev_double_backward(Tensor gg, Tensor grad, Tensor x, int group_size, int num_channels, "
        "bool need_grad, bool need_x) -> (Tensor d_grad, Tensor d_x)");
  // SPEC 6, discriminator side: img [N, Ci, 2H, 2W], x_high [N, Co, H, W] (one layout),
  // weight [Co, Ci, 1, 1] and bias [Co] contiguous, all one dtype:
  // out = (1 - alpha) * lrelu(w_mul * W avg_pool_2x2(img) + b_mul * bias, slope) + alpha * x_high.
  m.def("fade_in_from_rgb(Tensor img, Tensor x_high, Tensor weight, Tensor bias, float alpha, float w_mul, "
        "float b_mul, float slope) -> Tensor");
  // With z recomputed and gz = (1 - alpha) * lrelu'(z) * grad: grad_img = up_2x(w_mul * W^T gz) / 4,
  // grad_x_high = alpha * grad, grad_weight = w_mul * sum gz p^T, grad_bias = b_mul * sum gz
  // (sums over N, H, W accumulated in float32, float64 for float64).
  m.def("fade_in_from_rgb_backward(Tensor grad, Tensor img, Tensor weight, Tensor bias, float alpha, "
        "float w_mul, float b_mul, float slope) -> (Tensor grad_img, Tensor grad_x_high, Tensor grad_weight, "
        "Tensor grad_bias)");
  // The gradient penalty's terms of the backward's own derivatives, for an incoming gradient gg_img
  // of grad_img (fastgan/ops/fade_in_from_rgb.py has them all), with q = avg_pool_2x2(gg_img) and
  // m = lrelu'(z): d_grad = (1 - alpha) * m * w_mul * W q (grad's shape and layout), and
  // d_weight = (1 - alpha) * w_mul * sum m * grad * q^T (weight's shape; sums as the backward's).
  // Each only when asked for (else an empty [0]); grad is read only for d_weight.
  m.def("fade_in_from_rgb_double_backward(Tensor grad, Tensor img, Tensor gg_img, Tensor weight, Tensor bias, "
        "float alpha, float w_mul, float b_mul, float slope, bool need_grad, bool need_weight) -> "
        "(Tensor d_grad, Tensor d_weight)");
}

}  // namespace fastgan
