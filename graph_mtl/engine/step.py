"""The step engine: how a balancing method's gradients are obtained and written into ``.grad``.

A method (``graph_mtl.balancers``) is pure math on tensors. :class:`StepEngine` does everything else in a
step, through one entry point, :meth:`StepEngine.backward`:

* the **present tasks**: a task without labels in the batch is absent; the method sees the losses of the
  present ones and their positions ``index`` among all tasks. A batch without any present task is a counted
  no-op (``skipped["empty"]``).
* **non-finite losses**: ``nonfinite="raise"`` stops with an error naming the task and the step;
  ``"skip"`` leaves every ``.grad`` untouched and counts the step (``skipped["nonfinite"]``). Either way no NaN
  or inf from a loss reaches ``.grad``.
* by family of the method:

  - a **loss weighting**: ``w = method(losses)`` and one backward of ``sum_i w_i L_i``, heads included;
  - a **last-layer weighting** (GradNorm): the per-task gradients ``J_W`` at the last shared layer give
    ``G_W = J_W J_W^T``, then ``w = method(G_W, losses)`` and one backward of ``sum_i w_i L_i``;
  - a **Gramian weighting** or an **aggregator**: per-task gradients ``J [t, D]``, taken where
    ``grad_mode`` says: ``"exact"`` at the shared parameters (one batched vector-Jacobian product, the
    update ``w^T J`` written straight into ``.grad``) or ``"rep"`` at the shared representation ``Z``
    (backward passes through the heads only, or ONE backward where the representation is given as
    :class:`~graph_mtl.engine.gradients.TaskRows`, as grouped heads do; then ONE backward of ``Z`` with
    ``sum_i w_i dL_i/dZ``). A
    Gramian method gets ``G = J J^T`` in float64 at its true scale; an aggregator gets ``J``. Every head gets
    the plain gradient of its own loss.
  - a **Gramian weighting** with ``grad_mode="gramian"``: the same ``G`` as ``"exact"``, built layer by layer
    without ``J`` (``engine/gramian.py``: hooks recorded by :meth:`StepEngine.watch` before the forward; each
    linear layer's block from its inputs and per-task output gradients, other shared parameters the plain way),
    then ONE backward of ``sum_i w_i L_i`` restricted to the shared parameters (``w^T J``); heads as above.
    Aggregators read ``J`` and are refused.

* **amortised weights** (``update_every = k`` for linear methods): the weights are recomputed every ``k``-th
  step (and whenever a present task has none yet); in between the last weights are reused with ONE backward of
  ``sum_i w_i L_i`` restricted to the shared parameters, which is exactly ``w^T J``.
* **fp16 loss scaling** (``grad_scale``): everything written into ``.grad`` carries the scale, while the
  method sees unscaled gradients, since not every method is scale-equivariant.
* **after the optimizer step**: a method that wants the step's batch re-evaluated (FAMO) gets the losses
  before and after through :meth:`StepEngine.after_step`.

Data-parallel training subclasses this engine (``engine/distributed.py``) and overrides the few places where
something computed on a shard becomes global: :meth:`StepEngine._global_jacobian`, :meth:`StepEngine._gramian`
and :meth:`StepEngine._finish`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from graph_mtl.balancers.args import ArgumentError, choice, integer
from graph_mtl.balancers.base import Aggregator, GramianWeighting, LastLayerWeighting, LossWeighting, Method
from graph_mtl.engine.gradients import (
    JacobianEngine,
    TaskRows,
    accumulate,
    accumulate_grads,
    fp32_math,
    gramian,
    leaf_parameters,
    trainable,
)
from graph_mtl.engine.gramian import GramianRecorder

GRAD_MODES = ("exact", "rep", "gramian", "auto")
NONFINITE = ("raise", "skip")


class NonFiniteLoss(FloatingPointError):
    """A task's loss is NaN or infinite (``nonfinite="raise"``)."""


class StepEngine:
    """Runs one balanced backward per step for ``method`` (see the module docstring).

    Args:
        method: the balancing method.
        grad_mode: ``"exact"``, ``"rep"``, ``"gramian"`` (Gramian methods; needs :meth:`watch`) or ``"auto"`` (the
            method's default) - gradient methods only.
        update_every: recompute the weights every this many steps (linear gradient methods only).
        chunk_size: tasks per batched vector-Jacobian product (``None``: all at once).
        nonfinite: ``"raise"`` or ``"skip"`` on a NaN or infinite task loss.
    """

    def __init__(self, method: Method, *, grad_mode: str = "auto", update_every: int = 1,
                 chunk_size: int | None = None, nonfinite: str = "raise") -> None:
        if not isinstance(method, Method):
            raise TypeError(f"StepEngine needs a balancing method, got {type(method).__name__}")
        if method.task_names is None:
            raise ValueError(f"{method.label}: the step engine needs the method built with the task names")
        choice("grad_mode", grad_mode, GRAD_MODES)
        self.update_every = integer("update_every", update_every, minimum=1)
        self.nonfinite = choice("nonfinite", nonfinite, NONFINITE)
        self.method = method
        #: the keyword arguments, to build the same engine again (the data-parallel one)
        self.settings = {"grad_mode": grad_mode, "update_every": update_every, "chunk_size": chunk_size,
                         "nonfinite": nonfinite}
        gradient_method = isinstance(method, (GramianWeighting, Aggregator))
        if not gradient_method and grad_mode != "auto":
            raise ArgumentError("grad_mode", f"{method.label} weights losses, not per-task gradients; "
                                "leave it unset (auto)")
        if update_every > 1 and not (gradient_method and method.linear):
            raise ArgumentError("update_every", f"{method.label} is not a linear combination of task gradients, "
                                "so its weights cannot be reused; use 1")
        self.grad_mode = method.default_grad_mode if gradient_method and grad_mode == "auto" else grad_mode
        if self.grad_mode == "gramian" and not isinstance(method, GramianWeighting):
            raise ArgumentError("grad_mode", f"'gramian' gives {method.label} no J, which it reads; set "
                                "train.grad_mode to 'exact' or 'rep' (or leave it unset)")
        if self.grad_mode == "rep" and isinstance(method, Aggregator) and not method.allows_rep:
            hint = f" ({method.rep_hint})" if method.rep_hint else ""
            raise ArgumentError("grad_mode", f"{method.label} keeps per-parameter state with these arguments, "
                                f"which needs grad_mode 'exact'{hint}")
        self.jacobians = JacobianEngine(chunk_size)
        self.recorder: GramianRecorder | None = None  # grad_mode "gramian": the forward's records (watch)
        self.steps = 0  # steps that reached the method (skipped ones do not count)
        self.skipped = {"empty": 0, "nonfinite": 0}
        self._last = torch.zeros(method.num_tasks)  # the weights of the last recomputation
        self._known = torch.zeros(method.num_tasks, dtype=torch.bool)  # the tasks those weights cover
        self._before: tuple[Tensor, list[int]] | None = None  # losses of the step, for after_step

    @property
    def task_names(self) -> list[str]:
        return self.method.task_names  # type: ignore[return-value]

    @property
    def takes_task_gradients(self) -> bool:
        """Whether a step takes each task's gradient (Gramian methods and aggregators at the shared parameters or
        representation, last-layer methods at the last shared layer); loss weightings do not."""
        return isinstance(self.method, (GramianWeighting, Aggregator, LastLayerWeighting))

    def watch(self, model: nn.Module, shared_params: Iterable[nn.Parameter] | None = None) -> None:
        """Record ``model``'s forward for ``grad_mode="gramian"`` (hooks on the linear modules owning shared
        parameters: ``model.shared_parameters()`` unless ``shared_params`` is given); other modes ignore it."""
        if self.grad_mode != "gramian":
            return
        if self.recorder is not None:
            self.recorder.remove()
        shared = model.shared_parameters() if shared_params is None else shared_params  # type: ignore[operator]
        self.recorder = GramianRecorder(model, trainable(shared))

    @property
    def wants_losses_after_step(self) -> bool:
        """Whether the trainer should re-evaluate the step's batch after the optimizer step."""
        return self.method.wants_losses_after_step

    # ------------------------------------------------------------------------------------------ the step

    def backward(self, losses: dict[str, Tensor], *, shared_params: Iterable[nn.Parameter],
                 representation: Tensor | Sequence[Tensor] | TaskRows | None = None,
                 task_params: dict[str, Iterable[nn.Parameter]] | None = None,
                 last_shared_params: Iterable[nn.Parameter] | None = None,
                 grad_scale: float | Tensor | None = None) -> Tensor | None:
        """Accumulate the balanced gradient into ``.grad``; the weights ``[T]`` (0 for absent tasks), or
        ``None`` when the step was skipped (no present task, or a non-finite loss under ``"skip"``).

        ``task_params`` maps task names to their head's parameters (without it they are found by walking the
        autograd graph); ``last_shared_params`` is the last shared layer (last-layer methods);
        ``grad_scale`` is fp16 loss scaling (``GradScaler.get_scale()``); ``losses`` are given unscaled.
        """
        try:
            return self._backward(losses, shared_params, representation, task_params, last_shared_params,
                                  grad_scale)
        finally:
            if self.recorder is not None:  # the forward's records (grad_mode "gramian") are of no further use
                self.recorder.clear()

    def _backward(self, losses: dict[str, Tensor], shared_params: Iterable[nn.Parameter],
                  representation: Tensor | Sequence[Tensor] | TaskRows | None,
                  task_params: dict[str, Iterable[nn.Parameter]] | None,
                  last_shared_params: Iterable[nn.Parameter] | None,
                  grad_scale: float | Tensor | None) -> Tensor | None:
        self._before = None
        if not losses:
            self.skipped["empty"] += 1
            return None
        index, stacked = self._present(losses)
        if not self._finite(stacked, index):
            self.skipped["nonfinite"] += 1
            return None
        self.steps += 1
        values = stacked.detach().float()
        shared = trainable(shared_params)
        method = self.method
        if isinstance(method, LossWeighting):
            w = method.weights(stacked.detach(), index)
            self._weighted_backward(stacked, w, grad_scale)
        elif isinstance(method, LastLayerWeighting):
            w = self._last_layer_weights(losses, index, stacked, values, last_shared_params, grad_scale,
                                         representation if isinstance(representation, TaskRows) else None)
            self._weighted_backward(stacked, w, grad_scale)
        else:
            w = self._gradient_step(losses, index, stacked, values, shared, representation, task_params,
                                    grad_scale)
        self._finish(shared, task_params)
        if method.wants_losses_after_step:
            self._before = (values, index)
        return method.full_weights(index, w)

    def after_step(self, losses_after: dict[str, Tensor]) -> None:
        """The losses of the last step's batch re-evaluated after the optimizer step (for the method)."""
        if self._before is None:
            return
        before, index = self._before
        self._before = None
        present = [i for i in index if self.task_names[i] in losses_after]
        if present != index:  # a re-evaluation keeps the tasks; a task lost on the way gives no information
            keep = [k for k, i in enumerate(index) if i in present]
            before, index = before[keep], present
        if index:
            after = torch.stack([losses_after[self.task_names[i]].detach().float() for i in index])
            self.method.after_step(before, after, index)

    def on_epoch_end(self) -> None:
        self.method.on_epoch_end()

    def _present(self, losses: dict[str, Tensor]) -> tuple[list[int], Tensor]:
        unknown = [name for name in losses if name not in self.task_names]
        if unknown:
            raise KeyError(f"losses for unknown tasks {unknown}; known tasks: {self.task_names}")
        index = [i for i, name in enumerate(self.task_names) if name in losses]
        return index, torch.stack([losses[self.task_names[i]].reshape(()) for i in index])

    def _finite(self, stacked: Tensor, index: list[int]) -> bool:
        """One host sync per step: ``False`` (skip) or an error when a present task's loss is not finite."""
        finite = torch.isfinite(stacked.detach())
        if bool(finite.all()):
            return True
        bad = [self.task_names[i] for i, ok in zip(index, finite.tolist()) if not ok]
        if self.nonfinite == "raise":
            values = [float(v) for v, ok in zip(stacked.detach(), finite.tolist()) if not ok]
            raise NonFiniteLoss(f"non-finite loss {values[:3]} of task(s) {bad[:3]} at step {self.steps + 1}; "
                                "lower the learning rate, or set nonfinite to 'skip' to skip such steps")
        return False

    @staticmethod
    def _weighted_backward(stacked: Tensor, w: Tensor, grad_scale: float | Tensor | None) -> None:
        (_scaled(stacked, grad_scale) * w.to(stacked.dtype)).sum().backward()

    def _last_layer_weights(self, losses: dict[str, Tensor], index: list[int], stacked: Tensor, values: Tensor,
                            last_shared_params: Iterable[nn.Parameter] | None,
                            grad_scale: float | Tensor | None, rows: TaskRows | None = None) -> Tensor:
        last = trainable(last_shared_params)
        if not last:
            raise ValueError(f"{self.method.label} reads the gradients at the last shared layer: pass "
                             "last_shared_params")
        if rows is not None:  # one backward through the grouped heads, then per task from Z to the layer only
            J_rows, _ = rows.jacobian(_scaled(stacked, grad_scale).sum(), index)
            J = self.jacobians.jacobian(rows.pullbacks(J_rows), last, retain_graph=True)
        else:
            J = self.jacobians.jacobian(self._separate(losses, index, grad_scale), last, retain_graph=True)
        J = self._global_jacobian(J)
        with fp32_math(J.device):
            if grad_scale is not None:
                J = J.float() / grad_scale
            return self.method.weights(gramian(J), values, index)

    def _gradient_step(self, losses: dict[str, Tensor], index: list[int], stacked: Tensor, values: Tensor,
                       shared: list[Tensor], representation: Tensor | Sequence[Tensor] | TaskRows | None,
                       task_params: dict[str, Iterable[nn.Parameter]] | None,
                       grad_scale: float | Tensor | None) -> Tensor:
        heads = self._head_params(index, stacked, shared, task_params)
        reuse = (self.steps - 1) % self.update_every != 0 and bool(self._known[index].all())
        scaled = _scaled(stacked, grad_scale)
        rows = representation if isinstance(representation, TaskRows) and not reuse else None
        # head i depends on L_i only: the gradient of sum_i L_i is each head's own; with rows the same backward
        # through the grouped heads also gives every task's gradient at Z
        if rows is not None:
            J_rows, grads = rows.jacobian(scaled.sum(), index, heads)
            accumulate_grads(heads, grads)
        elif heads:
            grads = torch.autograd.grad(scaled.sum(), heads, retain_graph=True, allow_unused=True)
            accumulate_grads(heads, grads)
        if reuse:
            w = self._last[index].to(stacked.device)
            if shared:
                torch.autograd.backward((w.to(stacked.dtype) * scaled).sum(), inputs=shared)
            return w
        if self.grad_mode == "gramian":
            parts = rows.pullbacks(J_rows) if rows is not None else self._separate(losses, index, grad_scale)
            w = self._gramian_weights(parts, index, values, shared, grad_scale)
            torch.autograd.backward((w.to(stacked.dtype) * scaled).sum(), inputs=shared)
            self._remember(index, w)
            return w
        exact = self.grad_mode == "exact"
        targets = shared if exact else [rows.tensor] if rows is not None else self._representations(representation)
        if not targets:
            raise ValueError(f"{self.method.label}: no shared parameters require grad")
        if rows is not None:
            J = J_rows
            if exact:  # then one backward per task through the encoder only, from Z with dL_i/dZ
                J = self.jacobians.jacobian(rows.pullbacks(J), shared, retain_graph=False)
        else:
            J = self.jacobians.jacobian(self._separate(losses, index, grad_scale), targets, retain_graph=not exact)
        if exact:
            J = self._global_jacobian(J)
        with fp32_math(stacked.device):
            if grad_scale is not None:
                J = J.float() / grad_scale
            update, w = self._combine(J, values, index)
            if grad_scale is not None:
                update = update * grad_scale
        del J
        if exact:
            accumulate(shared, update)
            self._mark_reduced(shared)
        elif shared and rows is not None:  # the same backward, from the per-task rows of Z
            torch.autograd.backward(rows.tensor, rows.update_gradient(update), inputs=shared)
        elif shared:  # one backward from Z with sum_i w_i dL_i/dZ (frees the encoder graph)
            parts = update.split([z.numel() for z in targets])
            torch.autograd.backward(targets, [p.view_as(z).to(z.dtype) for p, z in zip(parts, targets)],
                                    inputs=shared)
        self._remember(index, w)
        return w

    def _remember(self, index: list[int], w: Tensor) -> None:
        """Keep the recomputed weights of the present tasks (for ``update_every``)."""
        self._last = self._last.to(w.device)
        self._last[index] = w.detach().float()
        self._known = torch.zeros_like(self._known)
        self._known[index] = True

    def _gramian_weights(self, parts: list[Tensor], index: list[int], values: Tensor, shared: list[Tensor],
                         grad_scale: float | Tensor | None) -> Tensor:
        """``grad_mode="gramian"``: ``w`` from ``G = J J^T`` of the (scaled) per-task losses ``parts`` built layer
        by layer (``engine/gramian.py``), ``J`` never formed, unscaled by ``grad_scale^2``."""
        if self.recorder is None:
            raise ValueError(f"{self.method.label}: grad_mode 'gramian' records the forward; call "
                             "StepEngine.watch(model) before it")
        if not shared:
            raise ValueError(f"{self.method.label}: no shared parameters require grad")
        chunk = self.jacobians.chunk_size or (8 if self.jacobians.uses_batched(values.device) else 1)
        G = self.recorder.gramian(parts, shared, self.jacobians, chunk)
        with fp32_math(values.device):
            if grad_scale is not None:
                G = G / torch.as_tensor(grad_scale, dtype=torch.float64, device=G.device) ** 2
            return self.method.weights(G, values, index).float()

    def _combine(self, J: Tensor, values: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        """The update ``[D]`` and the weights ``[t]`` of the method from ``J``, in float32 (float64 when ``J`` is
        float64: float64 parameters keep their precision)."""
        dtype = torch.float64 if J.dtype == torch.float64 else torch.float32
        if isinstance(self.method, Aggregator):
            update, w = self.method.aggregate(J.to(dtype), values, index)
            return update.to(dtype), w.float()
        w = self.method.weights(self._gramian(J), values, index)
        return w.to(dtype) @ J.to(dtype), w.float()

    def _separate(self, losses: dict[str, Tensor], index: list[int],
                  grad_scale: float | Tensor | None) -> list[Tensor]:
        """The present tasks' losses as separate tensors: the backward of each visits its own head only."""
        parts = [losses[self.task_names[i]] for i in index]
        return parts if grad_scale is None else [loss * grad_scale for loss in parts]

    def _head_params(self, index: list[int], stacked: Tensor, shared: list[Tensor],
                     task_params: dict[str, Iterable[nn.Parameter]] | None) -> list[Tensor]:
        shared_ids = {id(p) for p in shared}
        if task_params is None:
            candidates = leaf_parameters([stacked])
        else:
            candidates = [p for i in index for p in task_params.get(self.task_names[i], ())]
        return [p for p in trainable(candidates) if id(p) not in shared_ids]

    def _representations(self, representation: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
        if representation is None:
            raise ValueError(f"{self.method.label}: grad_mode 'rep' needs the shared representation "
                             "(representation=...)")
        reps = [representation] if isinstance(representation, Tensor) else list(representation)
        if not all(z.requires_grad for z in reps):
            raise ValueError(f"{self.method.label}: the representation does not require grad")
        return reps

    # ------------------------------------------------------------------------------------------ data parallel

    def _global_jacobian(self, J: Tensor) -> Tensor:
        """``J`` of the global batch from this process's (one process: ``J`` itself)."""
        return J

    def _gramian(self, J: Tensor) -> Tensor:
        """``G = J J^T`` of the global batch in ``rep`` mode (one process: of ``J``)."""
        return gramian(J)

    def _mark_reduced(self, params: list[Tensor]) -> None:
        """``params`` hold their global gradient already (one process: nothing to do)."""

    def _finish(self, shared: list[Tensor], task_params: dict[str, Iterable[nn.Parameter]] | None) -> None:
        """Make every gradient of the step global (one process: nothing to do)."""

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {"method": self.method.state_dict(), "steps": self.steps, "skipped": dict(self.skipped),
                "last": self._last.detach().cpu().clone(), "known": self._known.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.steps = int(state["steps"])
        self.skipped = dict(state["skipped"])
        self._last = state["last"].clone()
        self._known = state["known"].clone()

    def __repr__(self) -> str:
        every = f", update_every={self.update_every}" if self.update_every > 1 else ""
        mode = f", grad_mode={self.grad_mode!r}" if self.grad_mode != "auto" else ""
        return f"StepEngine({self.method!r}{mode}{every})"


def _scaled(losses: Tensor, grad_scale: float | Tensor | None) -> Tensor:
    """``losses * grad_scale`` (the losses themselves when there is no scale), for fp16 loss scaling."""
    return losses if grad_scale is None else losses * grad_scale
