"""GradDrop (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing Deep
Multitask Models with Gradient Sign Dropout", NeurIPS 2020).

Per coordinate of the per-task gradients ``J``: the sign purity ``P = 1/2 (1 + sum_i g_i / sum_i |g_i|)``, a
uniform ``U`` per coordinate, and the mask ``M_i = [P > U][g_i > 0] + [P < U][g_i < 0]``; the update is
``sum_i (leak + (1 - leak) M_i) g_i``. Not a linear combination of the task gradients, so it works on ``J``
itself (shared parameters, or the representation with ``grad_mode="rep"``, where the paper places the layer;
the purity is taken per element, without the paper's batch reduction). Seeded; the returned weights are ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import Aggregator
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.rng import SeededGenerator


def graddrop_update(J: Tensor, uniform: Tensor, leak: float = 0.0) -> Tensor:
    """GradDrop's combined gradient from ``J [t, D]`` and one uniform sample per coordinate ``[D]``."""
    total, mass = J.sum(dim=0), J.abs().sum(dim=0)
    purity = 0.5 * (1 + torch.where(mass > 0, total / torch.where(mass > 0, mass, 1.0), 0.0))
    keep = ((purity > uniform) & (J > 0)) | ((purity < uniform) & (J < 0))
    return (J * (leak + (1 - leak) * keep.to(J.dtype))).sum(dim=0)


@register("graddrop", "Chen et al. 2020")
class GradDrop(Aggregator):
    """GradDrop (Chen et al. 2020): keep, per coordinate, the gradients of one randomly chosen sign.

    Args:
        leak: fraction of every gradient always kept (0 in the paper's multitask setting).
        seed: seed of the uniform samples (``None``: from torch's global generator).
    """

    def __init__(self, task_names: Sequence[str] | None = None, leak: float = 0.0, seed: int | None = None) -> None:
        super().__init__(task_names)
        self.leak = number("leak", leak, minimum=0, maximum=1)
        self.rng = SeededGenerator(seed)

    def aggregate(self, J: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        J = J.float()
        gen = self.rng.get(J.device)
        uniform = torch.rand(J.shape[1], generator=gen, device=gen.device)
        return graddrop_update(J, uniform, self.leak), torch.ones(len(index), device=J.device)

    def state_dict(self) -> dict:
        return {"rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.load_state_dict(state["rng"])
