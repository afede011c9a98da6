"""Per-task prediction heads on top of the shared node embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.aggr import AttentionalAggregation, Set2Set

from graph_mtl.tasks import Task

POOLS: tuple[str, ...] = ("mean", "add", "max", "attention", "set2set", "contrib")
#: poolings that apply the head's MLP to every node before summing (the head reads the node embeddings)
NODE_READOUTS: frozenset[str] = frozenset({"contrib"})
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
            ``"set2set"`` (Vinyals et al.'s LSTM read-out of :data:`SET2SET_STEPS` steps, width ``2 * in``) or
            ``"contrib"``: a contribution per node, summed, plus one constant per graph,
            :math:`y_G = \sum_{n \in G} \mathrm{MLP}(h_n) + b + W u_G` (exactly additive: an atom-contribution
            property such as logP or TPSA is expressible for molecules of any size, where an MLP of the summed
            embeddings is not additive and extrapolates poorly). The constant :math:`b` carries what is not per
            atom, such as the mean subtracted by target standardisation: without it that offset would have to be
            spread over the atoms, :math:`-\mu / (\sigma n)` each, which depends on the graph's size.
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


def make_pool(pool: str, width: int) -> nn.Module | None:
    """The module of a learned pooling of ``width``-wide node embeddings; ``None`` for mean/add/max."""
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
