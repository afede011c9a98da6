"""The Gramian ``G = J J^T`` of per-task gradients of the shared parameters, without the Jacobian ``J``.

``G`` is a sum of one block per parameter, ``G = sum_p J_p J_p^T``, and for a linear map ``Y = X W^T + b``
(``X [N, in]``, ``Y [N, out]``, leading dimensions flattened into ``N``) the per-task gradients are
``dL_i/dW = D_i^T X`` and ``dL_i/db = 1^T D_i`` with ``D_i = dL_i/dY``. So

* ``G_W[i, j] = <D_i^T X, D_j^T X> = sum((X X^T) * (D_i D_j^T))``, and
* ``G_b[i, j] = (1^T D_i) . (1^T D_j)``.

A :class:`GramianRecorder` puts forward hooks on the linear modules (``torch.nn.Linear`` and PyG's
``Linear``) that own shared parameters; each call records its input ``X`` and output ``Y``. A module called
several times in one forward has ``dL_i/dW = sum_calls D_{i,c}^T X_c``, which is the same formula with the
calls' rows concatenated, so calls are concatenated (never their Gramians summed). Every other shared parameter
(batch-norm affine, embeddings, attention vectors, scalars, a linear whose recorded tensors were changed in
place) is small and is taken the plain way: its per-task gradients ``J_f`` are formed and ``J_f J_f^T`` added.

The tasks are taken in chunks (one backward per task on the CPU, a batched product per chunk on a GPU, through
:class:`~graph_mtl.engine.gradients.JacobianEngine`) to the hooked outputs ``Y`` and the other parameters; each
task's ``D_i`` is reduced at once to the smaller of two exact summaries, so the ``T`` output gradients of the
whole network are never held together:

* ``N >= in``: ``M_i = D_i^T X [out, in]`` (the block of ``J`` itself), ``G_W = gramian(M)``;
* ``N < in`` (e.g. per-graph layers of a virtual node): ``D_i [N, out]`` itself, and at the end
  ``G_W[i, j] = <D_i, K D_j>`` with ``K = X X^T [N, N]`` in float64.

What is kept is therefore at most the size of ``J`` (the ``M_i`` are ``J``'s blocks), less where ``N < in``, and
no copy of it is made: ``exact`` holds ``J`` with its stacked, scaled and combined copies (at ``T = 128`` on the
``step_time.py`` model, 4.9 GB of peak RSS growth against 1.9 GB here, ``benchmarks/gramian_memory.py``). The
blocks' products are those of :func:`~graph_mtl.engine.gradients.gramian` (the exact path's precision), summed in
float64. Exactness assumes a hooked module's weight is used only through its own forward (no weight tying into
other ops).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torch_geometric.nn.dense.linear import Linear as PygLinear

from graph_mtl.engine.gradients import JacobianEngine, gramian

#: modules computing ``y = x W^T + b`` in their forward (weight ``[out, in]``)
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, PygLinear)


@dataclass
class _Calls:
    """The recorded calls of one linear module in the current forward: inputs, outputs, their versions."""

    module: nn.Module
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    versions: list[tuple[int, int]] = field(default_factory=list)

    def intact(self) -> bool:
        """Whether no recorded tensor was changed in place since its call (else its gradient is not ``D``)."""
        return all((x._version, y._version) == v for x, y, v in zip(self.inputs, self.outputs, self.versions))


class GramianRecorder:
    """Forward hooks on ``model``'s linear modules; :meth:`gramian` gives ``G = J J^T`` for the last forward.

    Args:
        model: the model; hooks go on the linear modules owning a parameter of ``shared``, and a pre-hook on
            ``model`` itself clears the records at the start of each forward.
        shared: the shared parameters (those of ``J``).
    """

    def __init__(self, model: nn.Module, shared: Sequence[Tensor]) -> None:
        ids = {id(p) for p in shared}
        self._calls: dict[int, _Calls] = {}
        self._handles: list[RemovableHandle] = [model.register_forward_pre_hook(lambda *_: self.clear())]
        for module in model.modules():
            if isinstance(module, LINEAR_TYPES) and any(id(p) in ids for p in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._record))

    def _record(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        calls = self._calls.setdefault(id(module), _Calls(module))
        x = args[0].detach()
        calls.inputs.append(x)
        calls.outputs.append(output)
        calls.versions.append((x._version, output._version))

    def clear(self) -> None:
        """Forget the recorded calls (they hold the forward's tensors)."""
        self._calls = {}

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def gramian(self, losses: Sequence[Tensor], shared: Sequence[Tensor], jacobians: JacobianEngine,
                chunk: int = 1) -> Tensor:
        """``G [t, t] = J J^T`` (float64) of the per-task gradients of ``losses`` (scalars) at ``shared``, from
        the calls recorded since the last forward; the records are consumed. The graph is retained."""
        shared_ids = {id(p) for p in shared}
        linear = [c for c in self._calls.values() if c.intact()]
        parts: list[_Linear] = []
        covered: set[int] = set()
        for calls in linear:
            m = calls.module
            w_on = id(m.weight) in shared_ids
            b_on = m.bias is not None and id(m.bias) in shared_ids
            if w_on or b_on:
                parts.append(_Linear(calls, w_on, b_on))
                covered |= {id(p) for p, on in ((m.weight, w_on), (m.bias, b_on)) if on}
        rest = [p for p in shared if id(p) not in covered]
        outputs = [y for part in parts for y in part.calls.outputs]
        targets = outputs + rest
        t = len(losses)
        G = torch.zeros(t, t, dtype=torch.float64, device=losses[0].device)
        if not targets:
            return G
        sizes = [y.numel() for y in outputs] + [p.numel() for p in rest]
        J_rest = []
        for start in range(0, t, chunk):
            rows = jacobians.jacobian(list(losses[start:start + chunk]), targets, retain_graph=True)
            blocks = rows.split(sizes, dim=1)
            k = 0
            for part in parts:
                n = len(part.calls.outputs)
                part.add(blocks[k:k + n])
                k += n
            if rest:
                J_rest.append(torch.cat(blocks[k:], dim=1))
        for part in parts:
            G += part.gramian()
        if rest:
            G += gramian(torch.cat(J_rest))
        self.clear()
        return G


class _Linear:
    """The per-task summaries of one linear module's gradients (see the module docstring)."""

    def __init__(self, calls: _Calls, weight: bool, bias: bool) -> None:
        self.calls, self.weight, self.bias = calls, weight, bias
        out_features, in_features = calls.module.weight.shape
        self.shape = (out_features, in_features)
        dtype = torch.promote_types(calls.inputs[0].dtype, torch.float32)
        self.X = torch.cat([x.reshape(-1, in_features).to(dtype) for x in calls.inputs])  # calls' rows joined
        self.rows_form = self.X.shape[0] < in_features  # keep D_i [N, out] (smaller than D_i^T X [out, in])
        self.summaries: list[Tensor] = []
        self.bias_rows: list[Tensor] = []

    def add(self, blocks: Sequence[Tensor]) -> None:
        """Reduce a chunk's output gradients ``[c, numel(Y_call)]`` per call to its summaries."""
        c, out = blocks[0].shape[0], self.shape[0]
        D = torch.cat([b.reshape(c, -1, out) for b in blocks], dim=1).to(self.X.dtype)  # [c, N, out]
        if self.weight:
            self.summaries.append(D if self.rows_form else (D.transpose(1, 2) @ self.X).reshape(c, -1))
        if self.bias:
            self.bias_rows.append(D.sum(dim=1))

    def gramian(self) -> Tensor:
        """``G_W + G_b`` (float64) of this module's shared parameters."""
        G = 0
        if self.weight:
            S = torch.cat(self.summaries)
            if self.rows_form:  # <D_i, K D_j>, K = X X^T
                X = self.X.double()
                D = S.double()
                G = G + D.flatten(1) @ ((X @ X.T) @ D).flatten(1).T
            else:
                G = G + gramian(S)
        if self.bias:
            G = G + gramian(torch.cat(self.bias_rows))
        return G  # type: ignore[return-value]
