"""Gradient balancers: methods that combine per-task gradients of the shared part of the model.

A :class:`GradientBalancer` gets ``J [t, D]``, the per-task gradients of the present tasks, and returns the
shared update and the weights. Most methods are linear (update ``= w^T J``) with ``w`` a function of the
Gramian ``G = J J^T`` and the losses: they implement :meth:`GradientBalancer.weights`. GradDrop and DB-MTL
(with its gradient average) implement :meth:`GradientBalancer.aggregate` on ``J`` itself.

``grad_mode`` says where ``J`` is taken:

* ``"exact"``: gradients of the shared parameters, by one batched vector-Jacobian product through the whole
  model (sequential fallback); the shared update ``w^T J`` is written into ``.grad``, no further backward.
* ``"rep"``: gradients at the shared representation ``Z`` (``representation``), which costs backward passes
  through the heads only; the weights come from that Gramian (the "-UB" variants, e.g. MGDA-UB), then ONE
  backward of ``Z`` with the combined representation gradient ``sum_i w_i dL_i/dZ`` reaches the encoder.
  Shared parameters downstream of ``Z`` (none in :class:`MultiTaskGNN`) would get no gradient.
* ``"auto"``: ``"exact"`` - the method's definition needs the parameter gradients and exact is the fastest
  mode that computes them.

In every mode heads get the plain gradient of their own task's loss (only shared parameters are
modified), by one extra backward through the heads only (``task_params``; without it the head parameters are
found by walking the autograd graph). Parameters outside the shared ones and the heads get nothing.

``update_every = k`` recomputes the weights every ``k``-th step only (and whenever a present task has no
weight yet). In between the stored weights of the present tasks are reused with ONE backward of ``sum_i w_i
L_i`` restricted to the shared parameters - exactly ``w^T J`` for the stale ``w`` - and the heads still get
their plain gradients, so a step costs about one backward. Non-linear methods (GradDrop) require ``k = 1``.

Tasks absent from the losses dict are left out of the step and get weight 0. ``J`` of a task is zero when its
loss does not reach the shared part; the methods treat a zero gradient without NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from graph_mtl.balancers.base import Balancer, scaled
from graph_mtl.balancers.gradients import (
    JacobianEngine,
    accumulate,
    accumulate_grads,
    fp32_math,
    gradient_scale,
    leaf_parameters,
    normalized_gramian,
    trainable,
)

GRAD_MODES = ("exact", "rep", "auto")


class GradientBalancer(Balancer):
    """Base of the balancers that combine per-task gradients (see the module docstring).

    Args:
        task_names: the ordered names of all tasks.
        grad_mode: ``"exact"`` (shared parameters), ``"rep"`` (shared representation) or ``"auto"``.
        update_every: recompute the weights every this many steps, reuse them in between.
        chunk_size: tasks per batched vector-Jacobian product (``None``: all at once).
    """

    #: ``False`` for methods whose update is not ``w^T J`` (no reuse of weights between steps)
    linear: bool = True

    def __init__(self, task_names: Sequence[str], grad_mode: str = "auto", update_every: int = 1,
                 chunk_size: int | None = None) -> None:
        super().__init__(task_names)
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"balancer_args.grad_mode: expected one of {list(GRAD_MODES)}, "
                             f"got {grad_mode!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"balancer_args.update_every: expected an int >= 1, got {update_every!r}")
        if update_every > 1 and not self.linear:
            raise ValueError(f"balancer_args.update_every: {type(self).__name__} is not a linear combination "
                             "of task gradients, so its weights cannot be reused; use 1")
        self.grad_mode = "exact" if grad_mode == "auto" else grad_mode
        self.update_every = update_every
        self.engine = JacobianEngine(chunk_size)
        self._step = 0
        self._last = torch.zeros(self.num_tasks)  # the weights of the last recomputation
        self._known = torch.zeros(self.num_tasks, dtype=torch.bool)  # tasks those weights cover

    # ------------------------------------------------------------------------------------------ the method

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        """Weights ``[t]`` of the present tasks ``index`` from their normalised Gramian and losses."""
        raise NotImplementedError

    def aggregate(self, J: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        """The update ``[D]`` and weights ``[t]`` from the per-task gradients ``J [t, D]``.

        Default: a Gramian method, ``w = weights(G, losses)`` on ``G = (J/s)(J/s)^T`` and update ``w^T J``.
        """
        Jn, G, s = normalized_gramian(J)
        w = self.weights(G, losses.float(), index).float()
        return (w @ Jn) * s, w

    # ------------------------------------------------------------------------------------------ the step

    def backward(self, losses: dict[str, Tensor], *, shared_params: Iterable[nn.Parameter],
                 representation: Tensor | Sequence[Tensor] | None = None,
                 task_params: dict[str, Iterable[nn.Parameter]] | None = None,
                 last_shared_params: Iterable[nn.Parameter] | None = None,
                 grad_scale: float | Tensor | None = None) -> Tensor:
        index, stacked = self.present(losses)
        shared = trainable(shared_params)
        heads = self._head_params(index, stacked, shared, task_params)
        reuse = (self._step % self.update_every != 0) and bool(self._known[index].all())
        self._step += 1
        loss_values = stacked.detach().float()
        stacked = scaled(stacked, grad_scale)  # every gradient below carries the scale; J is unscaled
        self._plain_head_grads(stacked, heads)
        if reuse:  # amortised step: stale weights, one backward restricted to the shared parameters
            w = self._last[index].to(stacked.device)
            if shared:
                torch.autograd.backward((w.to(stacked.dtype) * stacked).sum(), inputs=shared)
            return self.full_weights(index, w)
        exact = self.grad_mode == "exact"
        targets = shared if exact else self._representations(representation)
        if not targets:
            raise ValueError(f"{self.name or type(self).__name__}: no shared parameters require grad")
        J = self.engine.jacobian(self.separate(losses, index, grad_scale), targets, retain_graph=not exact)
        if self.sync is not None and exact:
            J = self.sync.sum(J, "jacobian")  # the global batch's J = sum over processes
        with fp32_math(stacked.device):
            if grad_scale is not None:  # unscale before aggregating: not every method is scale-equivariant
                J = J.float() / grad_scale
            if self.sync is not None and not exact:
                update, w = self._aggregate_shards(J, loss_values, index)
            else:
                update, w = self.aggregate(J, loss_values, index)
            if grad_scale is not None:
                update = update * grad_scale
        del J
        if exact:
            accumulate(shared, update)
            if self.sync is not None:
                self.sync.mark_reduced(shared)
        elif shared:  # one backward from Z with sum_i w_i dL_i/dZ (frees the encoder graph)
            parts = update.split([z.numel() for z in targets])
            torch.autograd.backward(targets, [p.view_as(z).to(z.dtype) for p, z in zip(parts, targets)],
                                    inputs=shared)
        self._last = self._last.to(w.device)
        self._last[index] = w.detach().float()
        self._known = torch.zeros_like(self._known)
        self._known[index] = True
        return self.full_weights(index, w)

    def _aggregate_shards(self, J: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        """``rep`` mode across processes: each holds ``J^r``, the gradients at its shard of the representation.
        The global Gramian is ``sum_r (J^r/s)(J^r/s)^T`` with the common ``s = max_r max|J^r|``; this process
        back-propagates its part ``w^T J^r`` of the update."""
        s = self.sync.max(gradient_scale(J))
        Jn = J.float() / s
        G = self.sync.sum(Jn @ Jn.T, "gramian")
        w = self.weights(G, losses.float(), index).float()
        return (w @ Jn) * s, w

    def distribute(self, sync) -> None:
        if sync is not None and self.grad_mode == "rep" and type(self).aggregate is not GradientBalancer.aggregate:
            raise ValueError(f"train.grad_mode: {self.name or type(self).__name__} in 'rep' mode is not a "
                             "Gramian-weighted sum, so it cannot be split across processes; use grad_mode: exact")
        super().distribute(sync)

    def _head_params(self, index: list[int], stacked: Tensor, shared: list[Tensor],
                     task_params: dict[str, Iterable[nn.Parameter]] | None) -> list[Tensor]:
        shared_ids = {id(p) for p in shared}
        if task_params is None:
            candidates = leaf_parameters([stacked])
        else:
            candidates = [p for i in index for p in task_params.get(self.task_names[i], ())]
        return [p for p in trainable(candidates) if id(p) not in shared_ids]

    @staticmethod
    def _plain_head_grads(stacked: Tensor, heads: list[Tensor]) -> None:
        """Heads get the plain gradient of ``sum_i L_i`` (head ``i`` only depends on ``L_i``)."""
        if heads:
            grads = torch.autograd.grad(stacked.sum(), heads, retain_graph=True, allow_unused=True)
            accumulate_grads(heads, grads)

    def _representations(self, representation: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
        if representation is None:
            raise ValueError(f"{self.name or type(self).__name__}: grad_mode='rep' needs the shared "
                             "representation (representation=...)")
        reps = [representation] if isinstance(representation, Tensor) else list(representation)
        if not all(z.requires_grad for z in reps):
            raise ValueError(f"{self.name or type(self).__name__}: the representation does not require grad")
        return reps

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {"step": self._step, "last": self._last.detach().cpu().clone(), "known": self._known.clone(),
                **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        self._step = int(state["step"])
        self._last = state["last"].clone()
        self._known = state["known"].clone()
        self.load_extra_state(state)

    def extra_state(self) -> dict:
        """Method state to checkpoint (RNG state, moving averages, warm starts)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""

    def __repr__(self) -> str:
        every = f", update_every={self.update_every}" if self.update_every > 1 else ""
        return f"{type(self).__name__}(tasks={self.num_tasks}, grad_mode={self.grad_mode!r}{every})"
