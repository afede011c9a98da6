"""IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021).

The update ``d = sum_i alpha_i g_i`` (``sum alpha = 1``) has equal projections on every unit gradient ``u_i =
g_i / ||g_i||``. Closed form with ``D = [g_1 - g_i]_{i>1}``, ``U = [u_1 - u_i]_{i>1}``: ``alpha_{2:t} = g_1
U^T (D U^T)^{-1}``, ``alpha_1 = 1 - sum alpha_{2:t}``. Every inner product is an entry of the Gramian scaled
by the norms, so no ``J`` is needed; the pseudo-inverse handles duplicate or zero gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graph_mtl.balancers.gradient_method import GradientBalancer
from graph_mtl.balancers.registry import register


def imtl_weights(G: Tensor) -> Tensor:
    """IMTL-G's ``alpha`` from the Gramian ``G`` (float64 inside)."""
    t = len(G)
    if t == 1:
        return torch.ones(1, dtype=G.dtype, device=G.device)
    Gd = G.double()
    norms = Gd.diagonal().clamp_min(0).sqrt()
    inv = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1.0), 0.0)
    A = Gd * inv  # A[a, b] = g_a . u_b
    gU = A[0, 0] - A[0, 1:]  # g_1 . (u_1 - u_i)
    DU = A[0, 0] - A[0, 1:].unsqueeze(0) - A[1:, 0].unsqueeze(1) + A[1:, 1:]  # (g_1 - g_i) . (u_1 - u_j)
    rest = torch.linalg.pinv(DU.T) @ gU
    return torch.cat([1 - rest.sum().unsqueeze(0), rest]).to(G.dtype)


@register("imtl")
class IMTLG(GradientBalancer):
    """IMTL-G (Liu et al. 2021): the update with equal projections on all unit task gradients.

    Args:
        grad_mode, update_every, chunk_size: see :class:`GradientBalancer`.
    """

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return imtl_weights(gramian)
