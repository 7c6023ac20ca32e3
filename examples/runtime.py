"""What the training examples share to run on a GPU and in mixed precision: the --device, --amp and
--cuda-graphs options, where the models go, and the replay of a captured step."""

import torch

from fastgan.models import graphed
from fastgan.models.amp import AMP_DTYPES


def add_arguments(p, graphs_help):
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="off",
                   help="mixed precision: the forward passes under torch.autocast (fp16 with a GradScaler)")
    p.add_argument("--cuda-graphs", action="store_true", help=graphs_help)


def check_arguments(p, args):
    if args.cuda_graphs and not args.device.startswith("cuda"):
        p.error("--cuda-graphs needs --device cuda")
    if args.cuda_graphs and args.amp == "fp16":
        p.error("--cuda-graphs does not take --amp fp16: the GradScaler checks its gradients on the host")


def placed(model, args, fastgan_model):
    """The model on --device; on a GPU a fastgan model also gets channels-last weights, which cuDNN runs
    with its channels-last activations without converting them at every call."""
    model = model.to(args.device)
    if fastgan_model and torch.device(args.device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def scaler_for(args):
    """A GradScaler for --amp fp16, else None."""
    return torch.amp.GradScaler(torch.device(args.device).type) if args.amp == "fp16" else None


def replayed(step, first_batch):
    """`step(real)` (losses as tensors) captured once with a static input (models.graphed: its 3 warm-up
    steps train on `first_batch`); returns real -> (loss_d, loss_g) as floats, `real` copied into the
    captured input before each replay."""
    static = first_batch.clone()
    replay = graphed(lambda: step(static))

    def run(real):
        static.copy_(real)
        loss_d, loss_g = replay()
        return loss_d.item(), loss_g.item()
    return run
