"""Virtual batch normalization removes the coupling between the samples of a batch (issue 18).

With BatchNorm2d a generator's image for a latent z depends on the other latents of its batch (the
batch statistics mix them); with VBN (a fixed reference batch R normalizes every sample, together
with the sample alone) it does not. Same z in slot 0, different batch-mates, training mode:

    python examples/vbn_coupling.py [--impl cpu|reference]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fastgan.models import DCGANGenerator  # noqa: E402


def coupling(generator, nz, batch=8, seed=0):
    """The largest change of the image of a fixed latent when its batch-mates are redrawn."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, nz, 1, 1, generator=g)
    mates = z.clone()
    mates[1:] = torch.randn(batch - 1, nz, 1, 1, generator=g)
    with torch.no_grad():
        return (generator(z)[0] - generator(mates)[0]).abs().max().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default="cpu", choices=["cpu", "reference"])
    parser.add_argument("--ref-size", type=int, default=4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    nz, ngf = 16, 8
    results = {}
    for name, ref in (("BatchNorm2d", 0), (f"VirtualBatchNorm2d (ref_size={args.ref_size})", args.ref_size)):
        gen = DCGANGenerator(nz=nz, ngf=ngf, impl=args.impl, vbn_ref_size=ref).train()
        results[name] = coupling(gen, nz)
        print(f"{name:36s} max |G(z)[0] change| when the batch-mates change: {results[name]:.3g}")
    return results


if __name__ == "__main__":
    main()
