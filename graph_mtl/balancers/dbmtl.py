"""DB-MTL (Lin, Ye, Xu, Shi & Zhang, "Dual-Balancing for Multi-Task Learning", 2023).

Loss-scale balancing: the tasks are trained on ``log L_i``, whose gradient is ``g_i / L_i``.
Gradient-magnitude balancing: with ``ghat_i`` the moving average of those gradients, ``ghat_i <- g_i/L_i +
beta_t (ghat_i - g_i/L_i)``, ``beta_t = beta / step^beta_sigma`` (LibMTL's form), the update is ``sum_i (max_j
||ghat_j|| / ||ghat_i||) ghat_i`` - every task's contribution scaled to the largest. The average starts at 0
without bias correction, as in the paper's algorithm, so the first updates are smaller by about ``1 - beta``.

With ``beta = 0`` the update is the linear combination ``w^T J`` with ``w_i = max_j(||g_j||/L_j) / ||g_i||``
and works in every ``grad_mode``; with ``beta > 0`` the moving average ``[T, P]`` of parameter gradients is
kept (checkpointed), which needs ``grad_mode="exact"``. The returned weights are the effective weights on the
raw losses, ``alpha_i / L_i`` (what ``update_every`` reuses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import Aggregator
from graph_mtl.balancers.registry import register


@register("dbmtl", "Lin et al. 2023")
class DBMTL(Aggregator):
    """DB-MTL (Lin et al. 2023): log losses and gradients scaled to the largest task gradient.

    Args:
        beta: moving-average rate of the log-loss gradients (0: none).
        beta_sigma: decay exponent of ``beta`` over steps.
        eps: added to the losses before the logarithm.
    """

    def __init__(self, task_names: Sequence[str] | None = None, beta: float = 0.9, beta_sigma: float = 0.0,
                 eps: float = 1e-8) -> None:
        super().__init__(task_names)
        self.beta = number("beta", beta, minimum=0, below=1)
        self.beta_sigma = number("beta_sigma", beta_sigma, minimum=0)
        self.eps = number("eps", eps, above=0)
        self.buffer: Tensor | None = None
        self.updates = 0

    @property
    def allows_rep(self) -> bool:
        """With ``beta > 0`` the average is over parameter gradients, which needs ``grad_mode="exact"``."""
        return self.beta == 0

    rep_hint = "beta 0 keeps no average"

    @property
    def linear(self) -> bool:
        return self.beta == 0

    def aggregate(self, J: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        grads = J.float() / (losses + self.eps).unsqueeze(1)  # gradients of log(L_i + eps)
        self.updates += 1
        if self.beta > 0:
            if self.buffer is None:
                self.buffer = grads.new_zeros(self.num_tasks, grads.shape[1])
            self.buffer = self.buffer.to(grads.device)
            rate = self.beta / self.updates**self.beta_sigma
            self.buffer[index] = grads + rate * (self.buffer[index] - grads)
            grads = self.buffer[index]
        scale = grads.abs().amax()
        norms = (grads / torch.where(scale > 0, scale, 1.0)).norm(dim=1)  # scaled: squares of 1e20 would overflow
        alpha = torch.where(norms > 0, norms.max() / torch.where(norms > 0, norms, 1.0), 0.0)
        return alpha @ grads, alpha / (losses + self.eps)

    def state_dict(self) -> dict:
        buffer = None if self.buffer is None else self.buffer.cpu().clone()
        return {"buffer": buffer, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = None if state["buffer"] is None else state["buffer"].clone()
        self.updates = int(state["updates"])
