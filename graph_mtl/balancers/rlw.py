"""Random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022).

Each step ``w = softmax(lambda)`` over the present tasks with ``lambda_i ~ N(0, 1)`` drawn from a seeded
generator (whose state is checkpointed); the weights sum to 1, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.rng import SeededGenerator


@register("rlw", "Lin et al. 2022")
class RandomLossWeighting(LossWeighting):
    """RLW (Lin et al. 2022): softmax of standard normal samples, fresh every step.

    Args:
        seed: seed of the samples (``None``: from torch's global generator).
    """

    def __init__(self, task_names: Sequence[str] | None = None, seed: int | None = None) -> None:
        super().__init__(task_names)
        self.rng = SeededGenerator(seed)

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        gen = self.rng.get(losses.device)
        sample = torch.randn(self.num_tasks, generator=gen, device=gen.device)  # all T: same stream always
        return torch.softmax(sample[index], dim=0)

    def state_dict(self) -> dict:
        return {"rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.load_state_dict(state["rng"])
