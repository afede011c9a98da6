"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024).

The update ``d = J^T w`` allocates the decrease ``u_i = g_i . d`` of the tasks with alpha-fair utility
``sum_i u_i^(1-alpha) / (1-alpha)`` (``log u_i`` at ``alpha = 1``); its optimality condition (the paper's
eq. 4) is ``G w = w^(-1/alpha)``, ``w > 0``. That system is the gradient of the strictly convex
``f(w) = 1/2 w^T G w - sum_i h(w_i)`` with ``h' (w) = w^(-1/alpha)``, so it is solved exactly by damped Newton
steps on ``f`` (step kept inside ``w > 0``, Armijo backtracking) in float64 at the Gramian's true scale, from
``w_i = G_ii^(-alpha/(1+alpha))`` (the solution for orthogonal gradients). ``alpha = 0`` is linear
scalarisation with ``w = 1/t`` (Section 3).

Deliberate differences, for degenerate gradients where the system has no solution: a zero gradient gets
weight 0 (its equation ``0 = w_i^(-1/alpha)`` has none and its weight moves nothing), and the Gramian gets the
relative ridge ``reg_eps diag(G)`` so that a Pareto-stationary set (opposite gradients: ``f`` unbounded
below) still gives finite weights. The authors (and torchjd) run a bounded least-squares solver on the same
system instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import integer, number
from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register


def fairgrad_weights(G: Tensor, alpha: float = 1.0, reg_eps: float = 1e-10, max_iter: int = 100,
                     tol: float = 1e-12) -> Tensor:
    """The solution ``w > 0`` of ``(G + reg_eps diag(G)) w = w^(-1/alpha)`` (0 for zero gradients)."""
    t = len(G)
    if alpha == 0:
        return torch.full((t,), 1 / t, dtype=G.dtype, device=G.device)
    Gd = G.double()
    Gd = (Gd + Gd.T) / 2
    diag = Gd.diagonal().clamp_min(0)
    live = diag > 0
    if not bool(live.any()):
        return torch.zeros(t, dtype=G.dtype, device=G.device)
    A = Gd[live][:, live] + reg_eps * torch.diag(diag[live])
    p = 1 / alpha

    def h(w: Tensor) -> Tensor:  # sum_i h(w_i), with h'(w) = w^-p
        return w.log().sum() if p == 1 else (w ** (1 - p)).sum() / (1 - p)

    def f(w: Tensor) -> Tensor:
        return 0.5 * w @ A @ w - h(w)

    w = diag[live] ** (-alpha / (1 + alpha))
    for _ in range(max_iter):
        grad = A @ w - w ** -p
        if bool((grad.abs() <= tol * w ** -p).all()):
            break
        hess = A + torch.diag(p * w ** (-p - 1))
        step = -torch.linalg.solve(hess, grad)
        shrink = step < 0
        s = min(1.0, 0.99 * float((w[shrink] / -step[shrink]).min())) if bool(shrink.any()) else 1.0
        f0, slope = f(w), float(grad @ step)
        while s > 1e-12 and float(f(w + s * step)) > float(f0) + 1e-4 * s * slope:
            s /= 2
        w = w + s * step
    out = torch.zeros(t, dtype=torch.float64, device=G.device)
    out[live] = w
    return out.to(G.dtype)


@register("fairgrad", "Ban & Ji 2024")
class FairGrad(GramianWeighting):
    """FairGrad (Ban & Ji 2024): alpha-fair allocation of the tasks' loss decreases, ``G w = w^(-1/alpha)``.

    Args:
        alpha: the fairness degree (0: equal weights; 1: proportional fairness; large: max-min fairness).
        reg_eps: relative ridge ``reg_eps diag(G)`` added to the Gramian.
        max_iter: Newton iterations at most.
    """

    def __init__(self, task_names: Sequence[str] | None = None, alpha: float = 1.0, reg_eps: float = 1e-10,
                 max_iter: int = 100) -> None:
        super().__init__(task_names)
        self.alpha = number("alpha", alpha, minimum=0)
        self.reg_eps = number("reg_eps", reg_eps, minimum=0)
        self.max_iter = integer("max_iter", max_iter, minimum=1)

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return fairgrad_weights(gramian, self.alpha, self.reg_eps, self.max_iter)
