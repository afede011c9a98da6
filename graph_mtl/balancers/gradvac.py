"""GradVac (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021).

Like PCGrad's surgery (tasks ``j`` met in a fresh random order, against the ORIGINAL ``g_j``) but towards a
target cosine similarity: with ``phi_ij = cos(g_i', g_j)`` and the target ``phihat_ij``, if
``phi_ij < phihat_ij`` then ``g_i' += ||g_i'|| (phihat sqrt(1 - phi^2) - phi sqrt(1 - phihat^2)) /
(||g_j|| sqrt(1 - phihat^2)) g_j``; after every meeting ``phihat_ij <- (1 - beta) phihat_ij + beta phi_ij``
(the paper's Algorithm 1 / Eq. 3; LibMTL also moves the average at every meeting). ``phihat`` starts
at 0, so the first step is PCGrad. One vector for the whole shared part (the paper also allows per-layer
groups). Runs on the Gramian like :mod:`pcgrad`; the moving averages are checkpointed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.pcgrad import random_orders, surgery
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.rng import SeededGenerator


def gradvac_weights(G: Tensor, orders: Tensor, target: Tensor, beta: float) -> Tensor:
    """GradVac's weights ``1^T C``; ``target [t, t]`` (the moving averages ``phihat``) is updated in place."""

    def coefficient(dot: Tensor, sq_i: Tensor, sq_j: Tensor, i: Tensor, j: Tensor) -> Tensor:
        valid = (sq_i > 0) & (sq_j > 0)
        norm_i, norm_j = sq_i.sqrt(), sq_j.sqrt()
        phi = torch.where(valid, dot / torch.where(valid, norm_i * norm_j, 1.0), 0.0).clamp(-1.0, 1.0)
        goal = target[i, j]
        room = (1 - goal**2).clamp_min(1e-8).sqrt()
        c = norm_i * (goal * (1 - phi**2).sqrt() - phi * room) / (torch.where(valid, norm_j, 1.0) * room)
        target[i, j] = torch.where(valid, (1 - beta) * goal + beta * phi, goal)
        return torch.where(valid & (phi < goal), c, 0.0)

    return surgery(G, orders, coefficient).sum(dim=0)


@register("gradvac", "Wang et al. 2021")
class GradVac(GramianWeighting):
    """GradVac (Wang et al. 2021): adaptive gradient alignment towards moving-average similarities.

    Args:
        beta: rate of the moving average of the cosine similarities (1e-2 in the paper).
        seed: seed of the permutations (``None``: from torch's global generator).
    """

    def __init__(self, task_names: Sequence[str] | None = None, beta: float = 0.01, seed: int | None = None) -> None:
        super().__init__(task_names)
        self.beta = number("beta", beta, minimum=0, maximum=1)
        self.rng = SeededGenerator(seed)
        self.target = torch.zeros(self.num_tasks, self.num_tasks)

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        idx = torch.tensor(index, device=gramian.device)
        self.target = self.target.to(gramian.device, gramian.dtype)
        local = self.target[idx][:, idx].clone()
        orders = random_orders(len(index), self.rng.get(gramian.device))
        w = gradvac_weights(gramian, orders, local, self.beta)
        self.target[idx.unsqueeze(1), idx.unsqueeze(0)] = local
        return w

    def state_dict(self) -> dict:
        return {"rng": self.rng.state_dict(), "target": self.target.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.load_state_dict(state["rng"])
        self.target = state["target"].clone()
