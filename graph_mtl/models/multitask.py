"""MultiTaskGNN: one shared encoder, one head per task (node and graph tasks mixed)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from graph_mtl.engine.gradients import TaskRows
from graph_mtl.models.encoder import GNNEncoder
from graph_mtl.models.grouped import GroupedGraphHeads
from graph_mtl.models.heads import (
    OWN_POOLS,
    SHARED_LEARNED_POOLS,
    GraphHead,
    NodeHead,
    NodeSumHead,
    make_pool,
    pool_nodes,
    pooled_width,
    task_pools,
    task_sums,
    with_graph_features,
)
from graph_mtl.models.sharing import Trunk, TrunkOutput
from graph_mtl.tasks import Task


@dataclass
class MultiTaskOutput:
    """What :class:`MultiTaskGNN` returns: per-task predictions and the shared representations.

    ``node_repr`` is the encoder's output ``[num_nodes, width]`` (with a sharing trunk, ``model.arch`` other than
    ``hard``: the mean of the tasks' representations); ``graph_repr`` its pooling ``[num_graphs, width]`` (with the
    graph features appended, ``[num_graphs, width + F]``) when the graph heads share one parameter-free pooling
    (``None`` otherwise: per-head learned poolings, or tasks pooled differently by ``model.task_pool``);
    ``graph_only`` says that every task is graph-level.
    """

    preds: dict[str, Tensor]
    node_repr: Tensor
    graph_repr: Tensor | None = None
    graph_only: bool = False
    #: with grouped heads: ``graph_repr`` expanded once per task, ``[T, B, width]``, row ``t`` read by task ``t`` only
    task_rows: Tensor | None = None
    #: with a sharing trunk: the tensors every path from a shared parameter to a loss goes through (its ``Z``)
    trunk_reprs: list[Tensor] | None = None

    @property
    def shared_repr(self) -> Tensor | list[Tensor]:
        """The last representation every task's loss goes through, where rep-mode balancers take gradients:
        ``graph_repr`` when every task is graph-level and pooled alike (``[B, width]``: at 128 tasks and
        batches of 128 molecules, 0.04M numbers per task instead of the nodes' 0.6M), else ``node_repr``; with a
        sharing trunk its ``Z`` (:attr:`trunk_reprs`, see ``models/sharing.py``)."""
        if self.trunk_reprs is not None:
            return self.trunk_reprs
        return self.graph_repr if self.graph_repr is not None and self.graph_only else self.node_repr

    @property
    def balancer_repr(self) -> Tensor | list[Tensor] | TaskRows:
        """What a rep-mode balancer differentiates: :attr:`task_rows` (every task's gradient at the shared
        representation in one backward) where the heads are grouped, else :attr:`shared_repr`."""
        return TaskRows(self.task_rows) if self.task_rows is not None else self.shared_repr


class ColumnPreds(dict):
    """Per-task predictions (a plain ``dict`` to its readers) that are the columns of one ``matrix [B, T]``, in
    the order of ``names``: losses of many one-column tasks can then be one operation on the matrix."""

    def __init__(self, matrix: Tensor, names: Sequence[str]) -> None:
        super().__init__((name, matrix[:, i:i + 1]) for i, name in enumerate(names))
        self.matrix = matrix
        self.position = {name: i for i, name in enumerate(names)}


_ATTRIBUTES = nn.ModuleDict()  # names taken by a ModuleDict's own attributes (``training``, ``type``, ...)


def head_key(name: str) -> str:
    """The key of task ``name``'s head in :attr:`MultiTaskGNN.heads` (a task name is a label, any string).

    A Python identifier that is not an attribute of ``nn.ModuleDict`` is its own key (so checkpoints of such names
    keep their parameter names); any other name is ``~`` plus the name with ``%`` and ``.`` percent-encoded
    (``NVS_GPCR_hDRD4.4`` -> ``~NVS_GPCR_hDRD4%2E4``). ``~`` is not an identifier character, so the two kinds
    never collide, and the encoding is one-to-one.
    """
    if name.isidentifier() and not hasattr(_ATTRIBUTES, name):
        return name
    return "~" + name.replace("%", "%25").replace(".", "%2E")


#: ``grouped_heads=None`` groups the heads from this many eligible tasks on (below it separate heads are as fast)
GROUPED_HEADS_FROM = 32


def grouping_blocker(tasks: Sequence[Task], pool: str) -> str | None:
    """Why these tasks' heads cannot be one :class:`GroupedGraphHeads` (``None``: they can): every task must be
    graph-level with one output, pooled alike (no per-head learned pooling)."""
    if any(t.level != "graph" for t in tasks):
        return "every task must be graph-level"
    if any(t.num_outputs != 1 for t in tasks):
        return "every task must have one output (a binary or one-column regression task)"
    if pool in OWN_POOLS:
        return f"pool {pool!r} is a pooling of each head's own"
    return None


class MultiTaskGNN(nn.Module):
    """A shared :class:`GNNEncoder` feeding one :class:`NodeHead` or :class:`GraphHead` per task, or, for many
    one-output graph tasks, one :class:`~graph_mtl.models.grouped.GroupedGraphHeads` for all of them.

    ``heads`` is keyed by :func:`head_key` (task names may hold dots, spaces or any character); predictions,
    :meth:`head` and :meth:`task_parameters` use the task names.

    With a :class:`~graph_mtl.models.sharing.Trunk` as ``encoder`` (``model.arch`` other than ``hard``) head ``t``
    reads task ``t``'s representation, and what is shared is the trunk's to say.

    Args:
        encoder: the shared encoder, or a sharing trunk.
        tasks: the tasks; a head of ``task.num_outputs`` outputs is built for each.
        pool: graph pooling of the graph heads (``auto``: each task's preference, see
            :func:`~graph_mtl.models.heads.task_pools`); a pooling in
            :data:`~graph_mtl.models.heads.SHARED_LEARNED_POOLS` (set2set) shared by every graph head is one module
            of the shared model.
        head_hidden: hidden width of the heads (default: the encoder's width).
        head_layers: linear layers per head.
        head_dropout: dropout inside the heads.
        grouped_heads: ``True`` for one grouped module of all heads (an error where :func:`grouping_blocker`
            objects), ``False`` for separate heads, ``None`` to group from :data:`GROUPED_HEADS_FROM` eligible tasks.
        task_pool: ``{task: pooling}`` overriding ``pool`` for those graph tasks; heads that pool differently do
            not share a graph representation (rep-mode balancers then use ``node_repr``) and are never grouped.
        graph_features: width ``F`` of the per-graph features ``batch.graph_x`` ``[B, F]`` appended to the pooled
            representation before every graph head (0: none).
        task_sum: ``{graph task: node task}`` read out as the node task's sum (:class:`NodeSumHead`); with
            ``pool="auto"`` also the sums the dataset declares (:func:`~graph_mtl.models.heads.task_sums`).
    """

    def __init__(self, encoder: GNNEncoder | Trunk, tasks: Sequence[Task], pool: str = "mean",
                 head_hidden: int | None = None, head_layers: int = 2, head_dropout: float = 0.0,
                 grouped_heads: bool | None = None, task_pool: Mapping[str, str] | None = None,
                 graph_features: int = 0, task_sum: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.tasks = list(tasks)
        width = encoder.out_channels
        hidden = head_hidden or encoder.hidden
        heads: dict[str, nn.Module] = {}
        self.arch = encoder.arch if isinstance(encoder, Trunk) else "hard"
        #: ``{graph task: node task}``: graph tasks read out as a node task's sum, not pooled
        self.task_sum = task_sums(self.tasks, pool, task_pool, task_sum)
        #: each pooled graph task's pooling (``pool`` = ``auto`` resolved, ``task_pool`` applied); one value: shared
        self.task_pool = {name: value for name, value in task_pools(self.tasks, pool, task_pool).items()
                          if name not in self.task_sum}
        pools = set(self.task_pool.values())
        mixed = len(pools) > 1
        pool = next(iter(pools)) if len(pools) == 1 else ("mean" if pool == "auto" else pool)
        #: width of the per-graph features (``batch.graph_x``) appended to the pooled representation
        self.graph_features = graph_features
        # a learned pooling shared by the heads would sit after the trunk's Z: with a trunk each head learns its own
        shared_learned = pool in SHARED_LEARNED_POOLS and not mixed and self.arch == "hard"
        blocker = (grouping_blocker(self.tasks, pool) if self.arch == "hard" else "model.arch must be 'hard'") or (
            "graph tasks pool differently (model.task_pool)" if mixed else None)
        if grouped_heads and blocker:
            raise ValueError(f"model.grouped_heads: {blocker}; set it to false or leave it unset")
        grouped = blocker is None and (grouped_heads or (grouped_heads is None
                                                         and len(self.tasks) >= GROUPED_HEADS_FROM))
        #: grouped heads read per-task rows of the pooled representation (:attr:`MultiTaskOutput.task_rows`), for
        #: balancers that take every task's gradient; ``False`` (loss weightings) saves their backward
        self.per_task_rows = True
        self.grouped = (GroupedGraphHeads(pooled_width(pool, width) + graph_features, len(self.tasks), hidden,
                                          head_layers, head_dropout) if grouped else None)
        for task in self.tasks if not grouped else ():
            if task.name in self.task_sum:
                heads[task.name] = NodeSumHead(self.task_sum[task.name], task.num_outputs)
            elif task.level == "node":
                heads[task.name] = NodeHead(width, task.num_outputs, hidden, head_layers, head_dropout)
            else:
                heads[task.name] = GraphHead(width, task.num_outputs, self.task_pool[task.name], hidden, head_layers,
                                             head_dropout, own_pool=not shared_learned, extra_channels=graph_features)
        self._keys = {name: head_key(name) for name in heads}
        self.heads = nn.ModuleDict({self._keys[name]: head for name, head in heads.items()})
        self.pool = pool
        graph_heads = [h for h in heads.values() if isinstance(h, GraphHead)]
        any_graph = bool(graph_heads) or grouped
        self.graph_pool = make_pool(pool, width) if shared_learned and any_graph else None
        # pool once for every graph head when they pool alike and the pooling has no parameters of a head (also
        # one backward through it); heads that pool differently share only the node representation
        self._shared_pool = any_graph and not mixed and not any(h.learned_pool for h in graph_heads)
        self._graph_only = grouped or len(graph_heads) == len(heads)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def forward(self, batch) -> MultiTaskOutput:
        batch_vec = getattr(batch, "batch", None)
        num_graphs = int(getattr(batch, "num_graphs", 1) or 1)
        if batch_vec is None:
            batch_vec = batch.x.new_zeros(batch.x.size(0), dtype=batch.edge_index.dtype)
        inputs = (batch.x, batch.edge_index, getattr(batch, "edge_attr", None), batch_vec, num_graphs)
        extra = getattr(batch, "graph_x", None) if self.graph_features else None
        if isinstance(self.encoder, Trunk):
            return self._forward_trunk(self.encoder(*inputs), batch_vec, num_graphs, extra)
        h = self.encoder(*inputs)
        pooled = with_graph_features(self._pool(h, batch_vec, num_graphs), extra) if self._shared_pool else None
        if self.grouped is not None:
            rows = pooled.unsqueeze(0).expand(len(self.tasks), -1, -1) if self.per_task_rows else None
            preds = ColumnPreds(self.grouped(pooled if rows is None else rows), self.task_names)
            return MultiTaskOutput(preds=preds, node_repr=h, graph_repr=pooled, graph_only=True, task_rows=rows)
        preds = self._head_preds(lambda name: h, batch_vec, num_graphs, lambda name: pooled, extra)
        return MultiTaskOutput(preds=preds, node_repr=h, graph_repr=pooled, graph_only=self._graph_only)

    def _head_preds(self, reprs: Callable[[str], Tensor], batch_vec: Tensor, num_graphs: int,
                    pooled: Callable[[str], Tensor | None], extra: Tensor | None) -> dict[str, Tensor]:
        """Every head's predictions, in task order: head ``t`` reads ``reprs(t)`` (and a graph head ``pooled(t)``, its
        input pooled elsewhere, or ``None``); a node-sum head applies its node task's head to ``reprs(t)``."""
        preds = {}
        for name in self.task_names:
            head, h = self.heads[self._keys[name]], reprs(name)
            if isinstance(head, NodeSumHead):
                preds[name] = head(self.heads[self._keys[head.node_task]], h, batch_vec, num_graphs)
            elif isinstance(head, GraphHead):
                preds[name] = head(h, batch_vec, num_graphs, pooled(name), extra)
            else:
                preds[name] = head(h, batch_vec, num_graphs)
        return preds

    def _forward_trunk(self, out: TrunkOutput, batch_vec: Tensor, num_graphs: int,
                       extra: Tensor | None) -> MultiTaskOutput:
        """Head ``t`` on task ``t``'s representation from the trunk (``extra``: the per-graph features)."""
        reprs = dict(zip(self.task_names, out.task_reprs))

        def pooled(name: str) -> Tensor | None:
            return (with_graph_features(self._pool(reprs[name], batch_vec, num_graphs), extra) if self._shared_pool
                    else None)

        preds = self._head_preds(reprs.__getitem__, batch_vec, num_graphs, pooled, extra)
        mean = out.task_reprs[0] if len(out.task_reprs) == 1 else torch.stack(out.task_reprs).mean(0)
        return MultiTaskOutput(preds=preds, node_repr=mean, graph_only=self._graph_only,
                               trunk_reprs=out.balancer_reprs)

    def calibrate_sums(self, scalers: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """Start every node-sum head as the plain sum under the targets' standardisation (``scalers``: ``{task:
        (mean, std)}`` of the standardised tasks; :meth:`NodeSumHead.calibrate`)."""
        for graph_task, node_task in self.task_sum.items():
            self.heads[self._keys[graph_task]].calibrate(scalers.get(graph_task), scalers.get(node_task))

    def regularizer(self) -> Tensor | None:
        """A penalty of the architecture that is not a task (soft sharing's), or ``None``; the trainer adds its
        gradient to ``.grad`` after the balancer's step."""
        return self.encoder.regularizer() if isinstance(self.encoder, Trunk) else None

    def _pool(self, h: Tensor, batch_vec: Tensor, num_graphs: int) -> Tensor:
        if self.graph_pool is not None:
            return self.graph_pool(h, batch_vec, dim_size=num_graphs)
        return pool_nodes(self.pool, h, batch_vec, num_graphs)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the shared encoder and shared pooling (what gradient balancers act on); with a trunk, its
        shared parameters (none for soft sharing)."""
        if isinstance(self.encoder, Trunk):
            return self.encoder.shared_parameters()
        if self.graph_pool is None:
            return self.encoder.parameters()
        return itertools.chain(self.encoder.parameters(), self.graph_pool.parameters())

    def head(self, name: str) -> nn.Module:
        """The head of task ``name`` (the one grouped module of every head where heads are grouped)."""
        if name not in self.task_names:
            raise KeyError(f"model: no task {name!r}; tasks: {self.task_names}")
        return self.grouped if self.grouped is not None else self.heads[self._keys[name]]

    def task_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """Parameters of one task's head (grouped heads: the group's tensors, whose slice ``t`` is task ``t``'s) and,
        with a trunk, of the task's own part of it (column, gate, experts)."""
        head = self.head(name).parameters()
        if isinstance(self.encoder, Trunk):
            return itertools.chain(head, self.encoder.task_parameters(self.task_names.index(name)))
        return head

    def last_shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the last shared layer (GradNorm's W)."""
        if isinstance(self.encoder, Trunk):
            return self.encoder.last_shared_parameters()
        return self.encoder.last_layer().parameters()
