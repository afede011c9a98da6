"""Dynamic Weight Averaging (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019).

``w_i(t) = T exp(r_i(t-1) / temperature) / sum_j exp(r_j(t-1) / temperature)`` with
``r_i(t-1) = L_i(t-1) / L_i(t-2)``, where ``L_i(e)`` is task ``i``'s mean training loss over epoch ``e``;
``w = 1`` for the first two epochs. The engine calls :meth:`on_epoch_end`; the weights are constant within an
epoch. A task without loss in an epoch keeps ratio 1. Absent tasks get 0 (the others keep their weight).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.registry import register


@register("dwa", "Liu et al. 2019")
class DynamicWeightAveraging(LossWeighting):
    """DWA (Liu et al. 2019): softmax of the epoch-to-epoch ratios of mean losses.

    Args:
        temperature: the softmax temperature ``T`` (2 in the paper).
    """

    def __init__(self, task_names: Sequence[str] | None = None, temperature: float = 2.0) -> None:
        super().__init__(task_names)
        self.temperature = number("temperature", temperature, above=0)
        self._sum = torch.zeros(self.num_tasks)
        self._count = torch.zeros(self.num_tasks)
        self.history: list[Tensor] = []  # mean losses of the last two epochs, oldest first
        self._weights = torch.ones(self.num_tasks)

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        device = losses.device
        self._sum, self._count = self._sum.to(device), self._count.to(device)
        self._sum[index] += losses.float()
        self._count[index] += 1
        return self._weights.to(device)[index]

    def on_epoch_end(self) -> None:
        seen = self._count > 0
        nan = torch.full_like(self._sum, float("nan"))
        mean = torch.where(seen, self._sum / self._count.clamp_min(1), nan)
        self.history = [*self.history, mean.cpu()][-2:]
        self._sum, self._count = torch.zeros_like(self._sum), torch.zeros_like(self._count)
        if len(self.history) == 2:
            prev, last = self.history
            ok = torch.isfinite(prev) & torch.isfinite(last) & (prev > 0)
            ratio = torch.where(ok, last / torch.where(ok, prev, 1.0), torch.ones_like(last))
            self._weights = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def state_dict(self) -> dict:
        return {"sum": self._sum.cpu().clone(), "count": self._count.cpu().clone(),
                "history": [h.clone() for h in self.history], "weights": self._weights.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self._sum, self._count = state["sum"].clone(), state["count"].clone()
        self.history = [h.clone() for h in state["history"]]
        self._weights = state["weights"].clone()
