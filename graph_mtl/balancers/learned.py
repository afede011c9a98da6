"""A small learnable vector with its own optimizer (UW log-variances, GradNorm weights, FAMO logits).

Such balancer parameters are not model parameters: the trainer's optimizer never sees them and gradient
clipping of the model does not touch them. The method steps them itself with the gradient its definition
gives, by Adam (Kingma & Ba 2015, with L2 weight decay added to the gradient, as ``torch.optim.Adam``) or
plain SGD, written out here so that a method stays pure tensor math. Values and moments are checkpointed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graph_mtl.balancers.args import choice, number

OPTIMIZERS = ("adam", "sgd")
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class LearnedVector:
    """A vector ``[T]`` stepped by its own ``adam`` or ``sgd``.

    Args:
        init: initial value.
        lr: learning rate.
        optimizer: ``"adam"`` or ``"sgd"``.
        weight_decay: L2 coefficient added to the gradient.
    """

    def __init__(self, init: Tensor, lr: float, optimizer: str = "adam", weight_decay: float = 0.0) -> None:
        self.lr = number("lr", lr, above=0)
        self.optimizer = choice("optimizer", optimizer, OPTIMIZERS)
        self.weight_decay = number("weight_decay", weight_decay, minimum=0)
        self.value = init.detach().clone().float()
        self.m = torch.zeros_like(self.value)
        self.v = torch.zeros_like(self.value)
        self.steps = 0

    def on(self, device: torch.device) -> Tensor:
        """The value, moved (with the moments) to ``device``."""
        if self.value.device != device:
            self.value, self.m, self.v = (x.to(device) for x in (self.value, self.m, self.v))
        return self.value

    def step(self, grad: Tensor) -> None:
        """One optimizer step with ``grad`` as the gradient of the whole vector (in place)."""
        g = grad.detach().to(self.value) + self.weight_decay * self.value
        if self.optimizer == "sgd":
            self.value.sub_(self.lr * g)
            return
        b1, b2 = BETAS
        self.steps += 1
        self.m.mul_(b1).add_((1 - b1) * g)
        self.v.mul_(b2).add_((1 - b2) * g * g)
        denom = self.v.sqrt() / (1 - b2**self.steps) ** 0.5 + ADAM_EPS
        self.value.sub_(self.lr / (1 - b1**self.steps) * self.m / denom)

    def state_dict(self) -> dict:
        return {"value": self.value.cpu().clone(), "m": self.m.cpu().clone(), "v": self.v.cpu().clone(),
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        device = self.value.device
        self.value, self.m, self.v = (state[k].to(device).float().clone() for k in ("value", "m", "v"))
        self.steps = int(state["steps"])
