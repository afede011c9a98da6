"""ConFIG (Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks",
ICLR 2025; arXiv 2024), eq. 2.

The direction is the one with *equal cosine* to every task gradient: with the unit gradients ``U = [g_i /
||g_i||]`` it is ``b = U^+ 1`` (the least-norm solution of ``U x = 1``), normalised, and its length is the
sum of the projections of the gradients on it: ``d = (sum_i g_i . b_u) b_u``, ``b_u = b / ||b||``. The
pseudo-inverse comes from the SVD ``U = P S Q^T`` with torch's default cut-off (``max(t, D) eps s_max``, as
``torch.linalg.pinv``), which also gives the weights on the raw gradients: ``b = U^T c`` with ``c = P S^-2 P^T
1``, so ``d = w^T J`` with ``w_i = (sum_j g_j . b_u) c_i / (||b|| ||g_i||)``. The update is formed as that
combination of the unit rows rather than from the right singular vectors, whose rounding noise (about 1e-6
relative) would reach the coordinates where every gradient is zero - which Adam turns into full steps. Zero
gradients get a zero unit row (weight 0). The weights are reported in float32, clipped to its range (a gradient
tiny next to the others needs a weight beyond it). Stateless, so it works on the gradients of the
representation too (``grad_mode="rep"``, one process); the momentum variant (M-ConFIG) is not included.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graph_mtl.balancers.base import Aggregator
from graph_mtl.balancers.registry import register

NORMALIZE_EPS = 1e-12


def config_update(J: Tensor) -> tuple[Tensor, Tensor]:
    """ConFIG's update ``[D]`` and its weights ``[t]`` on the rows of ``J`` (weights in float64)."""
    norms = J.norm(dim=1)
    units = torch.where(norms.unsqueeze(1) > 0, J / torch.where(norms > 0, norms, 1.0).unsqueeze(1), 0.0)
    P, S, Qh = torch.linalg.svd(units, full_matrices=False)
    cutoff = S.amax() * max(units.shape) * torch.finfo(units.dtype).eps
    inv = torch.where(S > cutoff, 1 / torch.where(S > 0, S, 1.0), 0.0)
    along = P.T @ torch.ones(len(J), dtype=J.dtype, device=J.device)
    best = Qh.T @ (inv * along)  # U^+ 1
    size = best.norm().clamp_min(NORMALIZE_EPS)
    length = (J @ (best / size)).sum()
    # U^T c = U^+ 1: the update as a combination of the unit rows (exactly 0 where every gradient is 0)
    coefficients = P.double() @ (inv.double() ** 2 * along.double()) * (length.double() / size.double())
    w = torch.where(norms > 0, coefficients / torch.where(norms > 0, norms, 1.0).double(), 0.0)
    return coefficients.to(units.dtype) @ units, w


@register("config", "Liu et al. 2024")
class ConFIG(Aggregator):
    """ConFIG (Liu et al. 2024): the direction of equal cosine to every task, with the summed projection as its
    length.

    Args:
    """

    def aggregate(self, J: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        d, w = config_update(J)
        big = torch.finfo(torch.float32).max
        return d, w.clamp(-big, big).float()
