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


def backward_and_step(loss, optimizer, scaler):
    """loss.backward() and optimizer.step(), through `scaler` when given (its update is the
    caller's, once per training step)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
