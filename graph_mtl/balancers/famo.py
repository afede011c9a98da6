"""FAMO (Liu, Liang, Chen & Stone, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023).

Logits ``xi`` (``xi(0) = 0``), ``z = softmax(xi)``. The network descends ``sum_i z_i log L_i / c`` with
``c = sum_i z_i / L_i`` held constant, i.e. a loss weighting with ``w_i = z_i / (c L_i)`` (``L_i + eps``;
the minimum losses of the paper are taken as 0). After the step the logits move along the observed change of
the log losses: ``delta_i = log L_i(before) - log L_i(after)``, gradient ``d = (dz/dxi)^T delta``, stepped by
the balancer's own Adam (``lr``, ``weight_decay`` = the paper's gamma).

The losses *after* the step: the paper evaluates the same batch again after ``optimizer.step()``. The trainer
does not, so by default the update happens lazily at the start of the next ``backward`` with that step's
losses (a fresh batch: a noisier but free estimate of the same change). A training loop that recomputes the
losses on the same batch can call :meth:`FAMO.update` with them after the optimizer step; the lazy update is
then skipped. Tasks absent at either of the two steps get ``delta = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.learned import LearnedVector, check_positive
from graph_mtl.balancers.registry import register


@register("famo")
class FAMO(LossWeighting):
    """FAMO (Liu et al. 2023): adaptive loss weights from the observed decrease of the log losses.

    Args:
        lr: learning rate of the logits' Adam.
        weight_decay: weight decay of the logits (the paper's gamma).
        eps: added to the losses before the logarithm and the division.
    """

    def __init__(self, task_names: Sequence[str], lr: float = 0.025, weight_decay: float = 1e-3,
                 eps: float = 1e-8) -> None:
        super().__init__(task_names)
        self.logits = LearnedVector(torch.zeros(self.num_tasks), lr, "adam", weight_decay)
        self.eps = check_positive("eps", eps)
        self._prev: tuple[Tensor, list[int]] | None = None  # losses and present tasks of the last step

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        losses = losses.float()
        self._update(losses, index)
        z = torch.softmax(self.logits.on(losses.device).detach()[index], dim=0)
        inv = z / (losses + self.eps)
        self._prev = (losses.clone(), list(index))
        return inv / inv.sum()

    def update(self, losses: dict[str, Tensor]) -> None:
        """Move the logits with the losses of the last step's batch re-evaluated after the optimizer step."""
        index, stacked = self.present(losses)
        self._update(stacked.detach().float(), index)

    def _update(self, losses: Tensor, index: list[int]) -> None:
        if self._prev is None:
            return
        prev, prev_index = self._prev
        self._prev = None
        xi = self.logits.on(losses.device)
        now = torch.full((self.num_tasks,), float("nan"), device=losses.device)
        now[index] = losses
        now = now[prev_index]
        delta = torch.log(prev.to(now.device) + self.eps) - torch.log(now + self.eps)
        delta = torch.where(torch.isnan(delta), torch.zeros_like(delta), delta)
        z = torch.softmax(xi.detach()[prev_index], dim=0)
        grad = torch.zeros_like(xi)
        grad[prev_index] = z * (delta - (z * delta).sum())  # (dz/dxi)^T delta
        self.logits.step(grad)

    def state_dict(self) -> dict:
        prev = None if self._prev is None else (self._prev[0].cpu().clone(), list(self._prev[1]))
        return {"logits": self.logits.state_dict(), "prev": prev}

    def load_state_dict(self, state: dict) -> None:
        self.logits.load_state_dict(state["logits"])
        self._prev = None if state["prev"] is None else (state["prev"][0].clone(), list(state["prev"][1]))
