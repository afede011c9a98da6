"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022).

The bargaining solution is ``d = J^T alpha`` with ``alpha > 0`` solving ``alpha_i (G alpha)_i = 1`` on the raw
Gramian, so ``||d||^2 = alpha^T G alpha = t``. With ``beta = diag(||g_i||) alpha`` and ``C`` the matrix of
cosines (``C_ij = G_ij / (||g_i|| ||g_j||)``, unit diagonal) the same system reads ``beta_i (C beta)_i = 1``:
it is solved in that scale-free form and ``alpha_i = beta_i / ||g_i||``, so the answer is exact at any
relative scale of the gradients (``d = sum_i beta_i u_i`` depends on their directions only: the bargaining
solution is invariant to rescaling a task's utility). The authors divide ``G`` by its Frobenius norm instead,
which leaves a gradient 1e-4 times shorter than the longest below their solver's tolerance. ``beta`` is the
stationary point of the strictly convex ``1/2 b^T (C + eps I) b - sum_i log b_i``, minimised by damped Newton
steps in float64 warm-started at the previous solution (the authors approximate the same point with a few
convex programs); the ridge ``eps`` (relative to every row; it moves the solution by about ``eps``) keeps the
problem bounded where no solution exists (no direction improves every task, e.g. two opposite gradients).
Their ``max_norm`` clipping of the shared update is applied to the weights: ``alpha *= min(1, max_norm /
||d||)`` (0 turns it off). Tasks whose gradient is exactly zero cannot bargain (``alpha_i (G alpha)_i = 0``):
they get weight 0 and the others solve the game among themselves (all zero: ``alpha = 0``). Deliberate
difference: heads get the plain gradient of their own loss, not ``alpha_i`` times it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register


def nash_solve(Q: Tensor, start: Tensor, iters: int = 100) -> Tensor:
    """``a > 0`` with ``Q a = 1 / a`` for a positive-definite ``Q`` (damped Newton on the convex potential)."""
    a = start.clamp_min(1e-6)

    def potential(x: Tensor) -> Tensor:
        return 0.5 * x @ Q @ x - x.log().sum()

    for _ in range(iters):
        grad = Q @ a - 1 / a
        if grad.abs().max() <= 1e-10 * (1 + (1 / a).abs().max()):
            break
        direction = torch.linalg.solve(Q + torch.diag(1 / a**2), grad)
        size, f0, slope = 1.0, potential(a), grad @ direction
        while size > 1e-12:
            trial = a - size * direction
            if (trial > 0).all() and potential(trial) <= f0 - 1e-4 * size * slope:
                break
            size /= 2
        else:
            break
        a = trial
    return a


def nash_solution(G: Tensor, start: Tensor | None = None, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """``(alpha, beta)``: Nash-MTL's weights for the raw Gramian ``G`` (0 for zero gradients) and the solution
    ``beta = diag(||g_i||) alpha`` of the scale-free system, which warm-starts the next solve (``start``)."""
    t = len(G)
    Gd = G.detach().double().cpu()
    norms = Gd.diagonal().clamp_min(0).sqrt()
    alpha, beta = torch.zeros(t, dtype=torch.float64), torch.zeros(t, dtype=torch.float64)
    idx = (norms > 0).nonzero().flatten()
    if len(idx) == 0:
        return alpha, beta
    n = norms[idx]
    C = Gd[idx][:, idx] / n.unsqueeze(0) / n.unsqueeze(1)
    Q = (C + C.T) / 2 + eps * torch.eye(len(idx), dtype=torch.float64)
    b0 = torch.ones(len(idx), dtype=torch.float64) if start is None else start.detach().double().cpu()[idx]
    beta[idx] = nash_solve(Q, torch.where(b0 > 0, b0, 1.0))
    alpha[idx] = beta[idx] / n
    return alpha, beta


def clip_update(alpha: Tensor, G: Tensor, max_norm: float) -> Tensor:
    """``alpha`` scaled so that ``||J^T alpha|| = sqrt(alpha^T G alpha) <= max_norm`` (0: unchanged)."""
    if max_norm <= 0:
        return alpha
    norm = (alpha @ G.double().cpu() @ alpha).clamp_min(0).sqrt()
    return alpha * torch.clamp(max_norm / norm, max=1.0) if norm > 0 else alpha


def nash_weights(G: Tensor, start: Tensor | None = None, eps: float = 1e-6, max_norm: float = 0.0) -> Tensor:
    """Nash-MTL's ``alpha`` for the raw Gramian ``G``, clipped to ``||d|| <= max_norm`` (0: no clipping)."""
    alpha, _ = nash_solution(G, start, eps)
    return clip_update(alpha, G, max_norm).to(G.dtype).to(G.device)


@register("nashmtl", "Navon et al. 2022")
class NashMTL(GramianWeighting):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution ``alpha_i (G alpha)_i = 1``.

    Args:
        eps: ridge added to the matrix of cosines of the task gradients.
        max_norm: clip the norm of the shared update to this (the authors' default 1; 0: no clipping).
    """

    def __init__(self, task_names: Sequence[str] | None = None, eps: float = 1e-6, max_norm: float = 1.0) -> None:
        super().__init__(task_names)
        self.eps = number("eps", eps, above=0)
        self.max_norm = number("max_norm", max_norm, minimum=0)
        self.start: Tensor | None = None  # the last scale-free solution beta over all tasks (warm start)

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        t = self.num_tasks if self.task_names is not None else len(gramian)
        if self.start is None or len(self.start) != t:
            self.start = torch.ones(t, dtype=torch.float64)
        alpha, beta = nash_solution(gramian, self.start[index], self.eps)
        self.start[index] = torch.where(beta > 0, beta, self.start[index])
        return clip_update(alpha, gramian, self.max_norm).to(gramian.dtype).to(gramian.device)

    def state_dict(self) -> dict:
        return {"start": None if self.start is None else self.start.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.start = None if state["start"] is None else state["start"].clone()
