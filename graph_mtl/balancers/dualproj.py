"""DualProj (torchjd's aggregator; the projection of Lopez-Paz & Ranzato, "Gradient Episodic Memory for
Continual Learning", NeurIPS 2017, eq. 11).

The mean ``J^T u`` (``u = 1/t``) of the task gradients is projected onto the dual cone ``{x : J x >= 0}`` of
the rows. By Proposition 1 of Quinton & Rey (2024) the projection is ``J^T v`` with ``v = argmin_{v >= u}
v^T G v``, so it is solved on the Gramian alone: ``G`` is normalised by its trace (``norm_eps``) and
regularised by ``reg_eps I`` as in torchjd, and the box-constrained program is solved exactly by block
principal pivoting (:func:`nonneg_qp`). Unlike UPGrad, which projects every row and averages, DualProj
projects the average once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graph_mtl.balancers.registry import register
from graph_mtl.balancers.upgrad import UPGrad, dual_cone_weights


@register("dualproj", "Lopez-Paz & Ranzato 2017 (torchjd)")
class DualProj(UPGrad):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients (UPGrad's arguments)."""

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        u = torch.full((1, len(gramian)), 1 / len(gramian), dtype=torch.float64, device=gramian.device)
        return dual_cone_weights(gramian, u, self.norm_eps, self.reg_eps)[0].to(gramian.dtype)
