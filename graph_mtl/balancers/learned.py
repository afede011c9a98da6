"""A small learnable vector with its own optimizer (UW log-variances, GradNorm weights, FAMO logits).

Such balancer parameters are not model parameters: the trainer's optimizer never sees them, gradient clipping
of the model does not touch them, and the balancer steps them itself inside ``backward`` with the gradient its
method defines. Their values and optimizer state are part of the balancer's ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

OPTIMIZERS = ("adam", "sgd")


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or a one-line ``ValueError`` naming the balancer argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"balancer_args.{name}: expected a number > 0, got {value!r}")
    return float(value)


class LearnedVector:
    """A vector ``[T]`` of balancer parameters stepped by its own ``adam`` or ``sgd`` optimizer.

    Args:
        init: initial value.
        lr: learning rate of the optimizer.
        optimizer: ``"adam"`` or ``"sgd"``.
        weight_decay: weight decay of the optimizer.
    """

    def __init__(self, init: Tensor, lr: float, optimizer: str = "adam", weight_decay: float = 0.0) -> None:
        lr = check_positive("lr", lr)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"balancer_args.optimizer: expected one of {list(OPTIMIZERS)}, "
                             f"got {optimizer!r}")
        if not weight_decay >= 0:
            raise ValueError(f"balancer_args.weight_decay: expected a number >= 0, got {weight_decay!r}")
        self.param = nn.Parameter(init.detach().clone().float())
        opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        self.optimizer = opt_cls([self.param], lr=lr, weight_decay=weight_decay)

    def on(self, device: torch.device) -> nn.Parameter:
        """The parameter, moved (with its optimizer state) to ``device`` on first use there."""
        if self.param.device != device:
            state = self.optimizer.state_dict()
            self.param.data = self.param.data.to(device)
            self.optimizer.load_state_dict(state)  # moves the optimizer state next to the parameter
        return self.param

    def step(self, grad: Tensor) -> None:
        """One optimizer step with ``grad`` as the gradient of the whole vector."""
        self.param.grad = grad.detach().to(self.param)
        self.optimizer.step()
        self.param.grad = None

    def state_dict(self) -> dict:
        return {"value": self.param.detach().cpu().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.param.data = state["value"].to(self.param.device, self.param.dtype).clone()
        self.optimizer.load_state_dict(state["optimizer"])
