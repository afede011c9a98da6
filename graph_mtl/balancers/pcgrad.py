"""PCGrad: projecting conflicting gradients (Yu et al., "Gradient Surgery for Multi-Task Learning", 2020).

Algorithm 1: ``g_i^PC = g_i``; for each task ``i`` and each ``j`` in a fresh random permutation of the other
tasks, if ``g_i^PC . g_j < 0`` then ``g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j`` with ``g_j`` the ORIGINAL
gradient (a ``g_j`` of zero norm is skipped). The update is ``sum_i g_i^PC`` (``reduction="sum"``) or its
mean.

Every ``g_i^PC`` stays a linear combination ``sum_j C_ij g_j`` of the original gradients, so the surgery runs
on the coefficient matrix ``C [t, t]`` with the Gramian only: ``g_i^PC . g_j = (C G)_ij``. The tasks are
processed in parallel - round ``k`` treats the ``k``-th entry of every permutation at once - with tensor ops
and no value read back to the host. The update is ``w^T J`` with ``w = 1^T C`` (divided by ``t`` for the mean).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import choice
from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.rng import SeededGenerator

REDUCTIONS = ("sum", "mean")

#: ``coefficient(dot, sq_i, sq_j, i, j) -> c`` for one round: ``dot = g_i' . g_j``, ``sq_i = ||g_i'||^2``,
#: ``sq_j = ||g_j||^2`` (all ``[t]``); ``g_i' += c_i g_{j_i}``
Coefficient = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def random_orders(t: int, generator: torch.Generator) -> Tensor:
    """``[t, t-1]``: row ``i`` is a uniformly random permutation of the tasks other than ``i``."""
    keys = torch.rand(t, t, generator=generator, device=generator.device)
    keys.fill_diagonal_(2.0)  # task i sorts last and is cut off
    return keys.argsort(dim=1)[:, : t - 1]


def surgery(G: Tensor, orders: Tensor, coefficient: Coefficient) -> Tensor:
    """Coefficients ``C [t, t]`` of the sequentially altered gradients ``g_i' = sum_j C_ij g_j``.

    Task ``i`` meets the original gradients in the order ``orders[i]``; ``coefficient`` says how much of
    ``g_j`` is added to ``g_i'`` at each meeting.
    """
    t = len(G)
    C = torch.eye(t, dtype=G.dtype, device=G.device)
    CG = G.clone()  # C @ G, kept up to date
    rows = torch.arange(t, device=G.device)
    sq = G.diagonal()
    sq_i = sq.clone()  # ||g_i'||^2, kept up to date: ||g_i' + c g_j||^2 = sq_i + 2 c (g_i'.g_j) + c^2 ||g_j||^2
    for k in range(orders.shape[1]):
        j = orders[:, k]
        dot = CG[rows, j]
        c = coefficient(dot, sq_i, sq[j], rows, j)
        C[rows, j] += c
        CG.addcmul_(G.index_select(0, j), c.unsqueeze(1))
        sq_i = (sq_i + c * (2 * dot + c * sq[j])).clamp_min(0.0)
    return C


def pcgrad_coefficient(dot: Tensor, sq_i: Tensor, sq_j: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Project ``g_i'`` onto the normal plane of ``g_j`` when they conflict (zero-norm ``g_j``: skip)."""
    conflict = (dot < 0) & (sq_j > 0)
    return torch.where(conflict, -dot / torch.where(sq_j > 0, sq_j, 1.0), 0.0)


def pcgrad_weights(G: Tensor, orders: Tensor, reduction: str = "sum") -> Tensor:
    """PCGrad's weights on the original gradients: ``w = 1^T C`` (``/ t`` for ``reduction="mean"``)."""
    w = surgery(G, orders, pcgrad_coefficient).sum(dim=0)
    return w / len(G) if reduction == "mean" else w


def check_reduction(reduction: str) -> str:
    return str(choice("reduction", reduction, REDUCTIONS))


@register("pcgrad", "Yu et al. 2020")
class PCGrad(GramianWeighting):
    """PCGrad (Yu et al. 2020) on the shared parameters; heads keep their plain gradients.

    Args:
        reduction: ``"sum"`` (the paper) or ``"mean"`` of the projected gradients.
        seed: seed of the permutations (``None``: from torch's global generator).
    """

    def __init__(self, task_names: Sequence[str] | None = None, reduction: str = "sum",
                 seed: int | None = None) -> None:
        super().__init__(task_names)
        self.reduction = check_reduction(reduction)
        self.rng = SeededGenerator(seed)

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        orders = random_orders(len(index), self.rng.get(gramian.device))
        return pcgrad_weights(gramian, orders, self.reduction)

    def state_dict(self) -> dict:
        return {"rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.load_state_dict(state["rng"])
