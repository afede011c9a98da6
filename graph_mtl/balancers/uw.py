"""Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses",
CVPR 2018).

With ``s_i = log sigma_i^2`` learnable, the objective is ``sum_i exp(-s_i) L_i + s_i`` (the homoscedastic
likelihood up to a constant factor 1/2 and the per-kind factor; ``s = 0`` starts as equal weighting). The
network steps on ``sum_i w_i L_i`` with ``w_i = exp(-s_i)``. The log-variances are the method's own
parameters: each step takes their gradient ``1 - exp(-s_i) L_i`` (present tasks only) and steps them with
the method's optimizer (``lr``) - the gradient a joint optimizer would see, with a separate learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.learned import LearnedVector
from graph_mtl.balancers.registry import register


@register("uw", "Kendall et al. 2018")
class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting (Kendall et al. 2018): ``w_i = exp(-s_i)`` with learnable log-variances ``s``.

    Args:
        lr: learning rate of the log-variances' optimizer.
        optimizer: ``"adam"`` or ``"sgd"``.
    """

    def __init__(self, task_names: Sequence[str] | None = None, lr: float = 0.01, optimizer: str = "adam") -> None:
        super().__init__(task_names)
        self.log_var = LearnedVector(torch.zeros(self.num_tasks), lr, optimizer)

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        s = self.log_var.on(losses.device)
        w = torch.exp(-s[index])
        grad = torch.zeros_like(s)
        grad[index] = 1 - w * losses.float()  # d/ds_i of exp(-s_i) L_i + s_i
        self.log_var.step(grad)
        return w

    def state_dict(self) -> dict:
        return {"log_var": self.log_var.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.log_var.load_state_dict(state["log_var"])
