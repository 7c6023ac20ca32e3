"""The benchmark cases: one module per op, each defining `CASE`.

To add an op, write `cases/<op>.py` with a `CASE = Case(...)` and list it in `CASES` below.
"""

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Case:
    name: str
    shapes: list          # full run: shape tuples handed to make_inputs
    quick_shapes: list    # --quick and the pytest-benchmark tests
    make_inputs: Callable  # (shape, dtype, device) -> list of fresh random tensors, all differentiable
    op: Callable          # (*inputs, impl=name) -> output: the public fastgan op
    reference: Callable   # (*inputs) -> output: eager PyTorch ("eager", and compiled for "compile")
    min_bytes: Callable   # (shape, itemsize) -> {"forward": bytes, "backward": bytes}, the least
    #                       traffic any implementation must move (forward+backward is their sum)


# Imported after Case is defined: the case modules import it from this package.
from . import blend_reals, fade_in, pixel_norm  # noqa: E402

CASES = [fade_in.CASE, blend_reals.CASE, pixel_norm.CASE]
