"""Data-parallel training under ``torchrun``: every balancer exact on the global batch.

Launch: ``torchrun --nproc_per_node N -m graph_mtl.cli train ...`` (README). The process group comes from the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``): NCCL on CUDA (process
``LOCAL_RANK`` on GPU ``LOCAL_RANK``), gloo on the CPU.

**What is exact.** A step on ``N`` processes, each holding a shard of the global batch, must give the update
of one process holding the whole batch. A task's loss is a mean over the labelled entries of the *global*
batch, ``L_t = (sum_r S_t^r) / (sum_r n_t^r)`` (``S`` the summed element losses of shard ``r``, ``n`` its
labelled entries). Each process builds (:func:`sharded_losses`)

    ``l_t^r = S_t^r / n_t + stopgrad(L_t - S_t^r / n_t)``

whose *value* is the global loss ``L_t`` and whose *gradient* is this shard's share, so that
``sum_r grad l_t^r = grad L_t``. Anything a balancer computes from loss values (weights, UW's log-variances,
GradNorm's ``L_i(0)``, DWA's history, FAMO's logits) is therefore identical on every process without any
further communication, and the gradient of any function ``f(l_1..l_T)`` summed over processes is the global
``sum_t df/dL_t grad L_t``. A task is present in the step when it has a label anywhere in the global batch.

What remains is to sum gradients over processes, exactly once each (:class:`GradientSync`). The step engine's
data-parallel version, :class:`DataParallelStepEngine`, does it; no balancing method knows of processes:

* a loss weighting (one backward of ``sum_t w_t l_t``): every ``.grad`` is summed after the backward;
* a gradient method in ``exact`` mode: the per-task Jacobian ``J [t, P]`` of the shared parameters is summed
  (``J = sum_r J^r``), so the weights and ``w^T J`` are the global ones and the shared ``.grad`` is final; only
  the heads' gradients are summed after the step;
* a gradient method in ``rep`` mode: the representation of the global batch is the concatenation of the
  shards' (each node or graph lives on one process), so ``J J^T = sum_r J^r J^r^T``: the ``[t, t]`` Gramian is
  summed (with a common scale ``s = max_r max|J^r|``), every process back-propagates ``sum_i w_i dL_i/dZ^r``
  through its shard and every ``.grad`` is summed after the step;
* GradNorm: the gradients at the last shared layer are summed before their norms are taken.

A gradient summed inside the step is marked (:meth:`GradientSync.mark_reduced`) and skipped by the final
:meth:`GradientSync.reduce_grads`, which packs every other gradient into one flat buffer per dtype and device
and all-reduces it once. ``DistributedDataParallel`` is not wrapped around the model: its reducer all-reduces
whatever a backward writes into ``.grad``, which for a gradient method is either nothing (the exact update is
written without a backward) or the shared gradient a second time; the launch and process group are
PyTorch's own, the per-process shards are cut by ``data/sharding.py``.

Not exact across processes: batch-norm statistics of graph batches on the CPU (each process normalises its
shard; on CUDA the trainer converts batch norms to ``SyncBatchNorm``; single-graph node datasets are exact,
every process holding the whole graph), dropout masks, a graph-level task on a single-graph dataset (every
process holds that graph), and methods whose update is not a Gramian-weighted sum in ``rep`` mode (GradDrop,
DB-MTL: use ``grad_mode: exact``). ``grad_mode: gramian`` is refused: its layer blocks
``sum((X X^T) * (D_i D_j^T))`` pair every shard's rows with every other shard's, so the global Gramian is not the
sum of the shards' and would need each shard's ``X`` and ``D_i`` gathered; ``exact`` gives the same step.
Validation loss is the mean of per-batch means over each process's batches; the metrics are computed on the
gathered predictions of the whole split and are exact.

Exact means up to float round-off: the shards' sums are taken in another order than one process's (about 1e-7
relative), and two things enlarge that difference. An update that cancels conflicting task gradients (UPGrad,
MGDA, IMTL-G, Nash-MTL) carries it times ``sum_i |w_i| ||g_i|| / ||w^T J||``; Adam divides each coordinate by its
own gradient scale, so a parameter whose exact gradient is zero (a bias just before a batch norm) moves by up to
``lr`` per step on round-off alone, differently in each run.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor, nn

from graph_mtl.balancers.args import ArgumentError
from graph_mtl.balancers.base import Aggregator, Method
from graph_mtl.engine.gradients import gradient_scale, gramian, trainable
from graph_mtl.engine.step import StepEngine
from graph_mtl.tasks import Scalers, Task, loss_targets, masked_loss_sum


@dataclass
class GradientSync:
    """Sums tensors over the processes of the default group, each gradient once per step.

    Keeps the seconds and bytes spent in each kind of collective (``stats``) for the overhead benchmark.
    """

    rank: int
    world_size: int
    stats: dict[str, list[float]] = field(default_factory=dict)
    _reduced: set[int] = field(default_factory=set)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _all_reduce(self, tensor: Tensor, kind: str, op=tdist.ReduceOp.SUM) -> Tensor:
        started = time.perf_counter()
        tdist.all_reduce(tensor, op=op)
        entry = self.stats.setdefault(kind, [0.0, 0.0, 0.0])
        entry[0] += time.perf_counter() - started
        entry[1] += tensor.numel() * tensor.element_size()
        entry[2] += 1
        return tensor

    def sum(self, tensor: Tensor, kind: str = "balancer") -> Tensor:
        """The sum over processes of ``tensor`` (a new tensor; ``tensor`` is left as it is)."""
        return self._all_reduce(tensor.detach().clone().contiguous(), kind)

    def max(self, tensor: Tensor, kind: str = "balancer") -> Tensor:
        """The maximum over processes of ``tensor``."""
        return self._all_reduce(tensor.detach().clone().contiguous(), kind, tdist.ReduceOp.MAX)

    def mark_reduced(self, params: Sequence[Tensor]) -> None:
        """``params`` already hold their global gradient this step: :meth:`reduce_grads` skips them."""
        self._reduced.update(id(p) for p in params)

    def reduce_grads(self, params: Sequence[Tensor]) -> None:
        """Sum ``.grad`` of ``params`` not marked this step over processes, one flat all-reduce per dtype and
        device; then forget the marks. A parameter no process has a gradient for keeps ``.grad = None``, as in
        a single process (Adam's momentum and weight decay then leave it alone, e.g. the head of a task absent
        from the whole batch); one that some process lacks counts as zero there."""
        pending = [p for p in params if p.requires_grad and id(p) not in self._reduced]
        self._reduced.clear()
        groups: dict[tuple, list[Tensor]] = {}
        for p in pending:
            groups.setdefault((p.dtype, p.device), []).append(p)
        for (dtype, device), group in groups.items():
            has = torch.tensor([float(p.grad is not None) for p in group], dtype=dtype, device=device)
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
                             + [has])
            self._all_reduce(flat, "gradients")
            anywhere = (flat[-len(group):] > 0).tolist()
            for p, g, some in zip(group, flat[:-len(group)].split([p.numel() for p in group]), anywhere):
                if not some:
                    p.grad = None
                elif p.grad is None:
                    p.grad = g.view_as(p).clone()
                else:
                    p.grad.copy_(g.view_as(p))

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process."""
        for param in module.parameters():
            tdist.broadcast(param.data, src=0)
        self.broadcast_buffers(module)

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every process."""
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every process."""
        for buffer in module.buffers():
            tdist.broadcast(buffer.data, src=0)

    def gather(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
        out: list = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        tdist.barrier()

    def summary(self) -> dict[str, dict[str, float]]:
        """Seconds, megabytes and calls of each kind of collective so far."""
        return {kind: {"seconds": s, "megabytes": b / 2**20, "calls": int(c)}
                for kind, (s, b, c) in self.stats.items()}


class DataParallelStepEngine(StepEngine):
    """The step engine of one process of a data-parallel run: the same step as :class:`StepEngine` on the
    global batch, with the gradients summed over processes where the module docstring says.

    Args:
        method: the balancing method (its state is replaced by rank 0's, so every process starts equal).
        sync: the process group.
        settings: :class:`StepEngine`'s keyword arguments.
    """

    def __init__(self, method: Method, sync: GradientSync, **settings) -> None:
        super().__init__(method, **settings)
        if self.grad_mode == "rep" and isinstance(method, Aggregator):
            raise ArgumentError("grad_mode", f"{method.label} in 'rep' mode is not a Gramian-weighted sum, so it "
                                "cannot be split across processes; use 'exact'")
        if self.grad_mode == "gramian":  # G of the global batch needs every shard's D_i against every X
            raise ArgumentError("grad_mode", "'gramian' is one process only (the global Gramian is not the sum of "
                                "the shards'); set train.grad_mode to 'exact'")
        self.sync = sync
        self.load_state_dict(sync.broadcast_object(self.state_dict()))

    @classmethod
    def of(cls, engine: StepEngine, sync: GradientSync) -> DataParallelStepEngine:
        """The data-parallel version of ``engine`` (same method and settings)."""
        return cls(engine.method, sync, **engine.settings)

    def _global_jacobian(self, J: Tensor) -> Tensor:
        return self.sync.sum(J, "jacobian")  # J of the global batch = sum over processes

    def _gramian(self, J: Tensor) -> Tensor:
        if self.grad_mode == "exact":  # J is global already
            return gramian(J)
        # rep: each process holds the gradients at its shard of the representation; with a common scale the
        # shards' Gramians add up to the global one
        return self.sync.sum(gramian(J, self.sync.max(gradient_scale(J))), "gramian")

    def _mark_reduced(self, params: list[Tensor]) -> None:
        self.sync.mark_reduced(params)

    def _finish(self, shared: list[Tensor], task_params: dict[str, Iterable[nn.Parameter]] | None) -> None:
        if task_params is None:
            raise ValueError("data-parallel steps need task_params (the heads' parameters by task)")
        heads = [p for params in task_params.values() for p in params]
        self.sync.reduce_grads(trainable([*shared, *heads]))


def launched_by_torchrun() -> bool:
    """Whether the environment describes more than one process (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 of the default process group, or the only process."""
    return not (tdist.is_available() and tdist.is_initialized()) or tdist.get_rank() == 0


@dataclass
class _OwnGroup:
    """The default process group when :func:`init_distributed` created it, and whether the last piece of work run
    in it (:func:`work_finished`) ended without an error."""

    created: bool = False
    finished: bool = False


_OWN_GROUP = _OwnGroup()


def work_finished(finished: bool) -> None:
    """Record whether the work run in this process's group ended without an error (``train`` sets it); read when
    the process exits, by :func:`close_distributed`."""
    _OWN_GROUP.finished = finished


def close_distributed() -> None:
    """Destroy the default process group if :func:`init_distributed` created it (run at the process's exit); a
    no-op for a group the caller created, or none.

    A process that exits with its gloo group alive can abort in the group's destructor (``terminate called
    without an active exception``: about once in 20 resumed runs of two processes on 2 loaded cores, none in 103
    with this). It is closed at exit rather than after each run, because one process may train several runs in
    one group (``graph_mtl.cli.main`` called in a loop). When the last work finished, a barrier first lets no
    process tear its connections down while another still talks to it; after an error there is none (the others
    may never reach it, and torchrun stops them)."""
    if not _OWN_GROUP.created or not tdist.is_initialized():
        return
    _OWN_GROUP.created = False
    try:
        if _OWN_GROUP.finished:
            tdist.barrier()
    finally:
        tdist.destroy_process_group()


def init_distributed(device: torch.device) -> GradientSync | None:
    """Join (or reuse) the default process group when running under torchrun; ``None`` for one process.

    NCCL when ``device`` is CUDA, gloo otherwise. Reuses a group the caller already initialised (tests).
    """
    if not tdist.is_available():
        return None
    if not tdist.is_initialized():
        if not launched_by_torchrun():
            return None
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _OWN_GROUP.created = True
        atexit.register(close_distributed)
    if tdist.get_world_size() == 1:
        return None
    return GradientSync(tdist.get_rank(), tdist.get_world_size())


def local_device(requested: torch.device) -> torch.device:
    """CUDA device ``LOCAL_RANK`` for a CUDA run under torchrun (whatever index was asked for: every process
    on one GPU would not work), else ``requested``."""
    if requested.type == "cuda" and launched_by_torchrun():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return requested


def sharded_losses(tasks: list[Task], preds: dict[str, Tensor], batch, scalers: Scalers | None,
                   sync: GradientSync) -> dict[str, Tensor]:
    """Per-task losses whose value is the global batch's and whose gradient is this shard's share (module
    docstring); one all-reduce of ``2T`` numbers. Tasks with no label in the global batch are left out."""
    sums, counts = [], []
    for task in tasks:
        pred = preds[task.name]
        total, count = masked_loss_sum(task, pred, *loss_targets(task, batch, scalers))
        # no label here: an exact 0 that keeps the graph connected (not pred * 0, which is NaN at an inf)
        sums.append(total.float() if total is not None else pred.float().reshape(-1)[:0].sum())
        counts.append(count)
    local = torch.stack(sums)
    stats = sync.sum(torch.cat([local.detach().double(), torch.tensor(counts, dtype=torch.float64,
                                                                      device=local.device)]), "losses")
    global_sum, global_count = stats[: len(tasks)].float(), stats[len(tasks):].float()
    present = (stats[len(tasks):] > 0).tolist()  # one host sync for all tasks
    losses: dict[str, Tensor] = {}
    for i, task in enumerate(tasks):
        if present[i]:
            share = local[i] / global_count[i]
            losses[task.name] = share + (global_sum[i] / global_count[i] - share).detach()
    return losses


def gather_predictions(sync: GradientSync, true: dict[str, np.ndarray], pred: dict[str, np.ndarray],
                       loss_total: float, loss_batches: int
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float, int]:
    """Every process's labels and predictions concatenated (rank order) and the summed loss terms."""
    parts = sync.gather((true, pred, loss_total, loss_batches))
    names = list(true)
    joined_true = {k: np.concatenate([p[0][k] for p in parts]) for k in names}
    joined_pred = {k: np.concatenate([p[1][k] for p in parts]) for k in names}
    return joined_true, joined_pred, sum(p[2] for p in parts), sum(p[3] for p in parts)
