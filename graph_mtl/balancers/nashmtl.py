"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022).

The bargaining solution is ``d = J^T alpha`` with ``alpha > 0`` solving ``G alpha = 1 / alpha``. That system
is the stationarity condition of the strictly convex ``f(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i``,
which is minimised here by damped Newton steps in float64 (no cvxpy; the authors approximate the same point
with a sequence of convex programs). As in the authors' code ``G`` is first divided by its Frobenius norm, the
previous ``alpha`` warm-starts the solve, and ``eps I`` is added to ``G`` so that a zero or opposite gradient
pair (no exact solution) still gives finite weights. The authors also clip the shared gradient norm to 1; that
is left to the trainer's ``grad_clip``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.gradient_method import GradientBalancer
from graph_mtl.balancers.registry import register


def nash_weights(G: Tensor, start: Tensor | None = None, eps: float = 1e-6, iters: int = 100) -> Tensor:
    """``alpha > 0`` with ``(G / ||G||_F + eps I) alpha = 1 / alpha`` (Newton on the convex potential)."""
    t = len(G)
    Gd = G.detach().double().cpu()
    frob = torch.linalg.matrix_norm(Gd)
    if not frob > 0:
        return torch.full((t,), (1 / eps) ** 0.5, dtype=G.dtype, device=G.device)
    Q = Gd / frob + eps * torch.eye(t, dtype=torch.float64)
    a = torch.ones(t, dtype=torch.float64) if start is None else start.detach().double().cpu().clamp_min(1e-6)

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
    return a.to(G.dtype).to(G.device)


@register("nashmtl")
class NashMTL(GradientBalancer):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution ``G alpha = 1 / alpha``.

    Args:
        eps: ridge added to the normalised Gramian.
        grad_mode, update_every, chunk_size: see :class:`GradientBalancer` (the authors update every step).
    """

    def __init__(self, task_names: Sequence[str], eps: float = 1e-6, grad_mode: str = "auto",
                 update_every: int = 1, chunk_size: int | None = None) -> None:
        super().__init__(task_names, grad_mode, update_every, chunk_size)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"balancer_args.eps: expected a number > 0, got {eps!r}")
        self.eps = float(eps)
        self.alpha = torch.ones(self.num_tasks)  # warm start

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        alpha = nash_weights(gramian, self.alpha[index], self.eps)
        self.alpha[index] = alpha.detach().cpu().float()
        return alpha

    def extra_state(self) -> dict:
        return {"alpha": self.alpha.clone()}

    def load_extra_state(self, state: dict) -> None:
        self.alpha = state["alpha"].clone()
