"""The gradient engine: per-task gradients, Gramians and writing updates into ``.grad``.

* :func:`jacobian` stacks the per-task gradients ``J [t, D]`` of the losses with respect to some tensors (the
  shared parameters, or the shared representation) with ONE batched vector-Jacobian product
  (``torch.autograd.grad(..., grad_outputs=I_t, is_grads_batched=True)``), chunked over tasks to bound memory.
  When vmap cannot batch an op of the graph it falls back to one backward per task; a :class:`JacobianEngine`
  remembers the fallback so the failing batched call is not retried every step. On the CPU the engine takes
  one backward per task from the start: there the batched product does the same arithmetic with vmap's
  overhead on top (1.4x slower than a per-task loop for PCGrad on a 5x300 GIN, ``benchmarks/step_time.py``),
  while on a GPU it fills the device with one launch instead of ``t``.
* :func:`gramian` returns ``G = J J^T`` at its true scale in float64, computed as ``s^2 (J/s)(J/s)^T`` with
  ``s = max|J|`` so that the float32 product never overflows or underflows (squares of gradients of 1e-20 or
  1e20 are not float32 numbers, but their float64 Gramian is).
* :func:`accumulate` adds a flat update into ``.grad`` the way ``backward()`` does.
* :func:`leaf_parameters` finds the parameters a loss depends on by walking its autograd graph.

AMP: with bf16 autocast the forward runs in bf16 but parameters (and so ``J``) are fp32; the Gramian, the
weights and the combination are computed with autocast disabled (:func:`fp32_math`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from graph_mtl.balancers.args import integer


@dataclasses.dataclass(frozen=True)
class TaskRows:
    """A representation ``[T, ...]`` whose row ``i`` is read by task ``i``'s loss only (all tasks, in the step
    engine's order): a shared tensor expanded once per task before grouped heads. ``dL_i/dZ`` is then row ``i``
    of the gradient of ``sum_i L_i`` at it, so ONE backward gives every task's gradient at the shared
    representation, where :class:`JacobianEngine` needs one backward per task."""

    tensor: Tensor

    def jacobian(self, summed_loss: Tensor, index: Sequence[int],
                 others: Sequence[Tensor] = ()) -> tuple[Tensor, list[Tensor | None]]:
        """``J [len(index), D]``: rows ``index`` of the gradient of ``summed_loss`` (``sum_i L_i``), and from the
        same backward the gradients of ``summed_loss`` at ``others`` (``None`` where unused)."""
        grad, *rest = torch.autograd.grad(summed_loss, [self.tensor, *others], retain_graph=True, allow_unused=True)
        return grad[list(index)].reshape(len(index), -1), rest

    def pullbacks(self, J: Tensor) -> list[Tensor]:
        """Scalars ``<Z, J_i>`` (``Z`` the shared tensor that row 0 views, ``J_i`` held constant): the gradient of
        the ``i``-th at any parameter is ``J_i``'s vector-Jacobian product there, i.e. task ``i``'s gradient when
        ``J_i = dL_i/dZ``. Their per-task backward visits the encoder only, not the ``T`` grouped heads."""
        base = self.tensor[0].reshape(-1)
        return [(base * row.detach().to(base.dtype)).sum() for row in J]

    def update_gradient(self, update: Tensor) -> Tensor:
        """A gradient for :attr:`tensor` whose backward to the shared tensor it expands is ``update [D]``: the
        expansion sums its rows, so ``update`` goes in row 0 and zeros in the others."""
        grad = torch.zeros_like(self.tensor)
        grad[0] = update.view_as(self.tensor[0]).to(grad.dtype)
        return grad


def trainable(params: Iterable[Tensor] | None) -> list[Tensor]:
    """The parameters that require a gradient, each once, in order."""
    seen: set[int] = set()
    out = []
    for p in params or ():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _flat(grads: Sequence[Tensor | None], inputs: Sequence[Tensor], rows: int | None) -> Tensor:
    """Concatenate per-input gradients (``None`` = unused = zero) into ``[rows, D]`` (or ``[D]``)."""
    parts = []
    for g, x in zip(grads, inputs):
        if g is None:
            shape = (x.numel(),) if rows is None else (rows, x.numel())
            g = x.new_zeros(shape)
        parts.append(g.reshape(-1) if rows is None else g.reshape(rows, -1))
    return torch.cat(parts, dim=-1)


class JacobianEngine:
    """Computes per-task Jacobians; remembers when the batched (vmap) product had to fall back.

    Args:
        chunk_size: tasks per batched vector-Jacobian product (``None``: all at once). Memory of one product
            grows with it; ``J`` itself is ``[t, D]`` in any case.
        batched: ``True`` for the batched product, ``False`` for one backward per task, ``None`` (default) for
            batched everywhere but on the CPU.
    """

    def __init__(self, chunk_size: int | None = None, batched: bool | None = None) -> None:
        self.chunk_size = integer("chunk_size", chunk_size, minimum=1, allow_none=True)
        self.batched = batched  # set to False once the batched product failed: one backward per task from then on
        self.verified = False  # True once a batched product succeeded

    def uses_batched(self, device: torch.device) -> bool:
        """Whether products on ``device`` are batched: as asked, else everywhere but on the CPU."""
        return bool(self.batched) or (self.batched is None and device.type != "cpu")

    def jacobian(self, losses: Tensor | Sequence[Tensor], inputs: Sequence[Tensor],
                 retain_graph: bool = True) -> Tensor:
        """``J [t, D]``: row ``i`` is the gradient of ``losses[i]`` w.r.t. ``inputs`` (flattened, joined).

        Give ``losses`` as a sequence of the scalar task losses where possible: one backward per task then
        starts from task ``i``'s own loss and visits its head only, where a row of a stacked tensor starts
        from the stack, whose backward reaches every head (``t`` heads visited ``t`` times: at ``t = 128`` that
        was most of a rep-mode step). With ``retain_graph=False`` the last product frees the graph it
        traverses; that is only done once the batched product is known to work here, since a failing one would
        leave a half-freed graph behind.
        """
        parts = None if isinstance(losses, Tensor) else [loss.reshape(()) for loss in losses]
        losses = torch.stack(parts) if parts is not None else losses
        t = losses.numel()
        if self.uses_batched(losses.device):
            free_last = not retain_graph and self.verified
            try:
                eye = torch.eye(t, dtype=losses.dtype, device=losses.device)
                chunks = eye.split(self.chunk_size or t)
                rows = []
                for k, chunk in enumerate(chunks):
                    keep = not (free_last and k == len(chunks) - 1)
                    grads = torch.autograd.grad(losses, inputs, grad_outputs=chunk, retain_graph=keep,
                                                allow_unused=True, is_grads_batched=True)
                    rows.append(_flat(grads, inputs, len(chunk)))
                self.verified = True
                return torch.cat(rows) if len(rows) > 1 else rows[0]
            except RuntimeError as err:  # an op without a vmap batching rule: one backward per task instead
                if free_last:
                    raise
                self.batched = False
                warnings.warn(f"step engine: batched per-task gradients failed ({str(err).splitlines()[0]}); "
                              "falling back to one backward per task", RuntimeWarning, stacklevel=3)
        rows = [_flat(torch.autograd.grad(parts[i] if parts is not None else losses[i], inputs,
                                          retain_graph=retain_graph or i < t - 1, allow_unused=True), inputs, None)
                for i in range(t)]
        return torch.stack(rows)


def gradient_scale(J: Tensor) -> Tensor:
    """``s = max|J|`` (1 where ``J`` is all zero), a 0-dim float32 tensor on ``J``'s device (no host sync)."""
    s = J.detach().abs().amax().float()
    return torch.where(s > 0, s, torch.ones_like(s))


def gramian(J: Tensor, scale: Tensor | None = None) -> Tensor:
    """``J J^T`` in float64 at its true scale, as ``s^2 (J/s)(J/s)^T`` with ``s = scale`` or ``max|J|``; the
    product in float32, or in float64 when ``J`` is float64 (whose precision a float32 product would drop)."""
    s = gradient_scale(J) if scale is None else scale
    Jn = J / s.double() if J.dtype == torch.float64 else J.float() / s
    return (Jn @ Jn.T).double() * s.double() ** 2


def accumulate(params: Sequence[Tensor], flat: Tensor) -> None:
    """Add ``flat [sum numel]`` into ``.grad`` of ``params`` (set it where ``.grad`` is ``None``)."""
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        g = g.view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


def accumulate_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add per-parameter gradients (``None`` = nothing) into ``.grad``."""
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.to(p.dtype)
        else:
            p.grad.add_(g)


def leaf_parameters(roots: Sequence[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad that ``roots`` depend on, found by walking their autograd graph."""
    seen: dict[int, object] = {}
    leaves: dict[int, Tensor] = {}
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen[id(fn)] = fn  # keep the node alive so its id is not reused during the walk
        variable = getattr(fn, "variable", None)  # AccumulateGrad nodes hold their leaf
        if variable is not None:
            leaves.setdefault(id(variable), variable)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return list(leaves.values())


def fp32_math(device: torch.device):
    """A context in which autocast is off, so the balancer math stays in the dtype it is written for."""
    return torch.autocast(device_type=device.type, enabled=False)
