"""Train the DCGAN of SPEC 7 on fastgan, on a CPU, in minutes, with no download.

The data set is procedural (examples/datasets.py: 64x64 images of disks and squares): nothing to
fetch, and shapes and colours a small GAN learns quickly. The generator's ConvTranspose2d ->
BatchNorm2d -> ReLU blocks run fused (fastgan.fuse); everything else is the PyTorch example.
Writes to --out: samples_<step>.png (a fixed-noise grid every --sample-every steps), losses.png
and checkpoint.pt (every --checkpoint-every steps and at the end; --resume goes on from it).

    python examples/train_dcgan.py                     # 400 steps, batch 64, width 32
    python examples/train_dcgan.py --resume --steps 800
    python examples/train_dcgan.py --eager             # the same model without fastgan
    python examples/train_dcgan.py --device cuda --cuda-graphs  # each step replayed as one CUDA graph
    torchrun --nproc_per_node=2 examples/train_dcgan.py  # 2 processes (gloo), --batch samples each

Under torchrun (examples/distributed.py) each process trains on its DistributedSampler share with
--batch samples a step; the networks are DistributedDataParallel with their BatchNorm layers as
SyncBatchNorm, fused (fastgan.distributed: statistics over the global batch; --local-bn keeps
per-process statistics); rank 0 logs, samples and writes checkpoints, which load into one process.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402
import distributed  # noqa: E402
import images  # noqa: E402
import runtime  # noqa: E402

from fastgan.distributed import data_parallel, unwrapped  # noqa: E402
from fastgan.fusion import fuse  # noqa: E402
from fastgan.models import DCGANDiscriminator, DCGANGenerator, dcgan_optimizers, dcgan_step  # noqa: E402
from fastgan.models.amp import AMP_DTYPES  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="total training steps (default %(default)s)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=32, help="ngf = ndf (64 in the paper; 32 is 4x cheaper)")
    p.add_argument("--dataset-size", type=int, default=4096)
    p.add_argument("--impl", default=None, help="fastgan backend (default: by device)")
    p.add_argument("--eager", action="store_true", help="plain PyTorch modules, nothing fused")
    runtime.add_arguments(p, "capture the training step once and replay it (a GPU; the capture's 3 warm-up "
                             "steps train on the first batch)")
    p.add_argument("--sample-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("runs/dcgan"))
    p.add_argument("--resume", action="store_true", help="go on from --out/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local-bn", action="store_true",
                   help="under torchrun: batch statistics per process instead of SyncBatchNorm's global ones")
    args = p.parse_args(argv)
    runtime.check_arguments(p, args)
    if distributed.world_size() > 1:
        if args.cuda_graphs:
            p.error("--cuda-graphs does not run under torchrun (DDP's collectives are not captured here)")
        if args.eager and not args.local_bn and not args.device.startswith("cuda"):
            p.error("--eager on the CPU under torchrun needs --local-bn: torch's SyncBatchNorm runs on GPUs only")
    return args


def networks(args, run):
    """(G, D) on the device: fused unless --eager; under torchrun with SyncBatchNorm (unless
    --local-bn) and wrapped in DistributedDataParallel."""
    fused = not args.eager
    gen = DCGANGenerator(nz=100, ngf=args.width, nc=3, fused=fused and not run.distributed, impl=args.impl)
    disc = DCGANDiscriminator(ndf=args.width, nc=3, fused=fused and not run.distributed, impl=args.impl)
    if not run.distributed:
        return runtime.placed(gen, args, fused), runtime.placed(disc, args, fused)
    nets = []
    for net in (gen, disc):
        if not args.local_bn:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        if fused:
            fuse(net, impl=args.impl)
        nets.append(runtime.placed(net, args, fused))
    return tuple(nets)


def step_runner(args, gen, disc, opt_g, opt_d, first_batch):
    """real -> (loss_d, loss_g): dcgan_step (under --amp), or its capture replayed (--cuda-graphs)."""
    amp = AMP_DTYPES[args.amp]
    if args.cuda_graphs:
        return runtime.replayed(lambda real: dcgan_step(gen, disc, opt_g, opt_d, real, item=False, amp=amp),
                                first_batch)
    scaler = runtime.scaler_for(args)
    return lambda real: dcgan_step(gen, disc, opt_g, opt_d, real, amp=amp, scaler=scaler)


def main(argv=None):
    args = parse_args(argv)
    run, args.device = distributed.start(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)  # the same initial networks on every rank (DDP also broadcasts rank 0's)
    data = datasets.shapes(args.dataset_size, 64, seed=args.seed)
    gen, disc = networks(args, run)
    fixed_z = torch.randn(64, 100, 1, 1, generator=torch.Generator().manual_seed(1234)).to(args.device)
    step, history = 0, {"D": [], "G": []}

    ckpt = args.out / "checkpoint.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=args.device)
        gen.load_state_dict(state["G"])
        disc.load_state_dict(state["D"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["rng"])
        if run.main:
            print(f"resumed from {ckpt} at step {step}")
    if run.distributed:  # after loading: the checkpoint has the single-process keys
        gen, disc = data_parallel(gen, args.device), data_parallel(disc, args.device)
        torch.manual_seed(args.seed + 1000 * (run.rank + 1) + step)  # each rank its own noise, also on resume
    opt_g, opt_d = dcgan_optimizers(gen, disc, capturable=args.cuda_graphs)
    if args.resume and ckpt.exists():
        opt_g.load_state_dict(state["opt_G"])
        opt_d.load_state_dict(state["opt_D"])

    def save():
        if run.main:  # the ranks' states are equal: rank 0's, with the single-process keys
            torch.save({"G": unwrapped(gen).state_dict(), "D": unwrapped(disc).state_dict(),
                        "opt_G": opt_g.state_dict(), "opt_D": opt_d.state_dict(), "step": step, "history": history,
                        "rng": torch.get_rng_state()}, ckpt)

    def sample():
        if not run.main:
            return
        g = unwrapped(gen)
        g.eval()
        with torch.no_grad():
            images.save_grid(g(fixed_z), args.out / f"samples_{step:06d}.png", nrow=8)
        g.train()

    start = time.perf_counter()
    if run.distributed:  # this rank's share of each epoch, resumable
        batches = distributed.Batches(data, args.batch, run, args.seed).at(step)
        batch = lambda: next(batches).to(args.device)  # noqa: E731
    else:
        batch = lambda: data[torch.randint(0, len(data), (args.batch,))].to(args.device)  # noqa: E731
    train_step = step_runner(args, gen, disc, opt_g, opt_d, batch())
    bar = tqdm(total=args.steps, initial=step, desc="dcgan", unit="step", disable=not run.main)
    while step < args.steps:
        loss_d, loss_g = distributed.mean_over_ranks(run, args.device, *train_step(batch()))
        history["D"].append(loss_d)
        history["G"].append(loss_g)
        step += 1
        bar.update()
        bar.set_postfix(D=f"{loss_d:.3f}", G=f"{loss_g:.3f}")
        if step % args.sample_every == 0:
            sample()
        if step % args.checkpoint_every == 0:
            save()
    bar.close()
    sample()
    save()
    took = time.perf_counter() - start
    if run.main:
        images.save_curves(history, args.out / "losses.png", title="DCGAN losses (BCE)")
        print(f"trained to step {step} in {took:.1f} s on {run.world_size} process(es); wrote samples, losses.png "
              f"and checkpoint.pt to {args.out}")
    distributed.stop(run)
    return history


if __name__ == "__main__":
    main()
