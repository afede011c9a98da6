"""IMTL-L and the full IMTL (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task
Learning", ICLR 2021).

IMTL-L learns a scale ``s_i`` per task and trains on ``sum_i (e^(s_i) L_i - s_i)``: the network steps on the
loss weighting ``w_i = e^(s_i)`` and the scales on their gradient ``e^(s_i) L_i - 1`` (zero when the scaled
loss is 1: every scaled loss is driven to the same value). The scales are the method's own vector (initial 0,
stepped by its own ``adam``/``sgd`` with ``lr``), the gradient a joint optimizer would see with a separate
learning rate.

The full IMTL (the paper's IMTL = IMTL-L + IMTL-G) applies IMTL-G to the gradients of the scaled losses,
``e^(s_i) g_i``, whose Gramian is ``D G D`` with ``D = diag(e^s)``: the shared update is ``sum_i alpha_i e^(s_i)
g_i`` with ``alpha = imtl_weights(D G D)``, so its weights on the raw gradients are ``w_i = alpha_i e^(s_i)``.
Deliberate difference: the heads get the plain gradient of their own loss (the step engine's rule for
Gramian methods), where the paper's heads see the scaled loss ``e^(s_i) L_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.base import GramianWeighting, LossWeighting, Method
from graph_mtl.balancers.imtl import imtl_weights
from graph_mtl.balancers.learned import LearnedVector
from graph_mtl.balancers.registry import register


class _LearnedScales(Method):
    """The loss scales ``s`` of IMTL-L: ``e^(s_i)`` for the present tasks, then one step of ``s``.

    Args:
        lr: learning rate of the scales' optimizer.
        optimizer: ``"adam"`` or ``"sgd"``.
    """

    def __init__(self, task_names: Sequence[str] | None = None, lr: float = 0.01, optimizer: str = "adam") -> None:
        super().__init__(task_names)
        self.log_scale = LearnedVector(torch.zeros(self.num_tasks), lr, optimizer)

    def _scales(self, losses: Tensor, index: list[int]) -> Tensor:
        s = self.log_scale.on(losses.device)
        scale = torch.exp(s[index])
        grad = torch.zeros_like(s)
        grad[index] = scale * losses.float() - 1  # d/ds_i of e^(s_i) L_i - s_i
        self.log_scale.step(grad)
        return scale

    def state_dict(self) -> dict:
        return {"log_scale": self.log_scale.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.log_scale.load_state_dict(state["log_scale"])


@register("imtl_l", "Liu et al. 2021")
class IMTLL(_LearnedScales, LossWeighting):
    """IMTL-L (Liu et al. 2021): learned loss scales ``w_i = e^(s_i)`` that equalise the scaled losses.
    Arguments: ``lr``, ``optimizer`` (of the scales' optimizer).
    """

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        return self._scales(losses, index).to(losses.dtype)


@register("imtl_full", "Liu et al. 2021")
class IMTL(_LearnedScales, GramianWeighting):
    """IMTL (Liu et al. 2021): IMTL-G on the gradients of the IMTL-L-scaled losses. Arguments: ``lr``, ``optimizer``
    (of the scales' optimizer).
    """

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        scale = self._scales(losses, index).to(gramian)
        return imtl_weights(gramian * scale.unsqueeze(0) * scale.unsqueeze(1)) * scale
