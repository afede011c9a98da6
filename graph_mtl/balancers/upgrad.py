"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024; torchjd's aggregator).

Each row ``g_i`` (weighted by the preference ``1/t``) is projected onto the dual cone of the rows ``{x : J x
>= 0}`` and the projections are summed. By the paper's Proposition 1 the projection of ``J^T u`` is ``J^T v``
with ``v = argmin_{v >= u} v^T G v``, so everything happens on the Gramian: ``G`` is normalised by its trace
(``norm_eps``) and regularised by ``reg_eps I`` as in torchjd, and the ``t`` box-constrained quadratic
programs are solved together by block principal pivoting (:func:`nonneg_qp`). The result conflicts with no
task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.solvers import nonneg_qp


def dual_cone_weights(G: Tensor, U: Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Tensor:
    """The weights ``v_b = argmin_{v >= u_b} v^T G v`` of the projections of ``J^T u_b`` onto the dual cone, for
    each row of ``U [B, t]`` (``G`` normalised by its trace and ridged by ``reg_eps I``, float64 inside)."""
    t = len(G)
    Gd = G.double()
    trace = Gd.diagonal().sum()
    Gd = torch.where(trace >= norm_eps, Gd / trace.clamp_min(norm_eps), torch.zeros_like(Gd))
    Q = Gd + reg_eps * torch.eye(t, dtype=Gd.dtype, device=Gd.device)
    U = U.to(Q)
    # v = u + x with x >= 0:  min 1/2 x^T Q x + (Q u)^T x
    X = nonneg_qp(Q, U @ Q, free=torch.zeros_like(U, dtype=torch.bool))
    return U + X


def upgrad_weights(G: Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Tensor:
    """UPGrad's weights: ``sum_b v_b`` with ``v_b = argmin_{v >= e_b / t} v^T G v``."""
    U = torch.eye(len(G), dtype=torch.float64, device=G.device) / len(G)
    return dual_cone_weights(G, U, norm_eps, reg_eps).sum(dim=0).to(G.dtype)


@register("upgrad", "Quinton & Rey 2024")
class UPGrad(GramianWeighting):
    """UPGrad (Quinton & Rey 2024): the mean of the projections of the task gradients onto the dual cone.

    Args:
        norm_eps: trace below which the Gramian is taken as zero.
        reg_eps: ridge added to the normalised Gramian.
    """

    def __init__(self, task_names: Sequence[str] | None = None, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        super().__init__(task_names)
        self.norm_eps = number("norm_eps", norm_eps, above=0)
        self.reg_eps = number("reg_eps", reg_eps, above=0)

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return upgrad_weights(gramian, self.norm_eps, self.reg_eps)
