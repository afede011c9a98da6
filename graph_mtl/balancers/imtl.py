"""IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021).

The update ``d = sum_i alpha_i g_i`` (``sum alpha = 1``) has equal projections on every unit gradient ``u_i =
g_i / ||g_i||``. Closed form with ``D = [g_1 - g_i]_{i>1}``, ``U = [u_1 - u_i]_{i>1}``: ``alpha_{2:t} = g_1
U^T (D U^T)^{-1}``, ``alpha_1 = 1 - sum alpha_{2:t}``. Every inner product is an entry of the Gramian scaled
by the norms, so no ``J`` is needed; the pseudo-inverse handles duplicate gradients.

A task whose gradient is exactly zero has no direction ``u_i`` (the paper leaves it undefined): the system is
solved over the tasks with a nonzero gradient and a zero-gradient task gets weight 0. When every gradient is
zero the weights are ``1/t`` (the update is 0 either way). The weights always sum to 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register


def imtl_closed_form(G: Tensor) -> Tensor:
    """IMTL-G's ``alpha`` for a float64 Gramian ``G`` of nonzero gradients (reference task: the first)."""
    if len(G) == 1:
        return torch.ones(1, dtype=G.dtype, device=G.device)
    A = G / G.diagonal().sqrt()  # A[a, b] = g_a . u_b
    gU = A[0, 0] - A[0, 1:]  # g_1 . (u_1 - u_i)
    DU = A[0, 0] - A[0, 1:].unsqueeze(0) - A[1:, 0].unsqueeze(1) + A[1:, 1:]  # (g_1 - g_i) . (u_1 - u_j)
    rest = torch.linalg.pinv(DU.T) @ gU
    return torch.cat([1 - rest.sum().unsqueeze(0), rest])


def imtl_weights(G: Tensor) -> Tensor:
    """IMTL-G's ``alpha`` from the Gramian ``G`` (float64 inside; 0 for zero gradients)."""
    t = len(G)
    Gd = G.double()
    live = (Gd.diagonal() > 0).nonzero().flatten()
    if len(live) == 0:
        return torch.full((t,), 1.0 / t, dtype=G.dtype, device=G.device)
    alpha = torch.zeros(t, dtype=torch.float64, device=G.device)
    alpha[live] = imtl_closed_form(Gd[live][:, live])
    return alpha.to(G.dtype)


@register("imtl", "Liu et al. 2021")
class IMTLG(GramianWeighting):
    """IMTL-G (Liu et al. 2021): the update with equal projections on all unit task gradients."""

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return imtl_weights(gramian)
