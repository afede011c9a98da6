"""STCH, smooth Tchebycheff scalarisation (Lin, Zhang, Yang, Zhang, Ye & Zhang, "Smooth Tchebycheff
Scalarization for Multi-Objective Optimization", ICML 2024).

The weighted Tchebycheff scalarisation ``max_i lambda_i (f_i - z_i)`` is smoothed to ``g_mu(f) = mu log sum_i
exp(lambda_i (f_i - z_i) / mu)``, whose gradient is the loss weighting ``w_i = lambda_i softmax(lambda (f - z) /
mu)_i`` (a soft maximum: the worst task gets the most weight; ``mu -> 0`` is the Tchebycheff max).

``warmup_epoch = k`` (the authors' multi-task recipe, their default 4): epochs ``0..k`` train on ``sum_i log
L_i``; the mean losses of epoch ``k`` are the nadir point ``n``; afterwards the objectives are the normalised
log losses ``f_i = log(L_i / n_i)`` with ``lambda_i = 1``, ``z = 0`` and the whole scaled by ``t``, so ``w_i = t
softmax(f / mu)_i / L_i``. ``warmup_epoch = None`` is the plain scalarisation of the raw losses with the uniform
preference ``lambda_i = 1/t`` and ``z = 0`` (torchjd's ``STCH``). A task absent from epoch ``k`` keeps ``n_i =
1``. ``eps`` (the authors' 1e-20) guards the logarithms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import integer, number
from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.registry import register


@register("stch", "Lin et al. 2024")
class STCH(LossWeighting):
    """Smooth Tchebycheff scalarisation (Lin et al. 2024): a soft maximum of the (normalised log) losses.

    Args:
        mu: smoothing (smaller: closer to the maximum).
        warmup_epoch: the epoch whose mean losses are the nadir point, after log-loss training until then;
            ``None``: the scalarisation of the raw losses from the first step.
        eps: added to the losses inside the logarithms.
    """

    def __init__(self, task_names: Sequence[str] | None = None, mu: float = 1.0, warmup_epoch: int | None = 4,
                 eps: float = 1e-20) -> None:
        super().__init__(task_names)
        self.mu = number("mu", mu, above=0)
        self.warmup_epoch = integer("warmup_epoch", warmup_epoch, minimum=0, allow_none=True)
        self.eps = number("eps", eps, above=0)
        self.epoch = 0
        self.loss_sum = torch.zeros(self.num_tasks, dtype=torch.float64)
        self.loss_count = torch.zeros(self.num_tasks, dtype=torch.float64)

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        L = losses.detach().double().clamp_min(0)
        t = len(L)
        if self.warmup_epoch is None:  # mu log sum exp(L_i / (t mu)), lambda = 1/t
            return (torch.softmax(L / (t * self.mu), dim=0) / t).to(losses.dtype)
        if self.epoch <= self.warmup_epoch:  # sum_i log L_i; the last warm-up epoch records the nadir point
            if self.epoch == self.warmup_epoch:
                # the state follows the device: no copy to the host per step
                self.loss_sum, self.loss_count = self.loss_sum.to(L.device), self.loss_count.to(L.device)
                self.loss_sum[index] += L
                self.loss_count[index] += 1
            return (1 / (L + self.eps)).to(losses.dtype)
        nadir = self.nadir()[index].to(L.device)
        f = torch.log(L / nadir + self.eps)
        return (t * torch.softmax(f / self.mu, dim=0) / (L + self.eps * nadir)).to(losses.dtype)

    def nadir(self) -> Tensor:
        """The mean loss of every task over the last warm-up epoch (1 where a task was absent)."""
        seen = self.loss_count > 0
        return torch.where(seen, self.loss_sum / self.loss_count.clamp_min(1), torch.ones_like(self.loss_sum))

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "loss_sum": self.loss_sum.cpu().clone(),
                "loss_count": self.loss_count.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.loss_sum = state["loss_sum"].clone()
        self.loss_count = state["loss_count"].clone()
