"""Independent ProGAN and DCGAN in plain PyTorch, the oracles of tests/test_models.py.

Written from the papers' definitions (Karras et al. 2018 and its official code, networks.py G_paper /
D_paper; Radford et al. 2015 as the PyTorch DCGAN example) with torch and torch.nn.functional only:
nothing from fastgan. Each network is a function of a dict of parameters named as in the official
code ("8x8/Conv0/weight", ...); `progan_params` / `dcgan_params` map a fastgan state_dict onto those
names. Every pre-activation goes to `kinks` (when given) so that a test can check its inputs stay off
the ReLU / leaky ReLU kink, where float32 rounding could pick the other branch of the derivative.

fastgan's architecture choices that differ from the official code, followed here on purpose so that
fastgan's parameters load (each is marked "fastgan:" below):
- the generator's 4x4 dense layer has one bias per output element (nf * 16), not one per channel;
- the discriminator's Dense0 has nf(4x4) outputs, where the official code has nf(0) (equal once
  fmap_max caps both, as in every official configuration);
- the feature-map counts: the networks here take their sizes from the loaded parameters; `progan_channels`
  is the paper's nf(), which fastgan's `channels` halves (reported; tests/test_models.py checks it).
"""

import math

import torch
import torch.nn.functional as F

SLOPE = 0.2        # leaky ReLU
PN_EPS = 1e-8      # pixel norm
MBSTD_EPS = 1e-8   # minibatch stddev
MBSTD_GROUP = 4


def progan_channels(resolution, fmap_base, fmap_max):
    """The paper's nf(log2(res) - 1) = min(fmap_base / 2^(log2(res) - 1), fmap_max), the feature maps at a
    resolution (official code: G_paper / D_paper's nf). fastgan's `channels` is min(fmap_base / res, fmap_max)."""
    return min(int(fmap_base / 2 ** (int(math.log2(resolution)) - 1)), fmap_max)


def _scale(w, gain, lr_mul):
    """Equalized learning rate: the stored N(0, 1) / lr_mul weight times gain / sqrt(fan_in) * lr_mul."""
    return w * (gain / math.sqrt(w[0].numel()) * lr_mul)


def _lrelu(z, kinks):
    if kinks is not None:
        kinks.append(z.detach())
    return F.leaky_relu(z, SLOPE)


def _pixel_norm(x):
    return x / torch.sqrt(x.square().mean(dim=1, keepdim=True) + PN_EPS)


def _upsample(x):
    """Nearest 2x: each pixel repeated into a 2x2 block."""
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _conv(p, name, x, gain=math.sqrt(2), lr_mul=1.0, padding=0):
    w, b = p[f"{name}/weight"], p[f"{name}/bias"]
    return F.conv2d(x, _scale(w, gain, lr_mul), b * lr_mul, padding=padding)


def _dense(p, name, x, gain=math.sqrt(2), lr_mul=1.0):
    w, b = p[f"{name}/weight"], p[f"{name}/bias"]
    return F.linear(x, _scale(w, gain, lr_mul), b * lr_mul)


def _res(level):
    r = 4 * 2 ** level
    return f"{r}x{r}"


def progan_generator(p, z, level, alpha, lr_mul=1.0, kinks=None):
    """G_paper: normalized latent -> dense (gain sqrt(2) / 4) -> 4x4, then per level nearest 2x up and two
    3x3 convs, every conv followed by bias, leaky ReLU and pixel norm; ToRGB 1x1 (gain 1, linear);
    while a level fades in, (1 - alpha) * up(ToRGB_prev(prev)) + alpha * ToRGB(x)."""
    act = lambda v: _pixel_norm(_lrelu(v, kinks))  # noqa: E731
    x = _pixel_norm(z)
    x = _lrelu(_dense(p, "4x4/Dense", x, math.sqrt(2) / 4, lr_mul), kinks)  # fastgan: a bias per element
    x = _pixel_norm(x.view(z.shape[0], -1, 4, 4))
    x = act(_conv(p, "4x4/Conv", x, lr_mul=lr_mul, padding=1))
    prev = None
    for i in range(1, level + 1):
        prev = x
        x = _upsample(x)
        x = act(_conv(p, f"{_res(i)}/Conv0", x, lr_mul=lr_mul, padding=1))
        x = act(_conv(p, f"{_res(i)}/Conv1", x, lr_mul=lr_mul, padding=1))
    rgb = _conv(p, f"ToRGB_{_res(level)}", x, 1.0, lr_mul)
    if level > 0 and alpha < 1:
        low = _upsample(_conv(p, f"ToRGB_{_res(level - 1)}", prev, 1.0, lr_mul))
        rgb = (1 - alpha) * low + alpha * rgb
    return rgb


def _minibatch_stddev(x):
    """One feature map per sample: the mean over (C, H, W) of the standard deviation (biased, + eps
    under the root) over the sample's group; groups are strided, sample n in group n mod (N / G)."""
    n = x.shape[0]
    groups = n // min(MBSTD_GROUP, n)
    stat = []
    for m in range(groups):
        members = x[m::groups]
        std = torch.sqrt(members.var(dim=0, unbiased=False) + MBSTD_EPS)
        stat.append(std.mean())
    s = torch.stack(stat)[torch.arange(n) % groups]
    return torch.cat([x, s.view(n, 1, 1, 1).expand(n, 1, *x.shape[2:])], dim=1)


def progan_discriminator(p, img, level, alpha, lr_mul=1.0, kinks=None):
    """D_paper: FromRGB 1x1 + leaky ReLU, then per level two 3x3 convs + leaky ReLU and 2x2 average pooling,
    the first of them blended with FromRGB_prev(pool(img)) while it fades in; at 4x4 the minibatch stddev
    map, a 3x3 conv, Dense0 and Dense1 (gain 1, linear) -> one score per sample."""
    act = lambda v: _lrelu(v, kinks)  # noqa: E731
    x = act(_conv(p, f"FromRGB_{_res(level)}", img, lr_mul=lr_mul))
    for i in range(level, 0, -1):
        x = act(_conv(p, f"{_res(i)}/Conv0", x, lr_mul=lr_mul, padding=1))
        x = act(_conv(p, f"{_res(i)}/Conv1", x, lr_mul=lr_mul, padding=1))
        x = F.avg_pool2d(x, 2)
        if i == level and alpha < 1:
            low = act(_conv(p, f"FromRGB_{_res(level - 1)}", F.avg_pool2d(img, 2), lr_mul=lr_mul))
            x = (1 - alpha) * low + alpha * x
    x = act(_conv(p, "4x4/Conv", _minibatch_stddev(x), lr_mul=lr_mul, padding=1))
    x = act(_dense(p, "4x4/Dense0", x.flatten(1), lr_mul=lr_mul))
    return _dense(p, "4x4/Dense1", x, 1.0, lr_mul)[:, 0]


def progan_params(state, kind, levels):
    """{official name: tensor} from a fastgan ProGANGenerator ("G") or ProGANDiscriminator ("D") state_dict."""
    names = {}
    if kind == "G":
        names["dense"] = "4x4/Dense"
        names["blocks.0.0.conv"] = "4x4/Conv"
        for i in range(1, levels):
            names[f"blocks.{i}.0.conv"], names[f"blocks.{i}.1.conv"] = f"{_res(i)}/Conv0", f"{_res(i)}/Conv1"
        for i in range(levels):
            names[f"to_rgb.{i}"] = f"ToRGB_{_res(i)}"
    else:
        for i in range(levels):
            names[f"from_rgb.{i}"] = f"FromRGB_{_res(i)}"
        for i in range(1, levels):
            names[f"blocks.{i}.0"], names[f"blocks.{i}.1"] = f"{_res(i)}/Conv0", f"{_res(i)}/Conv1"
        names.update({"conv": "4x4/Conv", "dense": "4x4/Dense0", "out": "4x4/Dense1"})
    out = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        out[f"{names[module]}/{tensor}"] = value
    assert len(out) == 2 * len(names), sorted(state)
    return out


def _batch_norm_act(p, name, x, act, kinks, bn_state):
    """Training-mode batch norm (biased variance in the normalization) and the activation; the running
    statistics update (unbiased variance, momentum 0.1) goes to bn_state."""
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    n = x.numel() // x.shape[1]
    if bn_state is not None:
        bn_state[f"{name}/running_mean"] = 0.9 * p[f"{name}/running_mean"] + 0.1 * mean.detach()
        bn_state[f"{name}/running_var"] = 0.9 * p[f"{name}/running_var"] + 0.1 * var.detach() * n / (n - 1)
    shape = (1, -1, 1, 1)
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5) * p[f"{name}/weight"].view(shape)
    y = y + p[f"{name}/bias"].view(shape)
    if kinks is not None:
        kinks.append(y.detach())
    return act(y)


def dcgan_generator(p, z, kinks=None, bn_state=None):
    """The PyTorch DCGAN example's generator in training mode: ConvT(4, 1, 0) from 1x1, three ConvT(4, 2, 1),
    each + BatchNorm + ReLU, then ConvT(4, 2, 1) + Tanh; no conv bias."""
    x = z.view(z.shape[0], -1, 1, 1)
    for i in range(4):
        stride, padding = (1, 0) if i == 0 else (2, 1)
        x = F.conv_transpose2d(x, p[f"G{i}/weight"], None, stride, padding)
        x = _batch_norm_act(p, f"G{i}/BN", x, F.relu, kinks, bn_state)
    return torch.tanh(F.conv_transpose2d(x, p["G4/weight"], None, 2, 1))


def _minibatch_discrimination(x, T, bias):
    """Salimans et al. 2016 (official code: the sample itself excluded): o[i, b] = bias[b] +
    sum_{j != i} exp(-||M[i, b] - M[j, b]||_1), M = x T; returns cat([x, o])."""
    n = x.shape[0]
    m = (x @ T.flatten(1)).view(n, T.shape[1], T.shape[2])
    o = []
    for i in range(n):
        others = torch.cat([m[:i], m[i + 1:]])
        o.append(torch.exp(-(m[i] - others).abs().sum(dim=2)).sum(dim=0))
    return torch.cat([x, torch.stack(o) + bias], dim=1)


def dcgan_discriminator(p, img, minibatch=False, kinks=None, bn_state=None):
    """The PyTorch DCGAN example's discriminator in training mode: Conv(4, 2, 1) + LeakyReLU(0.2), three
    Conv(4, 2, 1) + BatchNorm + LeakyReLU(0.2), then Conv(512 -> 1, 4, 1, 0); with minibatch
    discrimination, the flattened features + the B distance features -> Linear(-> 1) instead."""
    act = lambda v: _lrelu(v, kinks)  # noqa: E731
    x = act(F.conv2d(img, p["D0/weight"], None, 2, 1))
    for i in range(1, 4):
        x = _batch_norm_act(p, f"D{i}/BN", F.conv2d(x, p[f"D{i}/weight"], None, 2, 1), act, None, bn_state)
    if minibatch:
        h = _minibatch_discrimination(x.flatten(1), p["Minibatch/T"], p["Minibatch/bias"])
        return F.linear(h, p["Head/weight"], p["Head/bias"]).flatten()
    return F.conv2d(x, p["D4/weight"]).flatten()


def dcgan_params(state, kind):
    """{name: tensor} from a fastgan DCGANGenerator ("G") / DCGANDiscriminator ("D") state_dict (the PyTorch
    example's nn.Sequential indices: conv i at main.{3 i} (G) / main.{3 i - 1} (D), its BatchNorm right after)."""
    names = {}
    if kind == "G":
        for i in range(5):
            names[f"main.{3 * i}"] = f"G{i}"
            names[f"main.{3 * i + 1}"] = f"G{i}/BN"
    else:
        names["main.0"] = "D0"
        for i in range(1, 5):
            names[f"main.{3 * i - 1}"] = f"D{i}"
            names[f"main.{3 * i}"] = f"D{i}/BN"
        names.update({"minibatch": "Minibatch", "head": "Head"})
    out = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        if tensor == "num_batches_tracked":
            continue
        out[f"{names[module]}/{'T' if module == 'minibatch' and tensor == 'weight' else tensor}"] = value
    return out
