"""Weight averaging (``train.ema_decay``): an exponential moving average of the model's weights.

After every optimiser step ``k`` (1, 2, ...) the average moves towards the current weights:

    a_k = d_k * a_{k-1} + (1 - d_k) * w_k,   d_k = min(d, k / (k + 10)),   a_0 = w_0

(the warm-up ``k / (k + 10)`` keeps the first steps' average from sitting on the random initial weights). Every
floating-point entry of the state dict is averaged, batch-norm running statistics included; integer entries
(``num_batches_tracked``) are copied. The averaged weights are the ones evaluated, selected and saved as the
model; the training weights go on from where they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

#: steps of the decay's warm-up: d_k = min(d, k / (k + WARMUP_STEPS))
WARMUP_STEPS = 10


def check_decay(decay: float | None) -> None:
    """A ``train.ema_decay`` that is not ``None`` or in (0, 1) is a one-line ``ValueError``."""
    if decay is not None and not 0 < decay < 1:
        raise ValueError(f"train.ema_decay: must be in (0, 1), e.g. 0.999, or null for no averaging; got {decay}")


class WeightAverage:
    """An exponential moving average of ``model``'s state dict with decay ``decay`` in (0, 1)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        check_decay(decay)
        self.decay = decay
        self.updates = 0
        self.average: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        #: the averaged entries; the others (integer counters) are copied
        self._floats = [k for k, v in self.average.items() if v.is_floating_point()]
        self._copied = [k for k in self.average if k not in set(self._floats)]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        self.updates += 1
        decay = min(self.decay, self.updates / (self.updates + WARMUP_STEPS))
        current = model.state_dict()
        if self._floats:
            torch._foreach_lerp_([self.average[k] for k in self._floats], [current[k] for k in self._floats],
                                 1.0 - decay)
        for key in self._copied:
            self.average[key].copy_(current[key])

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the averaged weights inside the block, its own weights again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for key, value in state["average"].items():
            self.average[key].copy_(value)
