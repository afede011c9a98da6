"""A drop-in ``PCGrad(optimizer)`` for code written against the popular PyTorch port (``pc_backward``).

Same API, done right: the parameters that receive gradient from more than one loss (the shared ones) get the
PCGrad update (Yu et al. 2020, Alg. 1, a fresh random permutation per task, projections against the original
gradients, zero-norm gradients skipped); a parameter used by a single loss (a head) keeps its plain gradient;
``reduction="sum"`` (the paper) works as well as ``"mean"``; the surgery runs on the Gramian with tensor ops
(no host-device sync per task pair); the per-task gradients come from one batched vector-Jacobian product.
It is the ``pcgrad`` method itself (same seed, same update), outside the training engine.

Which loss uses which parameter is read from the autograd graph at every call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.pcgrad import PCGrad as PCGradMethod
from graph_mtl.engine.gradients import (
    JacobianEngine,
    accumulate,
    accumulate_grads,
    fp32_math,
    gramian,
    leaf_parameters,
    trainable,
)


class PCGrad:
    """Wraps an optimizer; ``pc_backward(losses)`` writes the PCGrad gradient, ``step()`` applies it.

    Args:
        optimizer: the wrapped optimizer (its parameters are the ones PCGrad writes).
        reduction: ``"sum"`` or ``"mean"`` of the projected gradients of the shared parameters.
        seed: seed of the permutations (``None``: from torch's global generator).
        chunk_size: tasks per batched vector-Jacobian product (``None``: all at once).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, reduction: str = "sum", seed: int | None = None,
                 chunk_size: int | None = None) -> None:
        self._optim = optimizer
        self.method = PCGradMethod(reduction=reduction, seed=seed)
        self.engine = JacobianEngine(chunk_size)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optim

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optim.zero_grad(set_to_none=set_to_none)

    def step(self, *args, **kwargs):
        return self._optim.step(*args, **kwargs)

    def pc_backward(self, objectives: Sequence[Tensor]) -> Tensor:
        """Clear the gradients, then write PCGrad's gradient for ``objectives`` (scalar losses).

        Returns PCGrad's weights on the per-task gradients of the shared parameters.
        """
        self._optim.zero_grad(set_to_none=True)
        params = trainable(p for group in self._optim.param_groups for p in group["params"])
        losses = torch.stack([o.reshape(()) for o in objectives])
        counts: dict[int, int] = {}
        for objective in objectives:
            for leaf in leaf_parameters([objective]):
                counts[id(leaf)] = counts.get(id(leaf), 0) + 1
        shared = [p for p in params if counts.get(id(p), 0) > 1]
        single = [p for p in params if counts.get(id(p), 0) == 1]
        if single:  # a parameter of one loss only: that loss's plain gradient
            grads = torch.autograd.grad(losses.sum(), single, retain_graph=bool(shared), allow_unused=True)
            accumulate_grads(single, grads)
        if not shared:
            return torch.ones(len(objectives), device=losses.device)
        J = self.engine.jacobian(list(objectives), shared, retain_graph=False)
        with fp32_math(losses.device):
            w = self.method(gramian(J)).float()
            accumulate(shared, w @ J.float())
        return w

    def state_dict(self) -> dict:
        return {"optimizer": self._optim.state_dict(), "method": self.method.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._optim.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
