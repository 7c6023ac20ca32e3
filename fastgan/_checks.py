"""Argument validation shared by the ops: every error names the argument."""

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(t, name, ndim=None, min_ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastgan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastgan: {name} must be a floating tensor "
                        f"(float16, bfloat16, float32 or float64), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"fastgan: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"fastgan: {name} must have at least {min_ndim} dimensions, "
                         f"got shape {tuple(t.shape)}")


def check_device(t, name, ref, ref_name):
    if t.device != ref.device:
        raise ValueError(f"fastgan: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_same(t, name, ref, ref_name):
    check_device(t, name, ref, ref_name)
    if t.dtype != ref.dtype:
        raise TypeError(f"fastgan: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")


def check_alpha(alpha):
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"fastgan: alpha must be a number, got a tensor of shape {tuple(alpha.shape)}")
        alpha = alpha.item()
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"fastgan: alpha must be in [0, 1], got {alpha}")
    return alpha


def check_eps(eps):
    eps = float(eps)
    if not eps > 0.0:
        raise ValueError(f"fastgan: eps must be positive, got {eps}")
    return eps


def memory_format(t):
    """The layout the kernels compute in: channels-last when the input is, else contiguous."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def as_layout(t, fmt):
    """`t` dense in layout `fmt` (a no-op when it already is)."""
    return t.contiguous(memory_format=fmt)


def empty(shape, like, fmt):
    """An uninitialized tensor of `shape` with `like`'s dtype and device, in layout `fmt`."""
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)
