"""Autotuning on the real arguments, as on a GPU.

The first call of each key makes triton's Autotuner run every config on the call's own tensors
(many times each), then the winner once more. A kernel that writes one of its inputs, or leaves
a buffer that another config fills differently, is then wrong on the first call of each shape
on a GPU, and the interpreter never sees it: it runs one small config (`_common.autotune`).

Here every autotuned kernel (`_common.AUTOTUNED`) is given its GPU configs and triton's own
`Autotuner.run` decides as it does on a GPU (pre/post hooks, reset_to_zero, restore_value, the
final launch): only the timing is faked. Each config runs on the same buffers in turn,
config `winner` (modulo the kernel's config count) is made the fastest, and the public ops'
results are compared with impl="reference" in float64. Every autotuned kernel must be launched
by some case, so a new kernel cannot go untested.
"""

import contextlib
import itertools

import pytest
import torch

pytest.importorskip("triton")

import fastgan  # noqa: E402
from fastgan.triton_kernels import _common, batch_stats  # noqa: E402
from helpers import assert_close, check_forward_backward, randn  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)
F64 = torch.float64  # float64 throughout: the ops' kinks (ReLU, leaky ReLU) are never within rounding of an input
# do_bench runs each config many times; once is enough to leave what the next config (or the final launch)
# would trip on, and the interpreter is slow.
BENCH_RUNS = 1
MAX_CONFIGS = max(len(t.gpu_configs) for t in _common.AUTOTUNED)


def _label(tuner):
    fn = tuner.base_fn
    same = [t for t in _common.AUTOTUNED if t.base_fn is fn]
    return f"{fn.__module__}.{fn.__name__}[{same.index(tuner)}]"


@contextlib.contextmanager
def gpu_autotuning(winner):
    """Every autotuned kernel tunes over its GPU configs on its next call of each key, through
    `Autotuner.run`, with a fake `do_bench` that runs the config BENCH_RUNS times and times config
    `winner % len(configs)` fastest. Yields {autotuner: launches}."""
    if not hasattr(Autotuner, "do_bench"):
        pytest.skip("this triton's Autotuner has no do_bench to fake (triton 3.0 to 3.8 benchmark through it)")
    launches = {}
    saved = [(tuner, tuner.configs) for tuner in _common.AUTOTUNED]
    try:
        for tuner in _common.AUTOTUNED:
            _tune_gpu_configs(tuner, tuner.gpu_configs[winner % len(tuner.gpu_configs)], launches)
        yield launches
    finally:
        for tuner, configs in saved:
            tuner.configs = configs
            tuner.cache.clear()
            tuner.__dict__.pop("do_bench", None)  # a cached_property in triton: the real one comes back
            tuner.__dict__.pop("run", None)


def _tune_gpu_configs(tuner, best, launches):
    configs = list(tuner.gpu_configs)
    calls = itertools.count()

    def do_bench(kernel_call, quantiles):
        # Autotuner.run benchmarks its configs in order, all of them at each new key.
        config = configs[next(calls) % len(configs)]
        for _ in range(BENCH_RUNS):
            kernel_call()
        ms = 0.0 if config is best else 1.0
        return [ms] * len(quantiles)

    run = tuner.run

    def counted_run(*args, **kwargs):
        out = run(*args, **kwargs)
        launches[tuner] = launches.get(tuner, 0) + 1
        assert tuner.best_config is best, f"{_label(tuner)} ran {tuner.best_config}, expected {best}"
        return out

    tuner.configs = configs
    tuner.cache.clear()
    tuner.do_bench = do_bench
    tuner.run = counted_run


# ---------------------------------------------------------------------------
# Cases: the public ops (and batch_stats's NCHW path, which no op takes), forward and backward,
# in both layouts where the kernels have two. Shapes are small but span several tiles of the
# GPU configs, with partial tiles.

LAYOUTS = ("contiguous", "channels_last")


def _first_call(op):
    """`op` whose triton calls are the first of their shapes: every kernel they launch benchmarks
    (kernels share keys across layouts and across an op's paths, e.g. bn_relu and bn_relu_)."""

    def call(*args, impl):
        if impl == "triton":
            for tuner in _common.AUTOTUNED:
                tuner.cache.clear()
        return op(*args, impl=impl)

    return call


def _check(op, *inputs):
    """op(*inputs, impl="triton") and its input gradients against impl="reference" (float64)."""
    op = _first_call(op)
    check_forward_backward(op, lambda *a: op(*a, impl="reference"), list(inputs), "triton", F64)


def _check_no_grad(op, *inputs):
    """Without gradients (the in-place paths)."""
    op = _first_call(op)
    with torch.no_grad():
        assert_close(op(*inputs, impl="triton"), op(*inputs, impl="reference"), F64)


def _x(shape, layout="contiguous"):
    return randn(shape, layout, F64, DEVICE)


def _pixel_norm(layout):
    _check(lambda x, impl: fastgan.ops.pixel_norm(x, impl=impl), _x((2, 20, 10, 14), layout))


def _bias_act_pixel_norm(layout):
    _check(lambda x, b, impl: fastgan.ops.bias_act_pixel_norm(x, b, impl=impl),
           _x((2, 20, 10, 14), layout), _x((20,)))


def _bias_act(layout):
    _check(lambda x, b, impl: fastgan.ops.bias_act(x, b, act="lrelu", impl=impl), _x((2, 20, 10, 14), layout),
           _x((20,)))


def _fade_in(layout):
    _check(lambda low, high, impl: fastgan.ops.fade_in(low, high, 0.3, impl=impl),
           _x((2, 4, 6, 36), layout), _x((2, 4, 12, 72), layout))


def _blend_reals(layout):
    _check(lambda x, impl: fastgan.ops.blend_reals(x, 0.3, impl=impl), _x((2, 4, 12, 72), layout))


def _minibatch_stddev(layout):
    # K = C * H * W = 1152 values per group: several blocks of either config.
    _check(lambda x, impl: fastgan.ops.minibatch_stddev(x, group_size=4, impl=impl), _x((8, 8, 12, 12), layout))


def _minibatch_stddev_penalty(layout):
    """A gradient penalty's second backward: the double-backward kernel, against the reference's."""
    x, w = _x((8, 8, 12, 12), layout), _x((8, 9, 12, 12), layout)

    def penalty_grad(impl):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad((fastgan.ops.minibatch_stddev(xi, group_size=4, impl=impl) * w).sum(), xi,
                                   create_graph=True)
        return torch.autograd.grad(g.square().sum(), xi)[0]

    assert_close(_first_call(lambda impl: penalty_grad(impl))(impl="triton"), penalty_grad("reference"), F64)


def _fade_in_from_rgb(layout):
    _check(lambda img, xh, w, b, impl: fastgan.ops.fade_in_from_rgb(img, xh, w, b, 0.3, impl=impl),
           _x((2, 3, 8, 12), layout), _x((2, 20, 4, 6), layout), _x((20, 3, 1, 1)), _x((20,)))


def _minibatch_discrimination(_):
    _check(lambda x, t, b, impl: fastgan.ops.minibatch_discrimination(x, t, b, impl=impl),
           _x((34, 12)), _x((12, 3, 5)), _x((3,)))


# Generator block: 6x6 inputs give channels-last z (the batch-norm kernels' channels-last path),
# 1x1 inputs NCHW z. C_out = 70 spans two 64-channel GEMM tiles.
_CT_INPUTS = {"channels_last": (2, 20, 4, 4), "contiguous": (2, 20, 1, 1)}
_CT_ARGS = {"channels_last": dict(stride=2, padding=1), "contiguous": dict(stride=1, padding=0)}


def _conv_transpose_train(layout):
    def op(x, w, gamma, beta, impl):
        return fastgan.ops.conv_transpose_bn_relu(x, w, None, gamma, beta, None, None, True, impl=impl,
                                                  **_CT_ARGS[layout])

    inputs = (_x(_CT_INPUTS[layout]), _x((20, 70, 4, 4)), _x((70,)), _x((70,)))
    _check(op, *inputs)  # out of place, and the backward
    _check_no_grad(op, *inputs)  # bn_relu_ in place over z


def _conv_transpose_eval(layout):
    # With gradients: folded (the GEMM's bias + ReLU epilogue). Without: z is normalized in place with
    # the running statistics (bn_relu_).
    running_mean, running_var = _x((70,)), _x((70,)).abs() + 0.5

    def op(x, w, b, gamma, beta, impl):
        return fastgan.ops.conv_transpose_bn_relu(x, w, b, gamma, beta, running_mean, running_var, False,
                                                  impl=impl, **_CT_ARGS[layout])

    inputs = (_x(_CT_INPUTS[layout]), _x((20, 70, 4, 4)), _x((70,)), _x((70,)), _x((70,)))
    _check(op, *inputs)
    _check_no_grad(op, *inputs)


def _conv_transpose_fp32(layout):
    # Exact float32 products (TF32 off) take the other GEMM kernel (one config: it reaches the
    # autotuner, which does not benchmark a single config).
    allow_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        running_mean, running_var = _x((70,)), _x((70,)).abs() + 0.5
        _check_no_grad(lambda x, w, impl: fastgan.ops.conv_transpose_bn_relu(
            x, w, None, None, None, running_mean, running_var, False, impl=impl, **_CT_ARGS[layout]),
            _x(_CT_INPUTS[layout]), _x((20, 70, 4, 4)))
    finally:
        torch.backends.cudnn.allow_tf32 = allow_tf32


def _conv2d_block(layout):
    def op(x, w, gamma, beta, impl):
        return fastgan.ops.conv2d_bn_leaky_relu(x, w, None, gamma, beta, None, None, True, stride=2, padding=1,
                                                impl=impl)

    _check(op, _x((2, 8, 12, 12), layout), _x((70, 8, 4, 4)), _x((70,)), _x((70,)))


def _virtual_batch_norm(layout):
    # 40 channels and 6x6 pixels: several row tiles of each config, with partial ones.
    _check(lambda z, g, b, impl: fastgan.ops.virtual_batch_norm(z, 3, g, b, negative_slope=0.2, impl=impl),
           _x((5, 40, 6, 6), layout), _x((40,)).abs() + 0.5, _x((40,)))


def _batch_stats(layout):
    # NCHW: conv2d_bn_leaky_relu's z is channels-last, so no op reaches this path.
    z = _x((2, 40, 6, 6), layout)
    var, mean = torch.var_mean(z, (0, 2, 3), correction=0)
    got_mean, got_var = _first_call(lambda z, impl: batch_stats(z))(z, impl="triton")
    assert_close(got_mean, mean)
    assert_close(got_var, var)


CASES = {f"{fn.__name__[1:]}-{layout}": (fn, layout) for fn in (
    _pixel_norm, _bias_act_pixel_norm, _bias_act, _fade_in, _blend_reals, _minibatch_stddev,
    _minibatch_stddev_penalty, _fade_in_from_rgb,
    _conv_transpose_train, _conv_transpose_eval, _virtual_batch_norm) for layout in LAYOUTS}
CASES.update({"minibatch_discrimination": (_minibatch_discrimination, None),
              "conv_transpose_fp32": (_conv_transpose_fp32, "channels_last"),
              "conv2d_bn_leaky_relu": (_conv2d_block, "channels_last"),  # z is channels-last either way
              "batch_stats-contiguous": (_batch_stats, "contiguous")})


@pytest.mark.parametrize("winner", range(MAX_CONFIGS))
def test_every_config_on_the_same_buffers(winner, subtests):
    with gpu_autotuning(winner) as launches:
        for name, (case, layout) in CASES.items():
            with subtests.test(case=name):
                case(layout)
    missed = [_label(t) for t in _common.AUTOTUNED if t not in launches]
    assert not missed, f"autotuned kernels no case launched: {missed}"
