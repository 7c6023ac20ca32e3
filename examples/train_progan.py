"""Grow a small ProGAN on fastgan: 4x4 -> 8x8 -> 16x16 (-> 32x32 with --resolution 32), WGAN-GP.

Each new resolution first fades in (alpha rises linearly over --fade-images images: the generator
blends its up-sampled previous output, the discriminator its pooled from-RGB path, and the real
images are blended the same way), then trains stabilized (alpha = 1) for as many images. Data: the
procedural shapes of examples/datasets.py, average-pooled to each resolution. Writes
samples_<res>.png (a fixed-noise grid at the end of every resolution) and losses.png to --out.

    python examples/train_progan.py              # 4 -> 16, a few minutes on a CPU
    python examples/train_progan.py --smoke      # seconds: a handful of steps per phase
    python examples/train_progan.py --device cuda --cuda-graphs  # stable phases replayed as CUDA graphs
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402
import images  # noqa: E402
import runtime  # noqa: E402

import fastgan  # noqa: E402
from fastgan.models import ProGANDiscriminator, ProGANGenerator, progan_optimizers, progan_step  # noqa: E402
from fastgan.models.amp import AMP_DTYPES  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=16, help="final resolution (default %(default)s)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--fade-images", type=int, default=6400, help="images shown per fade (and per stabilization)")
    p.add_argument("--fmap-max", type=int, default=64, help="feature maps cap (512 in the paper)")
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--impl", default=None, help="fastgan backend (default: by device)")
    p.add_argument("--smoke", action="store_true", help="tiny networks, a few steps per phase")
    runtime.add_arguments(p, "capture each stable phase's step once and replay it (a GPU; fade-ins, whose alpha "
                             "changes every step, run eagerly; each capture's 3 warm-up steps train on one batch)")
    p.add_argument("--out", type=Path, default=Path("runs/progan"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.fade_images, args.fmap_max, args.latent = 4, 8, 8, 8
    runtime.check_arguments(p, args)
    return args


def step_runner(args, gen, disc, opt_g, opt_d, level, fading, first_batch, scaler):
    """(real, alpha) -> (loss_d, loss_g): progan_step (under --amp, with `scaler` for fp16), or for a
    stable phase with --cuda-graphs its capture (alpha 1) replayed."""
    amp = AMP_DTYPES[args.amp]
    if args.cuda_graphs and not fading:
        run = runtime.replayed(lambda real: progan_step(gen, disc, opt_g, opt_d, real, level, 1.0, item=False,
                                                        amp=amp), first_batch)
        return lambda real, alpha: run(real)
    return lambda real, alpha: progan_step(gen, disc, opt_g, opt_d, real, level, alpha, amp=amp, scaler=scaler)


def phases(levels, fade_images):
    """(level, fading, images): 4x4 stabilizes, then every level fades in and stabilizes."""
    out = [(0, False, fade_images)]
    for level in range(1, levels):
        out += [(level, True, fade_images), (level, False, fade_images)]
    return out


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    data = datasets.shapes(64 if args.smoke else 4096, 64, seed=args.seed)
    data = F.avg_pool2d(data, 64 // args.resolution)
    fastgan_model = args.impl != "reference"
    gen = runtime.placed(ProGANGenerator(args.resolution, args.latent, 3, fmap_base=16 * args.fmap_max,
                                         fmap_max=args.fmap_max, impl=args.impl), args, fastgan_model)
    disc = runtime.placed(ProGANDiscriminator(args.resolution, 3, fmap_base=16 * args.fmap_max,
                                              fmap_max=args.fmap_max, impl=args.impl), args, fastgan_model)
    opt_g, opt_d = progan_optimizers(gen, disc, capturable=args.cuda_graphs)
    fixed_z = torch.randn(36, args.latent, generator=torch.Generator().manual_seed(1234)).to(args.device)
    history = {"D": [], "G": []}
    scaler = runtime.scaler_for(args)  # one for the whole run: its scale carries over from phase to phase
    start = time.perf_counter()
    for level, fading, count in phases(gen.levels, args.fade_images):
        res = 4 * 2 ** level
        reals = F.avg_pool2d(data, args.resolution // res) if res < args.resolution else data
        steps = max(1, count // args.batch)
        name = f"{res}x{res} {'fade-in' if fading else 'stable'}"
        batch = lambda: reals[torch.randint(0, len(reals), (args.batch,))].to(args.device)  # noqa: E731
        run = step_runner(args, gen, disc, opt_g, opt_d, level, fading, batch(), scaler)
        for step in tqdm(range(steps), desc=name, unit="step"):
            alpha = fastgan.ops.fade_alpha(step * args.batch, count) if fading else 1.0
            real = batch()
            if fading:
                real = fastgan.ops.blend_reals(real, alpha, impl=args.impl)
            loss_d, loss_g = run(real, alpha)
            history["D"].append(loss_d)
            history["G"].append(loss_g)
        if not fading:
            with torch.no_grad():
                images.save_grid(gen(fixed_z, level, 1.0), args.out / f"samples_{res:02d}.png", nrow=6)
            print(f"resolution {res}: D loss {loss_d:.3f}, G loss {loss_g:.3f}; wrote samples_{res:02d}.png")
    images.save_curves(history, args.out / "losses.png", title="ProGAN losses (WGAN-GP)")
    print(f"grew to {args.resolution}x{args.resolution} in {time.perf_counter() - start:.1f} s; outputs in {args.out}")
    return history


if __name__ == "__main__":
    main()
