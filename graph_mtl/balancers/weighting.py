"""Fixed loss weightings: equal weighting (the floor every balancer is compared with) and fixed weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import ArgumentError, number
from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.registry import register


@register("ew", "equal weighting, sum_i L_i")
class EqualWeighting(LossWeighting):
    """Equal weighting: ``w_i = 1`` for every present task, the update is the gradient of ``sum_i L_i``."""

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        return torch.ones_like(losses)


@register("fixed", "fixed weights per task")
class FixedWeighting(LossWeighting):
    """Fixed weights ``w_i`` given per task name (tasks not named keep weight ``default``).

    Args:
        weights: mapping task name -> weight, or a list in task order.
        default: weight of tasks not named in ``weights``.
    """

    def __init__(self, task_names: Sequence[str] | None = None, weights: dict | Sequence[float] | None = None,
                 default: float = 1.0) -> None:
        super().__init__(task_names)
        names = self.task_names or []
        weights = {} if weights is None else weights
        if not isinstance(weights, dict):
            if len(weights) != len(names):
                raise ArgumentError("weights", f"{len(weights)} weights for {len(names)} tasks")
            weights = dict(zip(names, weights, strict=True))
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ArgumentError("weights", f"unknown tasks {unknown}; tasks: {names}")
        default = number("default", default, minimum=0)
        self.fixed = torch.tensor([number(f"weights.{n}", weights.get(n, default), minimum=0) for n in names])

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        return self.fixed[index].to(losses.device, losses.dtype)
