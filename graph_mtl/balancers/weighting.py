"""Fixed loss weightings: equal weighting (the floor every balancer is compared with) and fixed weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.registry import register


@register("ew")
class EqualWeighting(LossWeighting):
    """Equal weighting: ``w_i = 1`` for every present task, the update is the gradient of ``sum_i L_i``."""

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        return torch.ones_like(losses)


@register("fixed")
class FixedWeighting(LossWeighting):
    """Fixed weights ``w_i`` given per task name (tasks not named keep weight ``default``).

    Args:
        weights: mapping task name -> weight, or a list in task order.
        default: weight of tasks not named in ``weights``.
    """

    def __init__(self, task_names: Sequence[str], weights: dict | Sequence[float] | None = None,
                 default: float = 1.0) -> None:
        super().__init__(task_names)
        if weights is None:
            weights = {}
        if not isinstance(weights, dict):
            if len(weights) != len(task_names):
                raise ValueError(f"balancer_args.weights: {len(weights)} weights for {len(task_names)} tasks")
            weights = dict(zip(task_names, weights, strict=True))
        unknown = sorted(set(weights) - set(task_names))
        if unknown:
            raise ValueError(f"balancer_args.weights: unknown tasks {unknown}; tasks: {list(task_names)}")
        values = [float(weights.get(name, default)) for name in task_names]
        if any(v < 0 for v in values):
            raise ValueError("balancer_args.weights: weights must be >= 0")
        self.fixed = torch.tensor(values)

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        return self.fixed[index].to(losses.device)
