"""Per-task prediction heads on top of the shared node embeddings."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.aggr import AttentionalAggregation

POOLS: tuple[str, ...] = ("mean", "add", "max", "attention")


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
    r"""Pools node embeddings per graph, :math:`g = \mathrm{pool}_{n \in G} h_n`, then predicts with an MLP.

    Args:
        in_channels: width of the node embeddings.
        out_channels: outputs per graph.
        pool: ``"mean"``, ``"add"``, ``"max"`` or ``"attention"`` (a learned gate per node, softmax per graph).
        hidden: width of the hidden layers.
        num_layers: linear layers of the MLP.
        dropout: dropout between the MLP's layers.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: str = "mean", hidden: int = 128,
                 num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"head.pool: unknown value {pool!r}; choose one of {list(POOLS)}")
        self.pool_name = pool
        self.attention = AttentionalAggregation(nn.Linear(in_channels, 1)) if pool == "attention" else None
        self.mlp = mlp(in_channels, hidden, out_channels, num_layers, dropout)

    @property
    def learned_pool(self) -> bool:
        """Whether the pooling has parameters of this head (attention); else every head pools alike."""
        return self.attention is not None

    def pool(self, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        if self.attention is not None:
            return self.attention(h, batch, dim_size=num_graphs)
        return pool_nodes(self.pool_name, h, batch, num_graphs)

    def forward(self, h: Tensor, batch: Tensor, num_graphs: int, pooled: Tensor | None = None) -> Tensor:
        """Predictions ``[num_graphs, out]``; ``pooled`` is this head's pooling of ``h`` computed elsewhere
        (shared by the heads when the pooling has no parameters)."""
        return self.mlp(self.pool(h, batch, num_graphs) if pooled is None else pooled)


def pool_nodes(pool: str, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """``mean``, ``add`` or ``max`` of the node embeddings ``h`` of each graph: ``[num_graphs, width]``."""
    fn = {"mean": global_mean_pool, "add": global_add_pool, "max": global_max_pool}[pool]
    return fn(h, batch, size=num_graphs)
