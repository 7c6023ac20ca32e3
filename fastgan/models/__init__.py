"""Reference GAN models built from fastgan's fused modules (SPEC 7)."""

from .dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init, dcgan_optimizers, dcgan_step
from .graphs import graphed
from .progan import ProGANDiscriminator, ProGANGenerator, gradient_penalty, progan_optimizers, progan_step

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "dcgan_init", "dcgan_optimizers", "dcgan_step",
           "ProGANGenerator", "ProGANDiscriminator", "gradient_penalty", "progan_optimizers", "progan_step", "graphed"]
