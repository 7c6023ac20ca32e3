"""A whole training step captured once in a CUDA graph and replayed (`graphed`).

At batch 64 a DCGAN step is host-bound on an H200: eager PyTorch and fastgan alike spend more time
issuing ~350-600 kernels than the GPU spends running them. A CUDA graph issues them all in one
launch. What a step must do to be captured (torch.cuda.graphs): no host syncs (the steps'
`item=False`: losses stay tensors), optimizers with `capturable=True` (their step counts on the
device), inputs read from tensors that stay put (copy each new batch into them), and nothing that
changes between steps baked in as a Python value (ProGAN's alpha while fading in is one: capture a
graph per alpha, or train the fade-in eagerly). fastgan's ops qualify: no host syncs (BatchNorm's
cumulative average reads num_batches_tracked on the device), and their Triton kernels are tuned
during the warm-up steps, before capture.
"""

import torch


def graphed(step, warmup=3):
    """`step` (no arguments, returns tensors) run `warmup` times on a side stream (real training
    steps: they tune kernels and allocate the optimizers' state), then captured; returns a function
    that replays the capture and returns the captured outputs (overwritten by each replay)."""
    if not torch.cuda.is_available():
        raise RuntimeError("fastgan: graphed() captures CUDA graphs and needs a CUDA device")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()

    def replay():
        graph.replay()
        return outputs

    replay.graph = graph
    return replay
