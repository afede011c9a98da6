"""A seeded random generator that lives on the device of the tensors it draws for.

Randomised balancers (PCGrad's permutations, GradVac's, RLW's samples, GradDrop's thresholds) draw on the
device of the gradients, so that no draw needs a host-device copy. ``seed=None`` takes a seed from torch's
global generator, so ``torch.manual_seed`` makes such a balancer reproducible too. The generator state is part
of the balancer's ``state_dict`` so that a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import torch

from graph_mtl.balancers.args import ArgumentError


class SeededGenerator:
    """A ``torch.Generator`` created lazily on the device where it is first used.

    Args:
        seed: the seed; ``None`` draws one from torch's global generator.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ArgumentError("seed", f"expected a non-negative int or None, got {seed!r}")
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        self._generator: torch.Generator | None = None
        self._pending: tuple[str, torch.Tensor] | None = None  # (device type, state) loaded before first use

    def get(self, device: torch.device | str) -> torch.Generator:
        """The generator on ``device`` (a generator moved to another device restarts from the seed)."""
        device = torch.device(device)
        gen = self._generator
        if gen is None or gen.device.type != device.type:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending is not None and self._pending[0] == device.type:
                gen.set_state(self._pending[1])
            self._pending = None
            self._generator = gen
        return gen

    def state_dict(self) -> dict:
        if self._generator is not None:
            return {"seed": self.seed, "device": self._generator.device.type,
                    "state": self._generator.get_state()}
        device, state = self._pending if self._pending is not None else (None, None)
        return {"seed": self.seed, "device": device, "state": state}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        self._pending = None if state.get("state") is None else (state["device"], state["state"])
