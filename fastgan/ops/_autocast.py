"""torch.autocast for the fused ops: the casts autocast would make in the eager code an op replaces.

Autocast runs convolutions and matrix products in its lower-precision dtype (their inputs, weights
and biases cast), and everything else in the dtypes it is given. A fused op that contains a
convolution or a matrix product casts the same operands with `lower` before its checks; its other
inputs (batch-norm parameters and statistics) it leaves alone, as eager does.
"""

import torch


def lower(device_type, *tensors):
    """`tensors` as torch.autocast on `device_type` hands them to a convolution or matrix product:
    float32 ones cast to the autocast dtype (differentiably: float32 parameters get float32
    gradients), the others (None, float64, already lower) unchanged. All unchanged outside autocast."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.dtype == torch.float32 else t for t in tensors)
