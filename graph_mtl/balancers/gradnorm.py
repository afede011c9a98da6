"""GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing", ICML 2018).

``W`` = the last shared layer (``last_shared_params``). Each step, with learnable weights ``w``
(``w(0) = 1``):

* ``G_i = ||grad_W (w_i L_i)|| = |w_i| ||grad_W L_i||``, ``Gbar = mean_i G_i``;
* ``Ltilde_i = L_i(t) / L_i(0)`` with ``L_i(0)`` the task's loss at the first step it is present,
  ``r_i = Ltilde_i / mean_j Ltilde_j``;
* ``L_grad = sum_i |G_i - stopgrad(Gbar r_i^alpha)|`` (exponent ``+alpha``), differentiated w.r.t. ``w`` only
  and stepped by the balancer's own optimizer (``lr``);
* the network gets the gradient of ``sum_i w_i L_i`` (heads included, a loss weighting), with the weights of
  the step before their update;
* after every step ``w`` is renormalised so that ``sum_i w_i = T``.

The per-task gradient norms at ``W`` come from one batched vector-Jacobian product restricted to ``W``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from graph_mtl.balancers.base import Balancer, scaled
from graph_mtl.balancers.gradients import JacobianEngine, fp32_math, trainable
from graph_mtl.balancers.learned import LearnedVector
from graph_mtl.balancers.registry import register


def gradnorm_loss(w: Tensor, norms: Tensor, ratios: Tensor, alpha: float) -> Tensor:
    """``L_grad = sum_i |G_i - stopgrad(Gbar r_i^alpha)|``, ``G_i = |w_i| norms_i``, ``r = ratios/mean``."""
    G = w.abs() * norms
    mean = ratios.mean()
    r = torch.where(mean > 0, ratios / torch.where(mean > 0, mean, 1.0), torch.ones_like(ratios))
    target = (G.mean() * r.pow(alpha)).detach()
    return (G - target).abs().sum()


@register("gradnorm")
class GradNorm(Balancer):
    """GradNorm (Chen et al. 2018), exact as in the module docstring.

    Args:
        alpha: the asymmetry ``alpha`` of the target ``Gbar r_i^alpha``.
        lr: learning rate of the weights' own optimizer.
        optimizer: ``"adam"`` or ``"sgd"`` for the weights.
        chunk_size: tasks per batched vector-Jacobian product at ``W``.
    """

    def __init__(self, task_names: Sequence[str], alpha: float = 1.5, lr: float = 0.025,
                 optimizer: str = "adam", chunk_size: int | None = None) -> None:
        super().__init__(task_names)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"balancer_args.alpha: expected a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.w = LearnedVector(torch.ones(self.num_tasks), lr, optimizer)
        self.initial = torch.full((self.num_tasks,), float("nan"))  # L_i(0); NaN until task i is first seen
        self.engine = JacobianEngine(chunk_size)

    def backward(self, losses: dict[str, Tensor], *, shared_params: Iterable[nn.Parameter] | None = None,
                 representation: Tensor | Sequence[Tensor] | None = None,
                 task_params: dict[str, Iterable[nn.Parameter]] | None = None,
                 last_shared_params: Iterable[nn.Parameter] | None = None,
                 grad_scale: float | Tensor | None = None) -> Tensor:
        index, stacked = self.present(losses)
        W = trainable(last_shared_params)
        if not W:
            raise ValueError("gradnorm: needs last_shared_params, the parameters of the last shared layer W")
        device = stacked.device
        w_all = self.w.on(device)
        detached = stacked.detach().float()
        initial = self.initial.to(device)
        initial[index] = torch.where(torch.isnan(initial[index]), detached, initial[index])
        self.initial = initial
        stacked = scaled(stacked, grad_scale)
        J = self.engine.jacobian(self.separate(losses, index, grad_scale), W)  # graph retained
        if self.sync is not None:
            J = self.sync.sum(J, "jacobian")  # the global batch's gradients at W
        norms = J.float().norm(dim=1)  # ||grad_W L_i||
        if grad_scale is not None:
            norms = norms / grad_scale  # unscaled: L_grad is not scale-equivariant
        w_step = w_all.detach()[index].clone()
        (w_step.to(stacked.dtype) * stacked).sum().backward()  # the network: sum_i w_i L_i
        with fp32_math(device), torch.enable_grad():
            init = initial[index]
            ratios = torch.where(init > 0, detached / torch.where(init > 0, init, 1.0), torch.ones_like(init))
            loss = gradnorm_loss(w_all[index], norms, ratios, self.alpha)
            grad = torch.autograd.grad(loss, w_all)[0]  # L_grad reaches the weights only
        self.w.step(grad)
        with torch.no_grad():
            w_all.mul_(self.num_tasks / w_all.sum())
        return self.full_weights(index, w_step)

    @property
    def task_weights(self) -> Tensor:
        """The current weights ``w [T]`` (sum ``T``)."""
        return self.w.param.detach().clone()

    def state_dict(self) -> dict:
        return {"w": self.w.state_dict(), "initial": self.initial.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.w.load_state_dict(state["w"])
        self.initial = state["initial"].clone()

    def __repr__(self) -> str:
        return f"GradNorm(tasks={self.num_tasks}, alpha={self.alpha})"
