"""Minibatch discrimination (Salimans et al. 2016), SPEC 2."""

import torch

from .. import ops


class MinibatchDiscrimination(torch.nn.Module):
    """out = cat([x_flat, o], 1) with o[i, b] = sum_{j != i} exp(-||M[i, b] - M[j, b]||_1) + bias[b],
    M = x_flat @ weight.view(in_features, num_kernels * kernel_dim): [N, in_features + num_kernels].

    x is [N, ...] with in_features values per sample (flattened). include_self=True adds the
    sample's own term exp(0) = 1, as the paper's formula; the official code leaves it out.
    Initialized as the official code (improved-gan's MinibatchLayer): weight ~ N(0, 0.05^2)
    (its `Normal(0.05)`, without that code's weight normalization), bias = -1.
    global_batch=True: o compares each sample with every sample of every process of a
    torch.distributed run (the default group), so it does not depend on how the batch is split.
    """

    def __init__(self, in_features, num_kernels=100, kernel_dim=5, bias=True, include_self=False, impl=None,
                 global_batch=False):
        super().__init__()
        self.in_features, self.num_kernels, self.kernel_dim = in_features, num_kernels, kernel_dim
        self.include_self, self.global_batch = include_self, global_batch
        self.impl = impl
        self.weight = torch.nn.Parameter(torch.empty(in_features, num_kernels, kernel_dim))
        self.bias = torch.nn.Parameter(torch.empty(num_kernels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.normal_(self.weight, 0.0, 0.05)
        if self.bias is not None:
            torch.nn.init.constant_(self.bias, -1.0)

    def forward(self, x):
        return ops.minibatch_discrimination(x, self.weight, self.bias, self.include_self, impl=self.impl,
                                            global_batch=self.global_batch)

    def extra_repr(self):
        return (f"in_features={self.in_features}, num_kernels={self.num_kernels}, kernel_dim={self.kernel_dim}, "
                f"bias={self.bias is not None}, include_self={self.include_self}"
                + (", global_batch=True" if self.global_batch else ""))
