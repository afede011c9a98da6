"""GLS, the geometric loss strategy (Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019).

The objective is the geometric mean of the task losses, ``(prod_i L_i)^(1/t)``, whose gradient is the loss
weighting ``w_i = (prod_j L_j)^(1/t) / (t L_i)`` - the scale of each loss cancels, as in training on ``sum_i
log L_i`` but with the common factor of the geometric mean. Computed in log space (``exp(mean_j log L_j - log
L_i) / t``, float64) so that no product overflows; ``eps`` is added to the losses (negative losses, which the
method does not define, are taken as 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import LossWeighting
from graph_mtl.balancers.registry import register


@register("gls", "Chennupati et al. 2019")
class GLS(LossWeighting):
    """Geometric loss strategy (Chennupati et al. 2019): descend the geometric mean of the losses.

    Args:
        eps: added to the losses before the logarithm.
    """

    def __init__(self, task_names: Sequence[str] | None = None, eps: float = 1e-8) -> None:
        super().__init__(task_names)
        self.eps = number("eps", eps, above=0)

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        log = torch.log(losses.detach().double().clamp_min(0) + self.eps)
        return (torch.exp(log.mean() - log) / len(log)).to(losses.dtype)
