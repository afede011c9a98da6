"""MoCo (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in Multi-objective
Learning: A Provably Convergent Approach", ICLR 2023).

MGDA's weights computed from stochastic gradients are biased; MoCo tracks every task's gradient with a moving
estimate ``y_i`` and steps the weights ``lambda`` on the simplex instead of solving for them. At step ``k``
(``beta_k = beta / k^beta_sigma``, ``gamma_k = gamma / k^gamma_sigma``):

    y_i <- y_i - beta_k (y_i - h_i),     h_i = L_i g_i / (||g_i|| + 1e-8)
    lambda <- Proj_simplex(lambda - gamma_k (Y Y^T + rho I) lambda)
    d = Y^T lambda

``h_i`` is the gradient rescaled to the loss's magnitude as in the authors' code (and LibMTL); ``Y`` starts at
0 and ``lambda`` at ``1/T``. Deliberate differences: the projection onto the simplex of the paper (LibMTL
takes a softmax), and the paper's projection of ``y_i`` onto a ball is left out (the rescaled ``h_i`` are
bounded by ``L_i`` already). ``Y`` is per parameter (``[T, P]``), so the method needs
``grad_mode="exact"``; absent tasks keep their ``y_i`` and their weight, the present ones share the mass they
hold. The weights reported are ``lambda`` (the update is ``Y^T lambda``, not a combination of this step's
gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import Aggregator
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.simplex import project_onto_simplex

NORM_EPS = 1e-8


@register("moco", "Fernando et al. 2023")
class MoCo(Aggregator):
    """MoCo (Fernando et al. 2023): tracked task gradients and simplex weights stepped towards MGDA's.

    Args:
        beta: step of the gradient tracking.
        beta_sigma: decay exponent of ``beta`` over steps.
        gamma: step of the weights.
        gamma_sigma: decay exponent of ``gamma`` over steps.
        rho: L2 regularisation of the weights.
    """

    allows_rep = False

    def __init__(self, task_names: Sequence[str] | None = None, beta: float = 0.5, beta_sigma: float = 0.5,
                 gamma: float = 0.1, gamma_sigma: float = 0.5, rho: float = 0.0) -> None:
        super().__init__(task_names)
        self.beta = number("beta", beta, above=0, maximum=1)
        self.beta_sigma = number("beta_sigma", beta_sigma, minimum=0)
        self.gamma = number("gamma", gamma, above=0)
        self.gamma_sigma = number("gamma_sigma", gamma_sigma, minimum=0)
        self.rho = number("rho", rho, minimum=0)
        self.lambd = torch.full((self.num_tasks,), 1 / self.num_tasks, dtype=torch.float64)
        self.y: Tensor | None = None
        self.steps = 0

    def aggregate(self, J: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        self.steps += 1
        h = J.float() / (J.float().norm(dim=1, keepdim=True) + NORM_EPS) * losses.float().to(J.device).unsqueeze(1)
        if self.y is None:
            self.y = h.new_zeros(self.num_tasks, h.shape[1])
        self.y = self.y.to(h.device)
        beta = self.beta / self.steps**self.beta_sigma
        Y = self.y[index] - beta * (self.y[index] - h)
        self.y[index] = Y
        self.lambd = self.lambd.to(h.device)  # the state follows the device: no copy to the host per step
        lambd = self.lambd[index]
        mass = lambd.sum()
        lambd = lambd / mass
        gamma = self.gamma / self.steps**self.gamma_sigma
        M = (Y @ Y.T).double() + self.rho * torch.eye(len(index), dtype=torch.float64, device=h.device)
        lambd = project_onto_simplex(lambd - gamma * M @ lambd)
        self.lambd[index] = lambd * mass
        return lambd.float() @ Y, lambd.float()

    def state_dict(self) -> dict:
        return {"lambd": self.lambd.cpu().clone(), "steps": self.steps,
                "y": None if self.y is None else self.y.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.lambd, self.steps = state["lambd"].clone(), int(state["steps"])
        self.y = None if state["y"] is None else state["y"].clone()
