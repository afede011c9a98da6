"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018).

``W`` = the last shared layer; the engine gives the Gramian ``G_W`` of the per-task gradients there, so
``||grad_W L_i|| = sqrt(G_W[i, i])``. Each step, with learnable weights ``w`` (``w(0) = 1``):

* ``G_i = ||grad_W (w_i L_i)|| = |w_i| ||grad_W L_i||``, ``Gbar = mean_i G_i``;
* ``Ltilde_i = L_i(t) / L_i(0)`` with ``L_i(0)`` the task's loss at the first step it is present,
  ``r_i = Ltilde_i / mean_j Ltilde_j``;
* ``L_grad = sum_i |G_i - stopgrad(Gbar r_i^alpha)|`` (exponent ``+alpha``), whose gradient with respect to
  ``w_i`` is ``sign(G_i - target_i) sign(w_i) ||grad_W L_i||``, stepped by the method's own optimizer (``lr``);
* the network gets the gradient of ``sum_i w_i L_i`` (heads included), with the weights of the step before
  their update;
* after every step ``w`` is renormalised so that ``sum_i w_i = T``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import number
from graph_mtl.balancers.base import LastLayerWeighting
from graph_mtl.balancers.learned import LearnedVector
from graph_mtl.balancers.registry import register


def gradnorm_loss(w: Tensor, norms: Tensor, ratios: Tensor, alpha: float) -> Tensor:
    """``L_grad = sum_i |G_i - stopgrad(Gbar r_i^alpha)|``, ``G_i = |w_i| norms_i``, ``r = ratios/mean``."""
    G = w.abs() * norms
    return (G - gradnorm_target(G, ratios, alpha)).abs().sum()


def gradnorm_target(G: Tensor, ratios: Tensor, alpha: float) -> Tensor:
    """``Gbar r_i^alpha`` with ``r = ratios / mean(ratios)`` (1 where the mean is not positive)."""
    mean = ratios.mean()
    r = torch.where(mean > 0, ratios / torch.where(mean > 0, mean, 1.0), torch.ones_like(ratios))
    return (G.mean() * r.pow(alpha)).detach()


def gradnorm_grad(w: Tensor, norms: Tensor, ratios: Tensor, alpha: float) -> Tensor:
    """``dL_grad/dw`` in closed form (the target is held constant)."""
    G = w.abs() * norms
    return torch.sign(G - gradnorm_target(G, ratios, alpha)) * torch.sign(w) * norms


@register("gradnorm", "Chen et al. 2018")
class GradNorm(LastLayerWeighting):
    """GradNorm (Chen et al. 2018): learned loss weights that equalise the gradient norms at ``W``.

    Args:
        alpha: the asymmetry ``alpha`` of the target ``Gbar r_i^alpha``.
        lr: learning rate of the weights' own optimizer.
        optimizer: ``"adam"`` or ``"sgd"`` for the weights.
    """

    def __init__(self, task_names: Sequence[str] | None = None, alpha: float = 1.5, lr: float = 0.025,
                 optimizer: str = "adam") -> None:
        super().__init__(task_names)
        self.alpha = number("alpha", alpha, minimum=0)
        self.w = LearnedVector(torch.ones(self.num_tasks), lr, optimizer)
        self.initial = torch.full((self.num_tasks,), float("nan"))  # L_i(0); NaN until task i is first seen

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        losses = losses.float()
        w_all = self.w.on(losses.device)
        initial = self.initial.to(losses.device)
        initial[index] = torch.where(torch.isnan(initial[index]), losses, initial[index])
        self.initial = initial
        norms = gramian.diagonal().clamp_min(0).sqrt().float()  # ||grad_W L_i||
        w_step = w_all[index].clone()
        init = initial[index]
        ratios = torch.where(init > 0, losses / torch.where(init > 0, init, 1.0), torch.ones_like(init))
        grad = torch.zeros_like(w_all)
        grad[index] = gradnorm_grad(w_step, norms, ratios, self.alpha)
        self.w.step(grad)
        w_all.mul_(self.num_tasks / w_all.sum())
        return w_step

    @property
    def task_weights(self) -> Tensor:
        """The current weights ``w [T]`` (sum ``T``)."""
        return self.w.value.clone()

    def state_dict(self) -> dict:
        return {"w": self.w.state_dict(), "initial": self.initial.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.w.load_state_dict(state["w"])
        self.initial = state["initial"].clone()

    def __repr__(self) -> str:
        return f"GradNorm(tasks={self.num_tasks}, alpha={self.alpha})"
