"""MGDA: the multiple-gradient descent algorithm (Desideri 2012; Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization", 2018).

The update is the min-norm point of the convex hull of the task gradients, ``d = J^T w`` with ``w = argmin_{w
in simplex} w^T G w``; ``d`` does not conflict with any task (and is 0 at a Pareto-stationary point). Solved
exactly on the Gramian (:func:`simplex_min_norm`), not with Frank-Wolfe. ``grad_mode="rep"`` gives MGDA-UB,
the paper's upper-bound variant on the shared representation (also registered as ``mgda_ub``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from graph_mtl.balancers.gradient_method import GradientBalancer
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.solvers import simplex_min_norm


def mgda_weights(G: Tensor) -> Tensor:
    """Weights on the simplex of the min-norm point of the hull of the gradients whose Gramian is ``G``."""
    return simplex_min_norm(G).to(G.dtype)


@register("mgda")
class MGDA(GradientBalancer):
    """MGDA (Sener & Koltun 2018): the min-norm convex combination of the task gradients.

    Args:
        grad_mode, update_every, chunk_size: see :class:`GradientBalancer`; ``grad_mode="rep"`` is MGDA-UB.
    """

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return mgda_weights(gramian)


@register("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun 2018): MGDA on the gradients at the shared representation (cheap).

    Args:
        grad_mode, update_every, chunk_size: see :class:`GradientBalancer` (``grad_mode`` defaults to "rep").
    """

    def __init__(self, task_names: Sequence[str], grad_mode: str = "rep", update_every: int = 1,
                 chunk_size: int | None = None) -> None:
        super().__init__(task_names, grad_mode, update_every, chunk_size)
