"""The balancer contract.

A balancer turns the task losses of one step into gradients on the model. Two families:

* :class:`LossWeighting` maps the losses (and its own state) to weights ``w`` and the step is a single
  backward of ``sum_i w_i L_i`` - heads included.
* Gradient methods (added on top of :class:`Balancer`) need per-task gradients of the *shared* parameters
  (or of the shared representation), combine them, and give every head the plain gradient of its own loss.

Every balancer is constructed with the full, ordered list of task names. On each step it receives the losses
of the tasks *present* in the batch (a task with no labels is absent) and returns the weight vector over all
tasks, with 0 for absent tasks, for logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from graph_mtl.engine.distributed import GradientSync


class Balancer:
    """Base class of every task balancer.

    Args:
        task_names: the ordered names of all tasks of the model.
    """

    #: registry name, set by :func:`graph_mtl.balancers.registry.register`
    name: str = ""

    def __init__(self, task_names: Sequence[str]) -> None:
        if len(task_names) == 0:
            raise ValueError("balancer: needs at least one task")
        if len(set(task_names)) != len(task_names):
            raise ValueError(f"balancer: task names must be unique, got {list(task_names)}")
        self.task_names = list(task_names)
        self.sync: GradientSync | None = None

    def distribute(self, sync: GradientSync | None) -> None:
        """Train across processes: whatever this balancer computes from gradients is summed with ``sync``
        first, so that every process computes the weights of the global batch (``engine/distributed.py``)."""
        self.sync = sync

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def backward(
        self,
        losses: dict[str, Tensor],
        *,
        shared_params: Iterable[nn.Parameter],
        representation: Tensor | Sequence[Tensor] | None = None,
        task_params: dict[str, Iterable[nn.Parameter]] | None = None,
        last_shared_params: Iterable[nn.Parameter] | None = None,
        grad_scale: float | Tensor | None = None,
    ) -> Tensor:
        """Accumulate the balanced gradient into ``.grad`` of the parameters; return the weights ``[T]``.

        ``grad_scale`` is fp16 loss scaling (``GradScaler.get_scale()``): ``losses`` are given unscaled, every
        gradient written into ``.grad`` is ``grad_scale`` times the unscaled one (``scaler.step`` unscales it
        and skips the step on inf), and per-task gradients are unscaled before a method combines them, so
        methods that are not scale-equivariant see the true gradients.
        """
        raise NotImplementedError

    def present(self, losses: dict[str, Tensor]) -> tuple[list[int], Tensor]:
        """Indices (into ``task_names``) of the present tasks and their stacked losses."""
        unknown = [name for name in losses if name not in self.task_names]
        if unknown:
            raise KeyError(f"balancer: losses for unknown tasks {unknown}; known tasks: {self.task_names}")
        index = [i for i, name in enumerate(self.task_names) if name in losses]
        return index, torch.stack([losses[self.task_names[i]] for i in index])

    def separate(self, losses: dict[str, Tensor], index: list[int],
                 grad_scale: float | Tensor | None = None) -> list[Tensor]:
        """The present tasks' losses (times ``grad_scale``) as separate tensors, for per-task gradients: the
        backward of each then visits its own head only (``gradients.JacobianEngine.jacobian``)."""
        parts = [losses[self.task_names[i]] for i in index]
        return parts if grad_scale is None else [loss * grad_scale for loss in parts]

    def full_weights(self, index: list[int], w: Tensor) -> Tensor:
        """Scatter the weights of the present tasks into a ``[T]`` vector (0 for absent tasks)."""
        out = torch.zeros(self.num_tasks, dtype=torch.float32, device=w.device)
        out[index] = w.detach().float()
        return out

    def on_epoch_end(self) -> None:
        """Called by the trainer after every training epoch (DWA uses it); a no-op by default."""

    def state_dict(self) -> dict:
        """State to checkpoint (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tasks={self.num_tasks})"


class LossWeighting(Balancer):
    """A balancer whose step is one backward of ``sum_i w_i L_i`` over the present tasks."""

    def weights(self, losses: Tensor, index: list[int]) -> Tensor:
        """Weights ``[t]`` of the present tasks ``index`` given their detached losses ``[t]``."""
        raise NotImplementedError

    def backward(self, losses, *, shared_params=None, representation=None, task_params=None,
                 last_shared_params=None, grad_scale=None) -> Tensor:
        index, stacked = self.present(losses)
        w = self.weights(stacked.detach(), index).to(stacked.dtype)
        (scaled(stacked, grad_scale) * w).sum().backward()
        return self.full_weights(index, w)


def scaled(losses: Tensor, grad_scale: float | Tensor | None) -> Tensor:
    """``losses * grad_scale`` (the losses themselves when there is no scale), for fp16 loss scaling."""
    return losses if grad_scale is None else losses * grad_scale
