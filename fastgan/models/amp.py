"""Mixed precision for the training steps: forward passes under torch.autocast, and with float16 a
torch.amp.GradScaler (its scaled losses keep small gradients from flushing to zero; it skips an
optimizer step whose gradients hold inf or nan and lowers its scale)."""

import contextlib

import torch

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device, amp):
    """torch.autocast to dtype `amp` on `device`'s type, or nothing when amp is None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=amp)


def backward_and_step(loss, optimizer, scaler, inputs=None):
    """loss.backward(inputs=inputs) and optimizer.step(), through `scaler` when given (its update is
    the caller's, once per training step)."""
    if scaler is None:
        loss.backward(inputs=inputs)
        optimizer.step()
    else:
        scaler.scale(loss).backward(inputs=inputs)
        scaler.step(optimizer)


def generator_inputs(optimizer, discriminator):
    """What the generator's step differentiates: its optimizer's parameters alone. The
    discriminator's parameter gradients of the generator's loss would be discarded (its next step
    zeroes them), and skipping them skips its weight-gradient convolutions (a third of its backward).
    All gradients (None) under DistributedDataParallel: its reducer waits for every parameter of a
    module that ran forward."""
    if isinstance(discriminator, torch.nn.parallel.DistributedDataParallel):
        return None
    return [p for group in optimizer.param_groups for p in group["params"]]
