"""CAGrad (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021).

With ``g0`` the mean gradient and ``sqrt(phi) = c ||g0||`` the update is ``d = g0 + sqrt(phi) g_w / ||g_w||``
where ``g_w = J^T w`` and ``w`` solves the dual over the simplex
``min_w  g_w . g0 + sqrt(phi) ||g_w||`` - in Gramian terms ``w^T b + c ||g0|| sqrt(w^T G w)`` with
``b = G 1 / t``, solved by SLSQP in float64 (as the authors do). The weights on the task gradients are
``1/t + lambda w`` with ``lambda = sqrt(phi) / ||g_w||``, divided by ``1 + c^2`` (``rescale=1``, the authors'
default), ``1 + c`` (``rescale=2``) or not at all (``rescale=0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from graph_mtl.balancers.gradient_method import GradientBalancer
from graph_mtl.balancers.registry import register


def cagrad_weights(G: Tensor, c: float = 0.5, rescale: int = 1) -> Tensor:
    """CAGrad's weights on the task gradients whose Gramian is ``G``."""
    t = len(G)
    A = G.detach().double().cpu().numpy()
    b = A.mean(axis=1)
    g0_norm = float(np.sqrt(max(b.mean(), 0.0)))
    root_phi = c * g0_norm
    w = np.full(t, 1.0 / t)
    if t > 1 and root_phi > 0:
        tiny = 1e-12 * max(np.trace(A), 1e-30)

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            Ax = A @ x
            norm = np.sqrt(max(x @ Ax, 0.0) + tiny)
            return float(x @ b + root_phi * norm), b + root_phi * Ax / norm

        result = minimize(objective, w, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * t,
                          constraints=({"type": "eq", "fun": lambda x: x.sum() - 1.0,
                                        "jac": lambda x: np.ones_like(x)},), options={"maxiter": 200})
        w = np.clip(result.x, 0.0, None)
        w = w / w.sum() if w.sum() > 0 else np.full(t, 1.0 / t)
    gw_norm = float(np.sqrt(max(w @ A @ w, 0.0)))
    lam = root_phi / max(gw_norm, 1e-8 * max(g0_norm, 1e-30)) if root_phi > 0 else 0.0
    weights = 1.0 / t + lam * w
    weights = weights / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
    return torch.as_tensor(weights, dtype=G.dtype, device=G.device)


@register("cagrad")
class CAGrad(GradientBalancer):
    """CAGrad (Liu et al. 2021): the best worst-case improvement within a ball around the mean gradient.

    Args:
        c: radius of the ball relative to ``||g0||`` (0.5 by default).
        rescale: 0, 1 (divide by ``1 + c^2``, the authors' default) or 2 (divide by ``1 + c``).
        grad_mode, update_every, chunk_size: see :class:`GradientBalancer`.
    """

    def __init__(self, task_names: Sequence[str], c: float = 0.5, rescale: int = 1, grad_mode: str = "auto",
                 update_every: int = 1, chunk_size: int | None = None) -> None:
        super().__init__(task_names, grad_mode, update_every, chunk_size)
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0:
            raise ValueError(f"balancer_args.c: expected a number >= 0, got {c!r}")
        if rescale not in (0, 1, 2) or isinstance(rescale, bool):
            raise ValueError(f"balancer_args.rescale: expected 0, 1 or 2, got {rescale!r}")
        self.c, self.rescale = float(c), int(rescale)

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return cagrad_weights(gramian, self.c, self.rescale)
