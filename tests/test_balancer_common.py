"""Helpers shared by the balancer tests (no tests here): a tiny shared-trunk model and naive references."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from graph_mtl.balancers import BALANCERS, create
from graph_mtl.engine.step import StepEngine

NAMES = ["a", "b", "c"]


class TinyMTL(nn.Module):
    """A shared MLP trunk (the encoder) and one small head per task."""

    def __init__(self, names=NAMES, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
        self.heads = nn.ModuleDict({n: nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1))
                                    for n in names})

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        z = self.trunk(x)
        return {n: h(z).squeeze(-1) for n, h in self.heads.items()}, z

    def shared(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def task_params(self) -> dict[str, list[nn.Parameter]]:
        return {n: list(h.parameters()) for n, h in self.heads.items()}

    def last_shared(self) -> list[nn.Parameter]:
        return list(self.trunk[2].parameters())


def batch(seed: int = 1, n: int = 7, names=NAMES) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = {name: torch.randn(n, generator=g) * (k + 1) for k, name in enumerate(names)}
    return x, y


def losses_of(model: TinyMTL, x: Tensor, y: dict[str, Tensor],
              names=None) -> tuple[dict[str, Tensor], Tensor]:
    preds, z = model(x)
    names = list(preds) if names is None else names
    return {n: ((preds[n] - y[n]) ** 2).mean() for n in names}, z


def step(engine: StepEngine, model: TinyMTL, x: Tensor, y: dict[str, Tensor], names=None) -> Tensor:
    """One trainer-style call (after zero_grad); returns the weights."""
    model.zero_grad(set_to_none=True)
    losses, z = losses_of(model, x, y, names)
    return engine.backward(losses, shared_params=model.shared(), representation=z,
                             task_params=model.task_params(), last_shared_params=model.last_shared())


def flat_grad(params) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def reference_jacobian(losses: list[Tensor], inputs: list[Tensor]) -> Tensor:
    """Per-task gradients by a plain loop of backward passes."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(x)).reshape(-1)
                               for g, x in zip(grads, inputs)]))
    return torch.stack(rows)


def linear_losses(J: Tensor, theta: nn.Parameter, names=None, offset: float = 1.0) -> dict[str, Tensor]:
    """Losses ``L_i = g_i . theta + offset`` whose Jacobian w.r.t. ``theta`` is exactly ``J``."""
    names = names or [f"t{i}" for i in range(len(J))]
    return {n: (J[i] * theta).sum() + offset for i, n in enumerate(names)}


def gradient_methods() -> list[str]:
    """The methods that combine per-task gradients of the shared part (Gramian weightings, aggregators)."""
    return sorted(n for n, cls in BALANCERS.items() if cls.family in ("gramian", "aggregator"))


def exact_only(name: str) -> bool:
    """Whether the method keeps per-parameter state, so that the engine refuses ``grad_mode="rep"``."""
    return not getattr(BALANCERS[name], "allows_rep", True)


#: constructor arguments that make every balancer deterministic in tests
SEEDED = {"pcgrad": {"seed": 0}, "gradvac": {"seed": 0}, "graddrop": {"seed": 0}, "rlw": {"seed": 0}}


#: the step engine's keyword arguments (the rest go to the method)
ENGINE_ARGS = ("grad_mode", "update_every", "chunk_size", "nonfinite")


def make(name: str, names=NAMES, **kwargs) -> StepEngine:
    """The method ``name`` (seeded) inside a step engine; engine settings and method arguments mixed."""
    settings = {k: kwargs.pop(k) for k in ENGINE_ARGS if k in kwargs}
    return StepEngine(create(name, names, **{**SEEDED.get(name, {}), **kwargs}), **settings)
