"""SDMGrad (Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
Algorithms", NeurIPS 2023).

The direction stays close to a preferred one (the mean gradient, ``w~ = 1/T``) while descending every task:
the weights solve ``min_{w in simplex} 1/2 ||J^T (w + lambda w~)||^2`` approximately, by ``n_iter`` steps of
projected SGD with momentum from the last step's solution,

    v <- momentum v + A (w + lambda w~),     w <- Proj_simplex(w - lr v),

with ``A = G / (mean_i sqrt(G_ii))^2`` (the authors' scale normalisation, so ``lr`` is free of the gradients'
scale), and the update is ``J^T (w + lambda w~) / (1 + lambda)``. The paper estimates ``A = J_1 J_2^T`` from
two independent batches; the step engine gives one batch per step, so this is the single-batch form ``A = J
J^T`` (as torchjd's ``SDMGradWeighting`` on a Gramian, and LibMTL). Defaults: the authors' experiments (and
torchjd, LibMTL): ``lambda = 0.3``, ``n_iter = 20``, ``lr = 10``, ``momentum = 0.5``. Absent tasks keep their
weight; the present ones share the mass they hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import integer, number
from graph_mtl.balancers.modo import SimplexState
from graph_mtl.balancers.registry import register
from graph_mtl.balancers.simplex import project_onto_simplex

SCALE_EPS = 1e-8


@register("sdmgrad", "Xiao et al. 2023")
class SDMGrad(SimplexState):
    """SDMGrad (Xiao et al. 2023): MGDA's problem pulled towards the mean gradient, solved by projected SGD.

    Args:
        lambda_: pull towards the mean gradient.
        n_iter: inner SGD iterations per step.
        lr: inner learning rate.
        momentum: inner momentum.
    """

    def __init__(self, task_names: Sequence[str] | None = None, lambda_: float = 0.3, n_iter: int = 20,
                 lr: float = 10.0, momentum: float = 0.5) -> None:
        super().__init__(task_names)
        self.lambda_ = number("lambda_", lambda_, minimum=0)
        self.n_iter = integer("n_iter", n_iter, minimum=1)
        self.lr = number("lr", lr, above=0)
        self.momentum = number("momentum", momentum, minimum=0, below=1)
        self._init_simplex()

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        w, mass = self._present(index, gramian.device)
        G = gramian.double()
        target = torch.full_like(w, 1 / len(w))
        A = G / (G.diagonal().clamp_min(0).sqrt().mean() ** 2 + SCALE_EPS)
        velocity = torch.zeros_like(w)
        for _ in range(self.n_iter):
            velocity = self.momentum * velocity + A @ (w + self.lambda_ * target)
            w = project_onto_simplex(w - self.lr * velocity)
        self._store(w, mass, index)
        return ((w + self.lambda_ * target) / (1 + self.lambda_)).to(gramian.dtype)
