"""Cluster-GCN-style mini-batches of one large graph: the subgraph induced by a few node parts per batch.

A single-graph node dataset holds the same graph in every split, each copy with a boolean ``node_mask``.
For training (``data.loader: partition``) the graph's nodes are cut into ``num_parts`` parts and each batch is
the subgraph *induced* by ``parts_per_batch`` of them: the edges between the batch's nodes are kept, the
edges leaving the batch are dropped. Every node and edge attribute is sliced to the batch, ``n_id`` holds the
global node ids and ``node_mask`` is the training mask on those nodes, so losses count only training nodes.

* ``partition: random`` (default): a uniformly random, balanced partition, re-drawn every epoch from the
  loader's ``generator`` (the trainer reseeds it per epoch, so a resumed run sees the same batches).
* ``partition: metis``: METIS clusters from PyG's ``ClusterData`` (it needs pyg-lib with METIS or
  torch-sparse, and an undirected graph), computed once; each epoch shuffles which clusters share a batch.

Evaluation does not use the parts (they would cut neighbourhoods): valid/test are neighbor.py's sampled
inference with fanout ``[-1] * num_layers``, equal to full-batch evaluation for sum/mean/max encoders.

In a data-parallel run every process draws the same parts (same generator seed) and holds its shard of the
training mask, so the processes of one step train on the same subgraph, each on its share of the nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data

from graph_mtl.data.base import MultiTaskDataset, require_single_graph
from graph_mtl.data.neighbor import neighbor_loaders, subgraph_batch

PARTITIONS: tuple[str, ...] = ("random", "metis")


def metis_available() -> bool:
    """Whether PyG's ``ClusterData`` can call METIS here (pyg-lib built with METIS, or torch-sparse)."""
    import torch_geometric.typing as pyg_typing

    return bool(pyg_typing.WITH_METIS or pyg_typing.WITH_TORCH_SPARSE)


def metis_clusters(graph: Data, num_parts: int) -> list[Tensor]:
    """The node ids of each non-empty METIS cluster of ``graph`` (PyG's ``ClusterData``)."""
    from torch_geometric.loader import ClusterData

    structure = Data(edge_index=graph.edge_index, num_nodes=graph.num_nodes)  # no attributes to permute
    try:
        partition = ClusterData(structure, num_parts, log=False).partition
    except (ImportError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"data.partition: METIS failed here ({reason}); use data.partition: random") from None
    bounds = partition.partptr.tolist()
    clusters = [partition.node_perm[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return [c for c in clusters if c.numel() > 0]


class PartitionBatches:
    """Training batches of ``graph``: per epoch, its nodes in parts, each batch induced by ``parts_per_batch``
    parts (the last batch may hold fewer).

    Args:
        graph: the graph; its ``node_mask`` attribute, if any, is ignored (``mask`` is used).
        mask: boolean ``[num_nodes]`` mask of the nodes that count in the losses.
        num_parts: parts of a random partition (ignored when ``clusters`` is given).
        parts_per_batch: parts per batch.
        generator: draws the random partition, or the cluster order (reseedable).
        clusters: fixed disjoint parts (METIS clusters); ``None`` re-draws a random partition every epoch.
    """

    def __init__(self, graph: Data, mask: Tensor, num_parts: int, parts_per_batch: int,
                 generator: torch.Generator | None = None, clusters: list[Tensor] | None = None) -> None:
        self.graph, self.mask = graph, mask
        self.num_parts = len(clusters) if clusters is not None else num_parts
        self.parts_per_batch = parts_per_batch
        self.clusters = clusters
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return (self.num_parts + self.parts_per_batch - 1) // self.parts_per_batch

    def epoch_parts(self) -> list[Tensor]:
        """This epoch's parts in batch order (draws from ``generator``): a random balanced partition of the
        nodes, or the clusters in a random order."""
        if self.clusters is None:
            perm = torch.randperm(self.graph.num_nodes, generator=self.generator)
            return list(perm.tensor_split(self.num_parts))
        order = torch.randperm(len(self.clusters), generator=self.generator).tolist()
        return [self.clusters[i] for i in order]

    def __iter__(self) -> Iterator[Data]:
        parts = self.epoch_parts()
        groups = [torch.cat(parts[k:k + self.parts_per_batch])
                  for k in range(0, len(parts), self.parts_per_batch)]
        yield from self.induced(groups)

    def induced(self, groups: list[Tensor]) -> Iterator[Data]:
        """The subgraph induced by each of the disjoint node sets ``groups``, as a batch.

        One pass over the edges for all groups: an edge is kept in group ``b`` when both its ends are in it;
        kept edges keep their original order. Nodes are in increasing global id within a batch.
        """
        n = self.graph.num_nodes
        group_of = torch.full((n,), -1, dtype=torch.long)
        for b, nodes in enumerate(groups):
            group_of[nodes] = b
        src_group, dst_group = group_of[self.graph.edge_index]
        kept = ((src_group == dst_group) & (src_group >= 0)).nonzero().view(-1)
        kept = kept[torch.argsort(src_group[kept], stable=True)]  # grouped, original order within a group
        counts = torch.bincount(src_group[kept], minlength=len(groups)).tolist()
        local = torch.empty(n, dtype=torch.long)
        for nodes, edge_ids in zip(groups, kept.split(counts)):
            n_id = torch.sort(nodes).values
            local[n_id] = torch.arange(len(n_id))
            batch = subgraph_batch(self.graph, n_id, edge_ids, local[self.graph.edge_index[:, edge_ids]])
            batch.node_mask = self.mask[n_id]
            yield batch


def partition_loaders(dataset: MultiTaskDataset, num_parts: int, parts_per_batch: int, num_layers: int,
                      batch_size: int, seed: int, partition: str = "random", num_workers: int = 0,
                      sampler: str = "auto") -> dict[str, Any]:
    """Training: :class:`PartitionBatches` over the train split's graph and mask (seeded). Valid/test:
    :func:`~graph_mtl.data.neighbor.neighbor_loaders` with fanout ``[-1] * num_layers`` and ``batch_size``
    seed nodes per batch (``num_workers`` and ``sampler`` are passed to them)."""
    if partition not in PARTITIONS:
        raise ValueError(f"data.partition: expected one of {list(PARTITIONS)}, got {partition!r}")
    if num_parts < 2:
        raise ValueError(f"data.num_parts: must be >= 2, got {num_parts}; for one batch of the whole graph "
                         "use data.loader: full")
    if not 1 <= parts_per_batch <= num_parts:
        raise ValueError(f"data.parts_per_batch: must be between 1 and data.num_parts={num_parts}, "
                         f"got {parts_per_batch}")
    require_single_graph(dataset, "partition", "cuts one graph into node parts")
    graph = dataset.splits["train"][0]
    if num_parts > graph.num_nodes:
        raise ValueError(f"data.num_parts: {num_parts} parts for a graph of {graph.num_nodes} nodes; use at most "
                         f"{graph.num_nodes}")
    clusters = None
    if partition == "metis":
        if not metis_available():
            raise ValueError("data.partition: 'metis' needs pyg-lib with METIS or torch-sparse, neither is "
                             "installed here; use data.partition: random")
        clusters = metis_clusters(graph, num_parts)
    train = PartitionBatches(graph, graph.node_mask, num_parts, parts_per_batch,
                             torch.Generator().manual_seed(seed), clusters)
    evaluation = neighbor_loaders(dataset, [-1] * num_layers, batch_size, seed, num_workers, sampler,
                                  splits=("valid", "test"))
    return {"train": train, **evaluation}
