"""MoDo (Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
Generalization and Conflict-Avoidance", NeurIPS 2023 / JMLR 2024).

Stochastic MGDA with the weights stepped on the simplex instead of solved for (eq. 2.9a):
``lambda <- Proj_simplex(lambda - gamma (G lambda + rho lambda))``, ``lambda_0 = 1/T``, and the update is
``J^T lambda`` (eq. 2.9b). The paper evaluates ``G = J_1 J_2^T`` on two independent batches (an unbiased
estimate of the Gramian); the step engine gives one batch per step, so this is the single-batch form ``G = J
J^T`` (as torchjd's ``MoDoWeighting`` on a Gramian). ``G`` is used at its true scale, so ``gamma`` is relative
to the squared gradient norms. Absent tasks keep their weight; the present ones share the mass they hold.
Defaults: LibMTL's (``gamma = 1e-3``, ``rho = 0.1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.simplex import project_onto_simplex


class SimplexState(GramianWeighting):
    """Task weights on the simplex kept across steps; a step sees the present tasks' share, renormalised."""

    def _init_simplex(self) -> None:
        self.lambd = torch.full((self.num_tasks,), 1 / self.num_tasks, dtype=torch.float64)

    def _present(self, index: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
        """The present tasks' weights renormalised to the simplex, and the mass they hold."""
        self.lambd = self.lambd.to(device)  # the state follows the device: no copy to the host per step
        lambd = self.lambd[index]
        mass = lambd.sum()
        return lambd / mass, mass

    def _store(self, lambd: Tensor, mass: Tensor, index: list[int]) -> None:
        self.lambd[index] = lambd * mass

    def state_dict(self) -> dict:
        return {"lambd": self.lambd.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.lambd = state["lambd"].clone()


@register("modo", "Chen et al. 2023")
class MoDo(SimplexState):
    """MoDo (Chen et al. 2023): MGDA's weights stepped by projected gradient descent on the simplex.

    Args:
        gamma: step of the weights.
        rho: L2 regularisation of the weights.
    """

    def __init__(self, task_names: Sequence[str] | None = None, gamma: float = 1e-3, rho: float = 0.1) -> None:
        super().__init__(task_names)
        self.gamma = number("gamma", gamma, above=0)
        self.rho = number("rho", rho, minimum=0)
        self._init_simplex()

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        lambd, mass = self._present(index, gramian.device)
        G = gramian.double()
        lambd = project_onto_simplex(lambd - self.gamma * (G @ lambd + self.rho * lambd))
        self._store(lambd, mass, index)
        return lambd.to(gramian.dtype)
