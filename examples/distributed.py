"""What the training examples need to run under torchrun (issue 17): the process group, each rank's
device and share of the data (DistributedSampler, resumable), and rank-0-only output.

    torchrun --nproc_per_node=2 examples/train_dcgan.py           # gloo on the CPU
    torchrun --nproc_per_node=8 examples/train_dcgan.py --device cuda   # NCCL, one GPU per process

Outside torchrun (no WORLD_SIZE in the environment) everything is a single process.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class Run:
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def main(self):
        """The rank that logs, samples and writes checkpoints."""
        return self.rank == 0


def world_size():
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device):
    """Joins torchrun's process group (NCCL for CUDA, gloo on the CPU); returns the Run and this
    rank's device (cuda:<LOCAL_RANK> for a CUDA --device)."""
    if world_size() == 1:
        return Run(), device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Run(dist.get_rank(), dist.get_world_size()), device


def stop(run):
    if run.distributed:
        dist.destroy_process_group()


class Batches:
    """This rank's batches of `data` (a tensor of samples): a DistributedSampler's share of each
    epoch, reshuffled per epoch, `batch` samples a step, the last partial batch dropped. Resumable:
    `at(step)` starts where step `step` of the same run would have been."""

    def __init__(self, data, batch, run, seed):
        self.data, self.batch = data, batch
        self.sampler = DistributedSampler(range(len(data)), run.world_size, run.rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.per_epoch = len(self.sampler) // batch
        if self.per_epoch == 0:
            raise ValueError(f"--batch {batch} is larger than a rank's share of the data set ({len(self.sampler)})")

    def at(self, step):
        epoch, skip = divmod(step, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = torch.tensor(list(self.sampler))
            for i in range(skip, self.per_epoch):
                yield self.data[order[i * self.batch:(i + 1) * self.batch]]
            epoch, skip = epoch + 1, 0


def mean_over_ranks(run, device, *values):
    """The floats averaged over the ranks (one all-reduce, on `device`: NCCL's are CUDA tensors): what
    rank 0 logs."""
    if not run.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float32, device=device)
    dist.all_reduce(t)
    return tuple((t / run.world_size).tolist())
