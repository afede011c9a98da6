r"""A gradient-conflict monitor: how the tasks' gradients agree, measured during training.

For the per-task gradients ``g_1 .. g_t`` (the rows of ``J [t, D]``) of one step:

* the pairwise cosine :math:`\cos_{ij} = g_i^\top g_j / (\lVert g_i\rVert \lVert g_j\rVert)`; tasks ``i`` and
  ``j`` *conflict* when :math:`\cos_{ij} < 0` (a step along one increases the other's loss to first order);
* the gradient magnitude similarity of Yu et al. (2020, "Gradient surgery for multi-task learning", PCGrad),
  :math:`\mathrm{GMS}_{ij} = 2 \lVert g_i\rVert \lVert g_j\rVert / (\lVert g_i\rVert^2 + \lVert g_j\rVert^2)`,
  1 for equal norms and close to 0 when one gradient dominates the other;
* the norms :math:`\lVert g_i\rVert`.

:func:`conflict_stats` computes them from any ``J``; :class:`ConflictMonitor` takes ``J`` every ``every``-th step
of a training loop and logs one JSON line per observation to ``conflicts.jsonl``.

Where the monitor observes (in :class:`graph_mtl.engine.trainer.Trainer`): after the losses and BEFORE the
balancer's backward, because the balancer's backward frees the autograd graph. The monitor takes its gradients
with ``torch.autograd.grad(..., retain_graph=True)``, which returns them without writing ``.grad`` and leaves
the graph intact, so the training step that follows is the same as without the monitor. The balancer's weights of
that step are only known afterwards: :meth:`ConflictMonitor.record_weights` attaches them to the observation just
made, which is written to the file then (or at the next observation / :meth:`ConflictMonitor.flush`).

Cost of one observation (nothing on the other steps): ``mode="rep"`` takes the gradients at the shared node
representation, i.e. ``t`` backward passes through the heads only (``D`` = nodes x width); ``mode="exact"``
takes them at the shared parameters, ``t`` backward passes through the encoder - as much as an exact gradient
balancer's step. Both are one batched product on a GPU (:class:`~graph_mtl.engine.gradients.JacobianEngine`).
The statistics are computed in float64 and copied to the host (one device sync per observation).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from graph_mtl.engine.gradients import JacobianEngine, trainable

MODES = ("rep", "exact")


def conflict_stats(J: Tensor) -> dict[str, Tensor]:
    r"""Pairwise statistics of the per-task gradients ``J [t, D]`` (rows may be zero).

    Returns float64 tensors on ``J``'s device:

    * ``"cos" [t, t]``: :math:`g_i^\top g_j / (\lVert g_i\rVert \lVert g_j\rVert)`, clamped to ``[-1, 1]``,
      with a diagonal of exactly 1; 0 where either norm is 0;
    * ``"gms" [t, t]``: :math:`2 \lVert g_i\rVert \lVert g_j\rVert / (\lVert g_i\rVert^2 + \lVert g_j\rVert^2)`
      (PCGrad's gradient magnitude similarity, in ``[0, 1]``); 0 where either norm is 0;
    * ``"norms" [t]``: :math:`\lVert g_i\rVert`;
    * ``"conflict" [t, t]`` (bool): :math:`\cos_{ij} < 0`.

    The Gramian is formed in float64, so float32/bf16 gradients of any magnitude neither overflow nor underflow.
    """
    if J.dim() != 2:
        raise ValueError(f"conflict_stats: expected J of shape [tasks, D], got {tuple(J.shape)}")
    J64 = J.detach().to(torch.float64)
    norms = torch.linalg.vector_norm(J64, dim=1)
    outer = norms[:, None] * norms[None, :]
    nonzero = outer > 0
    gram = J64 @ J64.T
    cos = torch.where(nonzero, gram / torch.where(nonzero, outer, torch.ones_like(outer)), torch.zeros_like(gram))
    cos = cos.clamp(-1.0, 1.0)
    eye = torch.eye(len(norms), dtype=torch.bool, device=J.device)
    cos = torch.where(eye & nonzero, torch.ones_like(cos), cos)
    squares = norms.square()
    denominator = squares[:, None] + squares[None, :]
    gms = torch.where(nonzero, 2 * outer / torch.where(nonzero, denominator, torch.ones_like(denominator)),
                      torch.zeros_like(outer))
    return {"cos": cos, "gms": gms.clamp(0.0, 1.0), "norms": norms, "conflict": cos < 0}


class ConflictMonitor:
    """Measures gradient conflicts between tasks every ``every``-th training step (see the module docstring).

    Each observation becomes one line of ``out_dir/conflicts.jsonl``: ``step``, ``epoch`` (set the attribute
    from the loop), ``tasks`` (the tasks present in the batch, the order of the matrices), ``norms``, ``cos`` and
    ``gms`` (``t x t`` lists; left out when more than ``matrix_limit`` tasks are present), ``conflict_rate`` (the
    share of task pairs with a negative cosine), ``mean_cos`` (over pairs), ``weights`` (``{task: weight}``, or
    ``null`` when none were recorded) and ``seconds`` (time the observation took). With TensorBoard installed,
    ``cos/<a>__<b>`` and ``norm/<task>`` scalars also go to ``out_dir/tb``.

    Running totals give :meth:`summary`; after a resumed run they cover the steps since the resume (the file
    keeps the whole run; a resumed run appends to it with ``append=True``).

    Args:
        task_names: the ordered names of all tasks.
        every: observe the steps whose number is a multiple of this.
        mode: ``"rep"`` (gradients at the shared representation) or ``"exact"`` (at the shared parameters).
        out_dir: folder of ``conflicts.jsonl`` (``None``: keep the totals and :attr:`last` only).
        append: add to an existing ``conflicts.jsonl`` instead of starting a new one.
        matrix_limit: write the matrices of an observation with at most this many tasks (and log per-pair
            scalars / report per-pair summaries up to this many tasks).
        tensorboard: also log to TensorBoard when it is installed.
    """

    def __init__(self, task_names: Sequence[str], every: int = 50, mode: str = "rep",
                 out_dir: str | Path | None = None, *, append: bool = False, matrix_limit: int = 64,
                 tensorboard: bool = True) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"monitor: every must be an int >= 1, got {every!r}")
        if mode not in MODES:
            raise ValueError(f"monitor: unknown mode {mode!r}; choose one of {list(MODES)}")
        names = list(task_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"monitor: task_names must be distinct and non-empty, got {names}")
        self.task_names = names
        self.index = {name: i for i, name in enumerate(names)}
        self.every = every
        self.mode = mode
        self.matrix_limit = matrix_limit
        self.epoch = 0
        self.engine = JacobianEngine()  # one backward per task on the CPU, one batched product on a GPU
        t = len(names)
        self._cos_sum = torch.zeros(t, t, dtype=torch.float64)
        self._gms_sum = torch.zeros(t, t, dtype=torch.float64)
        self._conflicts = torch.zeros(t, t, dtype=torch.long)
        self._pairs = torch.zeros(t, t, dtype=torch.long)
        self._norm_sum = torch.zeros(t, dtype=torch.float64)
        self._norm_count = torch.zeros(t, dtype=torch.long)
        self.observations = 0
        self.seconds = 0.0
        self.last: dict[str, Any] | None = None  # the latest observation's record
        self._pending: dict[str, Any] | None = None  # observed, waiting for the step's weights
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.path = self.out_dir / "conflicts.jsonl" if self.out_dir is not None else None
        self._writer = None
        self._tensorboard = tensorboard and self.out_dir is not None
        self._started = append  # nothing is written before the first observation (a run that fails first
        # leaves its folder as it was)

    # ------------------------------------------------------------------------------------------ observing

    def observe(self, step: int, losses: Mapping[str, Tensor], shared_params: Iterable[Tensor] | None,
                representation: Tensor | Sequence[Tensor] | None, weights: Tensor | Sequence[float] | None = None,
                *, grad_scale: float | Tensor | None = None) -> dict[str, Any] | None:
        """Observe ``step`` if it is a multiple of ``every``; returns the record, or ``None`` when skipped.

        The trainer passes the 1-based number of the step being taken (the ``step`` column of ``steps.csv``).

        Call it after the losses are computed and before the backward of the step: the gradients are taken with
        ``retain_graph=True`` and nothing is written to ``.grad``. ``shared_params`` is only read in ``"exact"``
        mode and ``representation`` only in ``"rep"`` mode. ``weights`` (all tasks' or the present tasks') are
        stored with the record; without them the record waits for :meth:`record_weights`. ``grad_scale``: the
        fp16 loss scale, applied to the losses and divided out of the gradients (so small gradients do not
        underflow in fp16).
        """
        if step % self.every != 0:
            return None
        self.flush()
        started = time.perf_counter()
        unknown = [name for name in losses if name not in self.index]
        if unknown:
            raise KeyError(f"monitor: losses for unknown tasks {unknown}; known tasks: {self.task_names}")
        names = [name for name in self.task_names if name in losses]
        if not names:
            return None
        per_task = [losses[name] if grad_scale is None else losses[name] * grad_scale for name in names]
        J = self.engine.jacobian(per_task, self._targets(shared_params, representation), retain_graph=True)
        if grad_scale is not None:
            J = J.to(torch.float64) / grad_scale
        stats = {key: value.cpu() for key, value in conflict_stats(J).items()}
        del J
        record = self._record(step, names, stats)
        record["seconds"] = time.perf_counter() - started
        self.seconds += record["seconds"]
        self.last = record
        self._pending = record
        if weights is not None:
            self.record_weights(weights)
        return record

    def record_weights(self, weights: Tensor | Sequence[float]) -> None:
        """Attach the balancer's weights to the observation waiting for them (if any) and write it out."""
        record = self._pending
        if record is None:
            return
        values = weights.detach().float().cpu().tolist() if isinstance(weights, Tensor) else list(weights)
        if len(values) == len(self.task_names):
            record["weights"] = {name: float(w) for name, w in zip(self.task_names, values)}
        elif len(values) == len(record["tasks"]):
            record["weights"] = {name: float(w) for name, w in zip(record["tasks"], values)}
        else:
            raise ValueError(f"monitor: {len(values)} weights for {len(self.task_names)} tasks "
                             f"({len(record['tasks'])} present)")
        self.flush()

    def flush(self) -> None:
        """Write the observation that still waits for its weights (with ``weights: null``)."""
        record, self._pending = self._pending, None
        if record is None:
            return
        if self.path is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with self.path.open("a" if self._started else "w") as handle:
                handle.write(json.dumps(record) + "\n")
            self._started = True
        if self._tensorboard and self._writer is None:
            self._writer = _summary_writer(self.out_dir / "tb")
            self._tensorboard = self._writer is not None
        if self._writer is not None:
            self._log_scalars(record)

    def close(self) -> None:
        """Flush, and close the TensorBoard writer."""
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The totals behind :meth:`summary`, so that a resumed run's summary counts every observation."""
        return {"cos_sum": self._cos_sum, "gms_sum": self._gms_sum, "conflicts": self._conflicts,
                "pairs": self._pairs, "norm_sum": self._norm_sum, "norm_count": self._norm_count,
                "observations": self.observations, "seconds": self.seconds, "task_names": list(self.task_names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same tasks)."""
        if list(state["task_names"]) != self.task_names:
            raise ValueError(f"monitor: the state is of tasks {state['task_names']}, not {self.task_names}")
        for key in ("cos_sum", "gms_sum", "conflicts", "pairs", "norm_sum", "norm_count"):
            getattr(self, f"_{key}").copy_(state[key])
        self.observations, self.seconds = int(state["observations"]), float(state["seconds"])

    # ------------------------------------------------------------------------------------------ summary

    def summary(self, top: int = 10) -> dict[str, Any]:
        """Totals over the observations so far.

        ``conflict_fraction`` (``{"a__b": share of the observations of both tasks where cos < 0}``),
        ``mean_cos`` and ``mean_gms`` (``[T, T]``, ``None`` for pairs never observed together; these three only up
        to ``matrix_limit`` tasks), ``mean_norms``, ``conflict_rate`` (share of all observed pairs that
        conflicted), ``top_conflicts`` (the ``top`` pairs that conflicted most often), ``observations`` and
        ``seconds`` (total time spent observing).
        """
        self.flush()
        t = len(self.task_names)
        pairs = [(i, j) for i in range(t) for j in range(i + 1, t) if self._pairs[i, j] > 0]
        fraction = {(i, j): self._conflicts[i, j].item() / self._pairs[i, j].item() for i, j in pairs}
        mean_cos = {(i, j): self._cos_sum[i, j].item() / self._pairs[i, j].item() for i, j in pairs}
        ranked = sorted(pairs, key=lambda p: (-fraction[p], mean_cos[p]))[:top]
        total_pairs = sum(self._pairs[i, j].item() for i, j in pairs)
        out: dict[str, Any] = {
            "mode": self.mode,
            "every": self.every,
            "observations": self.observations,
            "seconds": self.seconds,
            "conflict_rate": (sum(self._conflicts[i, j].item() for i, j in pairs) / total_pairs
                              if total_pairs else None),
            "mean_norms": {name: (self._norm_sum[i].item() / self._norm_count[i].item()
                                  if self._norm_count[i] > 0 else None) for i, name in enumerate(self.task_names)},
            "top_conflicts": [{"pair": [self.task_names[i], self.task_names[j]], "fraction": fraction[i, j],
                               "mean_cos": mean_cos[i, j], "observations": self._pairs[i, j].item()}
                              for i, j in ranked],
        }
        if t <= self.matrix_limit:
            out["tasks"] = list(self.task_names)
            out["conflict_fraction"] = {f"{self.task_names[i]}__{self.task_names[j]}": fraction[i, j]
                                        for i, j in pairs}
            out["mean_cos"] = _mean_matrix(self._cos_sum, self._pairs)
            out["mean_gms"] = _mean_matrix(self._gms_sum, self._pairs)
        return out

    # ------------------------------------------------------------------------------------------ internals

    def _targets(self, shared_params: Iterable[Tensor] | None,
                 representation: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
        if self.mode == "exact":
            targets = trainable(shared_params)
            if not targets:
                raise ValueError("monitor: mode 'exact' needs shared parameters that require grad")
            return targets
        if representation is None:
            raise ValueError("monitor: mode 'rep' needs the shared representation (representation=...)")
        targets = [representation] if isinstance(representation, Tensor) else list(representation)
        if not targets or not all(z.requires_grad for z in targets):
            raise ValueError("monitor: the shared representation does not require grad (observe inside training, "
                             "not under torch.no_grad)")
        return targets

    def _record(self, step: int, names: list[str], stats: dict[str, Tensor]) -> dict[str, Any]:
        cos, gms, norms, conflict = stats["cos"], stats["gms"], stats["norms"], stats["conflict"]
        t = len(names)
        idx = torch.tensor([self.index[name] for name in names])
        rows, cols = idx[:, None], idx[None, :]
        self._cos_sum[rows, cols] += cos
        self._gms_sum[rows, cols] += gms
        self._conflicts[rows, cols] += conflict.long()
        self._pairs[rows, cols] += 1
        self._norm_sum[idx] += norms
        self._norm_count[idx] += 1
        self.observations += 1
        upper = torch.triu_indices(t, t, offset=1)
        pair_cos = cos[upper[0], upper[1]]
        record: dict[str, Any] = {
            "step": int(step),
            "epoch": int(self.epoch),
            "tasks": names,
            "norms": [_round(v) for v in norms.tolist()],
            "conflict_rate": float((pair_cos < 0).double().mean()) if t > 1 else None,
            "mean_cos": _round(float(pair_cos.mean())) if t > 1 else None,
            "weights": None,
        }
        if t <= self.matrix_limit:
            record["cos"] = [[_round(v) for v in row] for row in cos.tolist()]
            record["gms"] = [[_round(v) for v in row] for row in gms.tolist()]
        return record

    def _log_scalars(self, record: dict[str, Any]) -> None:
        step, names = record["step"], record["tasks"]
        for name, value in zip(names, record["norms"]):
            self._writer.add_scalar(f"norm/{name}", value, step)
        for i, row in enumerate(record.get("cos") or []):
            for j in range(i + 1, len(row)):
                self._writer.add_scalar(f"cos/{names[i]}__{names[j]}", row[j], step)
        if record["conflict_rate"] is not None:
            self._writer.add_scalar("conflict_rate", record["conflict_rate"], step)
        for name, value in (record["weights"] or {}).items():
            self._writer.add_scalar(f"weight/{name}", value, step)


def _summary_writer(log_dir: Path):
    """A TensorBoard ``SummaryWriter`` into ``log_dir``, or ``None`` when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _mean_matrix(total: Tensor, count: Tensor) -> list[list[float | None]]:
    return [[(s / c if c > 0 else None) for s, c in zip(srow, crow)]
            for srow, crow in zip(total.tolist(), count.tolist())]


def _round(value: float) -> float:
    """Seven significant digits keep the JSON lines short (non-finite values are kept as they are)."""
    return float(f"{value:.7g}") if math.isfinite(value) else value
