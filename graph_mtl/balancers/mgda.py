"""MGDA: the multiple-gradient descent algorithm (Desideri 2012; Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization", 2018).

The update is the min-norm point of the convex hull of the task gradients, ``d = J^T w`` with ``w = argmin_{w
in simplex} w^T G w``; ``d`` does not conflict with any task (``g_i . d >= ||d||^2``, with equality where
``w_i > 0``) and is 0 at a Pareto-stationary point. Solved exactly on the Gramian at any relative scale of the
gradients (:func:`simplex_min_norm`), not with Frank-Wolfe. On the gradients at the shared representation it
is the paper's upper-bound variant MGDA-UB (registered as ``mgda_ub``, whose default ``grad_mode`` is
``"rep"``).
"""

from __future__ import annotations

from torch import Tensor

from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.solvers import simplex_min_norm


def mgda_weights(G: Tensor) -> Tensor:
    """Weights on the simplex of the min-norm point of the hull of the gradients whose Gramian is ``G``."""
    return simplex_min_norm(G).to(G.dtype)


@register("mgda", "Sener & Koltun 2018")
class MGDA(GramianWeighting):
    """MGDA (Sener & Koltun 2018): the min-norm convex combination of the task gradients."""

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return mgda_weights(gramian)


@register("mgda_ub", "Sener & Koltun 2018, upper bound")
class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun 2018): MGDA on the gradients at the shared representation (cheap)."""

    default_grad_mode = "rep"
