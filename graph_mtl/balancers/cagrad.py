"""CAGrad (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021).

With ``g0`` the mean gradient and ``sqrt(phi) = c ||g0||`` the update is ``d = g0 + sqrt(phi) g_w / ||g_w||``
where ``g_w = J^T w`` and ``w`` solves the dual over the simplex
``min_w  g_w . g0 + sqrt(phi) ||g_w||`` - in Gramian terms ``w^T b + c ||g0|| sqrt(w^T G w)`` with
``b = G 1 / t``, solved by SLSQP in float64 (as the authors do) on ``G / tr(G)``: the weights do not depend on
the scale of ``G``, so the solver sees the same problem at any gradient scale. The weights on the task
gradients are ``1/t + lambda w`` with ``lambda = sqrt(phi) / ||g_w||``, divided by ``1 + c^2``
(``rescale=1``, the authors' default), ``1 + c`` (``rescale=2``) or not at all (``rescale=0``).

Degenerate inputs (deliberate, the paper leaves them undefined):

* A task whose gradient is exactly zero cannot be improved by any ``d``, and in the dual it would take all of
  ``w`` (``g_w = 0``, so ``lambda`` is infinite). The dual is solved over the tasks with a nonzero gradient
  only, while ``g0`` stays the mean over all tasks as in the paper: a zero-gradient task keeps the
  mean-gradient part ``1/t`` of its weight (divided as above) and nothing more; it adds nothing to ``d``.
* Where the dual's optimum has ``g_w = 0`` (e.g. two opposite gradients) the direction ``g_w / ||g_w||`` is
  undefined; below ``||g_w|| = 1e-6 sqrt(tr G)`` (far above the solver's resolution, about ``1e-8``) the update
  is the mean gradient (``lambda = 0``), so no weight grows like ``1 / ||g_w||``. A gradient shorter than
  that is never taken as the worst-case direction.
* ``G = 0`` or ``g0 = 0``: the mean gradient, weights ``1/t``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from graph_mtl.balancers.args import choice, number
from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register

#: smoothing of ``||g_w||`` in the dual, relative to ``sqrt(tr G)`` (the objective is not differentiable at 0)
SMOOTH = 1e-9
#: the norm of ``g_w`` below which it counts as 0, relative to ``sqrt(tr G)``
FLAT = 1e-6


def cagrad_dual(A: np.ndarray, b: np.ndarray, root_phi: float) -> np.ndarray:
    """``argmin_{w in simplex} w^T b + root_phi sqrt(w^T A w)`` (SLSQP from ``w = 1/n``)."""
    n = len(b)
    if n == 1:
        return np.ones(1)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        Ax = A @ x
        norm = np.sqrt(max(x @ Ax, 0.0) + SMOOTH**2)
        return float(x @ b + root_phi * norm), b + root_phi * Ax / norm

    result = minimize(objective, np.full(n, 1.0 / n), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * n,
                      constraints=({"type": "eq", "fun": lambda x: x.sum() - 1.0,
                                    "jac": lambda x: np.ones_like(x)},),
                      options={"maxiter": 500, "ftol": 1e-15})
    w = np.clip(result.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)


def cagrad_weights(G: Tensor, c: float = 0.5, rescale: int = 1) -> Tensor:
    """CAGrad's weights on the task gradients whose Gramian is ``G``."""
    t = len(G)
    A = G.detach().double().cpu().numpy()
    A = (A + A.T) / 2
    trace = float(np.trace(A))
    weights = np.full(t, 1.0 / t)
    if trace > 0:
        A = A / trace
        b = A.mean(axis=1)  # b_i = g_i . g0, g0 the mean over ALL tasks
        root_phi = c * float(np.sqrt(max(b.mean(), 0.0)))
        live = np.diagonal(A) > 0  # tasks with a nonzero gradient
        if root_phi > 0:
            sub = A[np.ix_(live, live)]
            w = cagrad_dual(sub, b[live], root_phi)
            gw_norm = float(np.sqrt(max(w @ sub @ w, 0.0)))
            if gw_norm > FLAT:
                weights[live] += root_phi / gw_norm * w
    weights = weights / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
    return torch.as_tensor(weights, dtype=G.dtype, device=G.device)


@register("cagrad", "Liu et al. 2021")
class CAGrad(GramianWeighting):
    """CAGrad (Liu et al. 2021): the best worst-case improvement within a ball around the mean gradient.

    Args:
        c: radius of the ball relative to ``||g0||`` (0.5 by default).
        rescale: 0, 1 (divide by ``1 + c^2``, the authors' default) or 2 (divide by ``1 + c``).
    """

    def __init__(self, task_names: Sequence[str] | None = None, c: float = 0.5, rescale: int = 1) -> None:
        super().__init__(task_names)
        self.c = number("c", c, minimum=0)
        self.rescale = int(choice("rescale", rescale, (0, 1, 2)))

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return cagrad_weights(gramian, self.c, self.rescale)
