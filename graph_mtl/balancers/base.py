"""The method contract: every balancer is pure math on tensors.

A method never sees the model, the backward passes or the processes of a run; the step engine
(:mod:`graph_mtl.engine.step`) obtains what it needs and writes the gradients. Four kinds, by what they read:

* :class:`LossWeighting` ``(losses [t], index) -> w [t]``: the step is one backward of ``sum_i w_i L_i``,
  heads included (EW, fixed, UW, DWA, RLW, FAMO).
* :class:`GramianWeighting` ``(G [t, t], losses [t], index) -> w [t]``: ``G = J J^T`` is the Gramian of the
  per-task gradients ``J [t, D]`` of the shared part (float64, true scale); the shared update is ``w^T J``
  and every head gets the plain gradient of its own loss (MGDA, PCGrad, CAGrad, IMTL-G, Nash-MTL, UPGrad,
  Aligned-MTL, GradVac).
* :class:`Aggregator` ``(J [t, D], losses [t], index) -> (d [D], w [t])``: for methods whose update is not a
  Gramian-weighted sum (GradDrop, DB-MTL's gradient average).
* :class:`LastLayerWeighting` ``(G_W [t, t], losses [t], index) -> w [t]``: a loss weighting that reads the
  Gramian of the per-task gradients at the last shared layer ``W`` (GradNorm).

``losses`` are the detached losses of the tasks *present* in the step and ``index`` their positions among all
tasks (a task without labels in the batch is absent), so a method with per-task state knows whose state to
use. A stateless method can be called on a Gramian of one's own: ``UPGrad()(G)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FAMILIES = ("loss", "gramian", "aggregator", "last-layer")


class Method:
    """Base of every balancing method.

    Args:
        task_names: the ordered names of all tasks (or their number). Methods with per-task state need it;
            stateless ones can leave it out.
    """

    #: registry name, set by :func:`graph_mtl.balancers.registry.register`
    name: str = ""
    #: one of :data:`FAMILIES`
    family: str = ""
    #: the paper, for ``graph-mtl list``
    paper: str = ""

    def __init__(self, task_names: Sequence[str] | int | None = None) -> None:
        if isinstance(task_names, int) and not isinstance(task_names, bool):
            task_names = [f"task{i}" for i in range(task_names)]
        if task_names is not None:
            if len(task_names) == 0:
                raise ValueError(f"{self.label}: needs at least one task")
            if len(set(task_names)) != len(task_names):
                raise ValueError(f"{self.label}: task names must be unique, got {list(task_names)}")
            task_names = list(task_names)
        self.task_names: list[str] | None = task_names

    @property
    def label(self) -> str:
        return self.name or type(self).__name__

    @property
    def num_tasks(self) -> int:
        if self.task_names is None:
            raise ValueError(f"{self.label} keeps per-task state: construct it with the task names")
        return len(self.task_names)

    #: whether :meth:`after_step` wants the step's batch re-evaluated after the optimizer step
    wants_losses_after_step: bool = False

    def after_step(self, before: Tensor, after: Tensor, index: list[int]) -> None:
        """The present tasks' losses on the step's batch before and after the optimizer step (FAMO)."""

    def on_epoch_end(self) -> None:
        """Called after every training epoch (DWA); a no-op by default."""

    def state_dict(self) -> dict:
        """State to checkpoint (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def full_weights(self, index: list[int], w: Tensor) -> Tensor:
        """The weights of the present tasks scattered into a ``[T]`` vector (0 for absent tasks)."""
        out = torch.zeros(self.num_tasks if self.task_names is not None else max(index) + 1,
                          dtype=torch.float32, device=w.device)
        out[index] = w.detach().float()
        return out

    def __repr__(self) -> str:
        tasks = "" if self.task_names is None else f"tasks={len(self.task_names)}"
        return f"{type(self).__name__}({tasks})"


def _all(n: int) -> list[int]:
    return list(range(n))


class LossWeighting(Method):
    """Weights of the whole task losses: the step is one backward of ``sum_i w_i L_i``."""

    family = "loss"

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        """Weights ``[t]`` of the present tasks ``index`` given their detached losses ``[t]``."""
        raise NotImplementedError

    def __call__(self, losses: Tensor, index: list[int] | None = None) -> Tensor:
        return self.weights(losses, _all(len(losses)) if index is None else index)


class GramianWeighting(Method):
    """Weights ``w`` of the per-task gradients from their Gramian: the shared update is ``w^T J``."""

    family = "gramian"
    #: where the engine takes ``J`` unless told otherwise: ``"exact"`` (shared parameters) or ``"rep"``
    default_grad_mode: str = "exact"
    #: whether the weights may be reused for a few steps (``update_every``)
    linear: bool = True

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        """Weights ``[t]`` of the present tasks from their Gramian ``[t, t]`` and detached losses ``[t]``."""
        raise NotImplementedError

    def __call__(self, gramian: Tensor, losses: Tensor | None = None, index: list[int] | None = None) -> Tensor:
        t = len(gramian)
        losses = torch.ones(t, dtype=torch.float64, device=gramian.device) if losses is None else losses
        return self.weights(gramian.double(), losses, _all(t) if index is None else index)


class Aggregator(Method):
    """A method whose update is not a Gramian-weighted sum: it reads ``J`` itself."""

    family = "aggregator"
    default_grad_mode: str = "exact"
    linear: bool = False
    #: ``False`` where the method keeps per-parameter state and so needs ``grad_mode="exact"``
    allows_rep: bool = True
    #: how to make such a method work on representation gradients (shown when ``rep`` is refused)
    rep_hint: str = ""

    def aggregate(self, J: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        """The update ``[D]`` and the weights ``[t]`` from the per-task gradients ``J [t, D]``."""
        raise NotImplementedError

    def __call__(self, J: Tensor, losses: Tensor | None = None, index: list[int] | None = None) -> Tensor:
        t = len(J)
        losses = torch.ones(t, device=J.device) if losses is None else losses
        return self.aggregate(J, losses, _all(t) if index is None else index)[0]


class LastLayerWeighting(Method):
    """A loss weighting that reads the Gramian ``G_W`` of the per-task gradients at the last shared layer."""

    family = "last-layer"

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        """Weights ``[t]`` of this step's loss from ``G_W [t, t]`` and the detached losses ``[t]``."""
        raise NotImplementedError


#: the base class of each family (for the registry and the engine)
FAMILY_BASES: dict[str, type[Method]] = {"loss": LossWeighting, "gramian": GramianWeighting,
                                         "aggregator": Aggregator, "last-layer": LastLayerWeighting}
