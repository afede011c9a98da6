"""FAMO (Liu, Liang, Chen & Stone, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023).

Logits ``xi`` (``xi(0) = 0``), ``z = softmax(xi)``. The network descends ``sum_i z_i log L_i / c`` with
``c = sum_i z_i / L_i`` held constant, i.e. a loss weighting with ``w_i = z_i / (c L_i)`` (``L_i + eps``;
the minimum losses of the paper are taken as 0). After the optimizer step the logits move along the observed
change of the log losses: ``delta_i = log L_i(before) - log L_i(after)``, gradient
``d = (dz/dxi)^T delta = z * (delta - z . delta)``, stepped by the method's own Adam (``lr``,
``weight_decay`` = the paper's gamma).

``estimate="same_batch"`` (the paper): the step's batch is evaluated again after the optimizer step and the
engine hands both loss vectors to :meth:`FAMO.after_step` - one extra forward per step.
``estimate="next_batch"``: the next step's losses (a fresh batch) stand in for the re-evaluation - free, but a
noisier estimate of the same change. Tasks absent at either end get ``delta = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import choice, number
from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.learned import LearnedVector
from graph_mtl.balancers.registry import register

ESTIMATES = ("same_batch", "next_batch")


@register("famo", "Liu et al. 2023")
class FAMO(LossWeighting):
    """FAMO (Liu et al. 2023): adaptive loss weights from the observed decrease of the log losses.

    Args:
        lr: learning rate of the logits' Adam.
        weight_decay: weight decay of the logits (the paper's gamma).
        eps: added to the losses before the logarithm and the division.
        estimate: ``"same_batch"`` (the paper's re-evaluation) or ``"next_batch"`` (free estimate).
    """

    def __init__(self, task_names: Sequence[str] | None = None, lr: float = 0.025, weight_decay: float = 1e-3,
                 eps: float = 1e-8, estimate: str = "same_batch") -> None:
        super().__init__(task_names)
        self.logits = LearnedVector(torch.zeros(self.num_tasks), lr, "adam", weight_decay)
        self.eps = number("eps", eps, above=0)
        self.estimate = choice("estimate", estimate, ESTIMATES)
        self._prev: tuple[Tensor, list[int]] | None = None  # next_batch: losses and present tasks of the last step

    @property
    def wants_losses_after_step(self) -> bool:
        return self.estimate == "same_batch"

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        losses = losses.float()
        if self.estimate == "next_batch":
            if self._prev is not None:
                self._move(*self._prev, losses, index)
            self._prev = (losses.clone(), list(index))
        z = torch.softmax(self.logits.on(losses.device)[index], dim=0)
        inv = z / (losses + self.eps)
        return inv / inv.sum()

    def after_step(self, before: Tensor, after: Tensor, index: list[int]) -> None:
        if self.estimate == "same_batch":
            self._move(before.float(), index, after.float(), index)

    def _move(self, before: Tensor, before_index: list[int], after: Tensor, after_index: list[int]) -> None:
        """One Adam step of the logits along ``(dz/dxi)^T delta`` over the tasks present before."""
        xi = self.logits.on(after.device)
        now = torch.full((self.num_tasks,), float("nan"), device=after.device)
        now[after_index] = after
        now = now[before_index]
        delta = torch.log(before.to(now.device) + self.eps) - torch.log(now + self.eps)
        delta = torch.where(torch.isnan(delta), torch.zeros_like(delta), delta)
        z = torch.softmax(xi[before_index], dim=0)
        grad = torch.zeros_like(xi)
        grad[before_index] = z * (delta - (z * delta).sum())
        self.logits.step(grad)

    def state_dict(self) -> dict:
        prev = None if self._prev is None else (self._prev[0].cpu().clone(), list(self._prev[1]))
        return {"logits": self.logits.state_dict(), "prev": prev}

    def load_state_dict(self, state: dict) -> None:
        self.logits.load_state_dict(state["logits"])
        self._prev = None if state["prev"] is None else (state["prev"][0].clone(), list(state["prev"][1]))
