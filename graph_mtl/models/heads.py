"""Per-task prediction heads on top of the shared node embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.aggr import AttentionalAggregation, Set2Set

from graph_mtl.config import CHOICES
from graph_mtl.models.encoder import RowBatchNorm
from graph_mtl.tasks import Task

#: every pooling of a graph head: the registry's choices for ``model.pool`` but ``auto``
POOLS: tuple[str, ...] = CHOICES["model.pool"][1:]
#: poolings that apply the head's MLP to every node before summing (the head reads the node embeddings)
NODE_READOUTS: frozenset[str] = frozenset({"contrib"})
#: poolings each head does by itself (its own parameters or statistics, or a per-node read-out): such heads
#: share no pooled representation and are never grouped
OWN_POOLS: frozenset[str] = frozenset({"attention", "contrib", "add_norm"})
#: learned poolings that :class:`~graph_mtl.models.MultiTaskGNN` shares between its graph heads (part of the shared
#: model, as in Gilmer et al.'s MPNN); ``attention`` stays one per head
SHARED_LEARNED_POOLS: frozenset[str] = frozenset({"set2set"})
#: LSTM steps of set2set (PyG's qm9_nn_conv example)
SET2SET_STEPS = 3


def mlp(in_channels: int, hidden: int, out_channels: int, num_layers: int, dropout: float) -> nn.Sequential:
    """``num_layers`` linear layers (ReLU and dropout between them); 1 layer is a plain linear map."""
    if num_layers < 1:
        raise ValueError(f"head.num_layers: must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    width = in_channels
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, out_channels))
    return nn.Sequential(*layers)


class NodeHead(nn.Module):
    """Predicts ``out_channels`` values per node from its embedding.

    Args:
        in_channels: width of the node embeddings.
        out_channels: outputs per node.
        hidden: width of the hidden layers.
        num_layers: linear layers of the MLP.
        dropout: dropout between the MLP's layers.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 128, num_layers: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = mlp(in_channels, hidden, out_channels, num_layers, dropout)

    def forward(self, h: Tensor, batch: Tensor | None = None, num_graphs: int | None = None) -> Tensor:
        return self.mlp(h)


class GraphHead(nn.Module):
    r"""Pools node embeddings per graph, :math:`g = \mathrm{pool}_{n \in G} h_n`, appends the graph's own
    features :math:`u_G` (``extra_channels`` of them, e.g. molecular descriptors), then predicts with an MLP:
    :math:`y_G = \mathrm{MLP}([g \,\|\, u_G])`.

    Args:
        in_channels: width of the node embeddings.
        out_channels: outputs per graph.
        pool: ``"mean"``, ``"add"``, ``"max"``, ``"attention"`` (a learned gate per node, softmax per graph),
            ``"set2set"`` (Vinyals et al.'s LSTM read-out of :data:`SET2SET_STEPS` steps, width ``2 * in``),
            ``"contrib"``: a contribution per node, summed, plus one constant per graph,
            :math:`y_G = \sum_{n \in G} \mathrm{MLP}(h_n) + b + W u_G` (exactly additive: an atom-contribution
            property such as logP or TPSA is expressible for molecules of any size, where an MLP of the summed
            embeddings is not additive and extrapolates poorly). The constant :math:`b` carries what is not per
            atom, such as the mean subtracted by target standardisation: without it that offset would have to be
            spread over the atoms, :math:`-\mu / (\sigma n)` each, which depends on the graph's size.
            or ``"add_norm"``: the sum, batch-normalised over the graphs (:class:`NormalisedSum`), for properties
            that depend on counts over the whole graph.
        hidden: width of the hidden layers.
        num_layers: linear layers of the MLP.
        dropout: dropout between the MLP's layers.
        own_pool: build this head's own module of a learned pooling; ``False`` when the model pools for every
            head (the head then needs ``pooled`` in :meth:`forward`).
        extra_channels: width of the per-graph features appended to the pooled embedding (0: none).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: str = "mean", hidden: int = 128,
                 num_layers: int = 2, dropout: float = 0.0, own_pool: bool = True, extra_channels: int = 0) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"head.pool: unknown value {pool!r}; choose one of {list(POOLS)}")
        self.pool_name = pool
        self.pooling = make_pool(pool, in_channels) if own_pool else None
        self.extra_channels = extra_channels
        readout = pool in NODE_READOUTS
        self.mlp = mlp(in_channels if readout else pooled_width(pool, in_channels) + extra_channels, hidden,
                       out_channels, num_layers, dropout)
        #: ``contrib``: the graph features' linear term ``W u_G``
        self.extra_linear = nn.Linear(extra_channels, out_channels, bias=False) if readout and extra_channels else None
        #: ``contrib``: the per-graph constant ``b``
        self.graph_bias = nn.Parameter(torch.zeros(out_channels)) if readout else None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """A ``contrib`` head saved before it had ``graph_bias`` loads with ``b = 0``: the model it was."""
        if self.graph_bias is not None:
            state_dict.setdefault(prefix + "graph_bias", torch.zeros_like(self.graph_bias))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def learned_pool(self) -> bool:
        """Whether this head pools by itself (parameters of its own pooling: attention, set2set; or a per-node
        read-out: contrib); else every head pools alike."""
        return self.pooling is not None or self.pool_name in NODE_READOUTS

    def pool(self, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        if self.pooling is not None:
            return self.pooling(h, batch, dim_size=num_graphs)
        if self.pool_name in SHARED_LEARNED_POOLS:
            raise ValueError(f"head.pool: {self.pool_name!r} is pooled by the model; pass pooled= to the head")
        return pool_nodes(self.pool_name, h, batch, num_graphs)

    def forward(self, h: Tensor, batch: Tensor, num_graphs: int, pooled: Tensor | None = None,
                extra: Tensor | None = None) -> Tensor:
        """Predictions ``[num_graphs, out]``. ``pooled`` is this head's whole input computed elsewhere (the
        heads' shared pooling of ``h``, with the graph features already appended: :func:`with_graph_features`);
        without it the head pools ``h`` and appends ``extra`` (``[num_graphs, extra_channels]``) itself."""
        if self.pool_name in NODE_READOUTS:
            y = pool_nodes("add", self.mlp(h), batch, num_graphs) + self.graph_bias
            return y if self.extra_linear is None or extra is None else y + self.extra_linear(extra.to(y.dtype))
        if pooled is None:
            pooled = with_graph_features(self.pool(h, batch, num_graphs), extra)
        return self.mlp(pooled)


class NodeSumHead(nn.Module):
    r"""A graph task that is the sum over the graph of a node task's values (an atom-contribution property whose
    contributions are labelled too: logP and the Crippen atom contributions, TPSA and Ertl's):

    .. math:: y_G = a \sum_{n \in G} f_k(h_n) + c\,|G| + b

    :math:`f_k` is node task ``k``'s head, read with its weights held: the graph loss reaches the encoder, while
    :math:`f_k` stays task ``k``'s own. :math:`a, c, b` (one each per output) are this task's parameters; the affine
    map absorbs both tasks' target standardisation (with :math:`y = \mu_G + \sigma_G \hat y` and contributions
    :math:`\mu_k + \sigma_k \hat z`: :math:`\hat y = \frac{\sigma_k}{\sigma_G} \sum \hat z
    + \frac{\mu_k}{\sigma_G} |G| - \frac{\mu_G}{\sigma_G}`). A sum of learned node values extrapolates to
    graphs larger than any in training, where a pooled embedding does not.

    Args:
        node_task: the node task whose values are summed.
        out_channels: outputs per graph (the node task's outputs).
    """

    def __init__(self, node_task: str, out_channels: int = 1) -> None:
        super().__init__()
        self.node_task = node_task
        self.scale = nn.Parameter(torch.ones(out_channels))
        self.per_node = nn.Parameter(torch.zeros(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @torch.no_grad()
    def calibrate(self, graph_stats: tuple[Tensor, Tensor] | None, node_stats: tuple[Tensor, Tensor] | None) -> None:
        """Set ``a, c, b`` to the identity in raw units under the two tasks' target standardisations
        (``(mean, std)`` each, ``None`` where a task is not standardised): the graph starts as exactly the sum of
        its node values, so neither loss meets a sum that is off by the graph's size."""
        mean_g, std_g = graph_stats if graph_stats is not None else (0.0, 1.0)
        mean_k, std_k = node_stats if node_stats is not None else (0.0, 1.0)
        for parameter, value in ((self.scale, std_k / std_g), (self.per_node, mean_k / std_g),
                                 (self.bias, -mean_g / std_g)):
            parameter.copy_(torch.as_tensor(value, dtype=parameter.dtype).expand_as(parameter))

    def forward(self, node_head: nn.Module, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Predictions ``[num_graphs, out]`` from the node embeddings ``h`` and the node task's head."""
        held = {name: weight.detach() for name, weight in node_head.named_parameters()}
        total = pool_nodes("add", functional_call(node_head, held, (h,)), batch, num_graphs)
        count = pool_nodes("add", h.new_ones(h.size(0), 1), batch, num_graphs)
        return self.scale * total + self.per_node * count + self.bias


def with_graph_features(pooled: Tensor, extra: Tensor | None) -> Tensor:
    """``[pooled | extra]``: per-graph features ``[B, F]`` appended to the pooled embeddings ``[B, width]``."""
    return pooled if extra is None else torch.cat([pooled, extra.to(pooled.dtype)], dim=1)


def task_pools(tasks: Sequence[Task], pool: str = "mean", overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The pooling of every graph task: ``overrides[task]`` (``model.task_pool``), else ``pool``; ``pool="auto"``
    takes the task's own preference (``task.extra["pool"]``, declared by its dataset), else ``mean``. A name in
    ``overrides`` that is not a graph task is a one-line error naming ``model.task_pool``."""
    overrides = dict(overrides or {})
    graph = [t for t in tasks if t.level == "graph"]
    unknown = sorted(set(overrides) - {t.name for t in graph})
    if unknown:
        raise ValueError(f"model.task_pool: {unknown} are not graph tasks of this dataset; its graph tasks: "
                         f"{[t.name for t in graph]}")
    for name, value in overrides.items():
        if value not in POOLS:
            raise ValueError(f"model.task_pool: unknown pooling {value!r} for task {name!r}; choose one of "
                             f"{list(POOLS)}")
    return {t.name: overrides.get(t.name, t.extra.get("pool", "mean") if pool == "auto" else pool) for t in graph}


def task_sums(tasks: Sequence[Task], pool: str = "mean", task_pool: Mapping[str, str] | None = None,
              overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{graph task: node task}`` for the graph tasks read out as a node task's sum (:class:`NodeSumHead`):
    ``overrides`` (``model.task_sum``), and with ``pool="auto"`` what the dataset declares
    (``task.extra["sum_of"]``) where that node task is present and ``task_pool`` does not name the graph task.
    Both tasks must be regression tasks with as many outputs; anything else is a one-line error naming
    ``model.task_sum``."""
    by_name = {t.name: t for t in tasks}
    task_pool, overrides = dict(task_pool or {}), dict(overrides or {})
    for graph_name, node_name in overrides.items():
        graph_task, node_task = by_name.get(graph_name), by_name.get(node_name)
        if graph_task is None or graph_task.level != "graph":
            raise ValueError(f"model.task_sum: {graph_name!r} is not a graph task of this dataset; its graph tasks: "
                             f"{[t.name for t in tasks if t.level == 'graph']}")
        if node_task is None or node_task.level != "node":
            raise ValueError(f"model.task_sum: {node_name!r} (summed for {graph_name!r}) is not a node task of this "
                             f"dataset; its node tasks: {[t.name for t in tasks if t.level == 'node']}")
        if graph_name in task_pool:
            raise ValueError(f"model.task_sum: {graph_name!r} is also in model.task_pool; keep it in one of them")
        if not (graph_task.kind == node_task.kind == "regression"
                and graph_task.num_outputs == node_task.num_outputs):
            raise ValueError(f"model.task_sum: {graph_name!r} and {node_name!r} must both be regression tasks with "
                             f"as many outputs")
    declared = {} if pool != "auto" else {
        t.name: t.extra["sum_of"] for t in tasks
        if t.level == "graph" and "sum_of" in t.extra and t.name not in task_pool
        and getattr(by_name.get(t.extra["sum_of"]), "level", None) == "node"
    }
    return {**declared, **overrides}


class NormalisedSum(nn.Module):
    r"""Sum pooling, batch-normalised over the graphs: :math:`\mathrm{BN}(\sum_{n \in G} h_n)`. The sum keeps the
    counts a size-dependent property needs (donors, acceptors, mass); normalised, it stays in the range the head
    trains well in, where a plain sum grows with the graph."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = RowBatchNorm(width)  # a batch of one graph is normalised with the running statistics

    def forward(self, h: Tensor, batch: Tensor, dim_size: int) -> Tensor:
        return self.norm(global_add_pool(h, batch, size=dim_size))


def make_pool(pool: str, width: int) -> nn.Module | None:
    """The module of a learned pooling of ``width``-wide node embeddings; ``None`` for mean/add/max."""
    if pool == "add_norm":
        return NormalisedSum(width)
    if pool == "attention":
        return AttentionalAggregation(nn.Linear(width, 1))
    if pool == "set2set":
        return Set2Set(width, processing_steps=SET2SET_STEPS)
    return None


def pooled_width(pool: str, width: int) -> int:
    """Width of a graph embedding pooled by ``pool`` from ``width``-wide node embeddings (set2set doubles it)."""
    return 2 * width if pool == "set2set" else width


def pool_nodes(pool: str, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """``mean``, ``add`` or ``max`` of the node embeddings ``h`` of each graph: ``[num_graphs, width]``."""
    fn = {"mean": global_mean_pool, "add": global_add_pool, "max": global_max_pool}[pool]
    return fn(h, batch, size=num_graphs)
