"""Mini-batch training on one large graph with PyG's ``NeighborLoader``.

A single-graph node dataset holds the same graph in every split, each copy with a boolean ``node_mask``. Here
each split becomes a ``NeighborLoader`` over that split's masked nodes: a batch is the subgraph sampled around
``batch_size`` seed nodes (``fanout[l]`` neighbours per node at hop ``l``; ``-1`` takes every neighbour), and
its ``node_mask`` is rewritten to mark the seed nodes only, so losses and metrics count each seed node once
and never the sampled context. Evaluation is sampled inference the same way; with ``fanout = [-1] * L`` for
an ``L``-layer sum/mean/max encoder (GIN, SAGE, GINE without a virtual node) it equals full-batch evaluation.
GCN's symmetric normalisation and the virtual node see the sampled subgraph's degrees and node set, so for
them sampled inference is an approximation.

PyG's ``NeighborLoader`` needs ``pyg-lib`` or ``torch-sparse``, neither of which installs from PyPI as a
wheel for current torch; without them (``sampler: auto``) the :class:`SampledBatches` loader below does the
same k-hop sampling in plain torch: per hop, ``fanout`` in-neighbours of each frontier node drawn without
replacement (a random key per in-edge, the lowest ``fanout`` kept), each node expanded once at its first hop.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader

from graph_mtl.data.base import SPLITS, MultiTaskDataset, require_single_graph


def check_fanout(fanout: list[int] | None, num_layers: int) -> list[int]:
    """``fanout`` (default: every neighbour at every layer), one entry per layer, each ``-1`` or ``>= 1``."""
    if fanout is None:
        return [-1] * num_layers
    if len(fanout) != num_layers:
        raise ValueError(f"data.fanout: {len(fanout)} entries for model.num_layers={num_layers}; give one per "
                         "layer (e.g. [15, 10]) or -1 for every neighbour")
    if any(f == 0 or f < -1 for f in fanout):
        raise ValueError(f"data.fanout: {fanout} has an entry that is 0 or below -1; use -1 or a count >= 1")
    return list(fanout)


def _seed_mask(batch: Data) -> Data:
    """Mark the first ``batch.batch_size`` nodes (the seeds) as the batch's ``node_mask``."""
    mask = torch.zeros(batch.num_nodes, dtype=torch.bool)
    mask[: batch.batch_size] = True
    batch.node_mask = mask
    return batch


SAMPLERS: tuple[str, ...] = ("auto", "pyg", "builtin")


def pyg_sampler_available() -> bool:
    """Whether PyG's ``NeighborLoader`` can sample here (it needs ``pyg-lib`` or ``torch-sparse``)."""
    import torch_geometric.typing as pyg_typing

    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)


class SampledBatches:
    """Mini-batches of ``batch_size`` seed nodes with their sampled ``len(fanout)``-hop in-neighbourhoods.

    Each batch is a ``Data`` with the sampled nodes (seeds first) and sampled edges relabelled to them, every
    node-level attribute of ``graph`` sliced to those nodes, ``n_id`` (global ids), ``batch_size`` and the
    seed ``node_mask``. ``generator`` (reseedable) drives the seed order and the sampling.
    """

    def __init__(self, graph: Data, fanout: list[int], seeds: Tensor, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None = None) -> None:
        self.graph, self.fanout, self.batch_size, self.shuffle = graph, fanout, batch_size, shuffle
        self.seeds = seeds.nonzero().view(-1) if seeds.dtype == torch.bool else seeds
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._eval_seed = int(self.generator.initial_seed())
        n = graph.num_nodes
        src, dst = graph.edge_index
        self.order = torch.argsort(dst, stable=True)  # in-edges grouped by destination
        self.rowptr = torch.zeros(n + 1, dtype=torch.long)
        self.rowptr[1:] = torch.cumsum(torch.bincount(dst, minlength=n), 0)
        self.src = src

    def __len__(self) -> int:
        return (len(self.seeds) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        seeds = self.seeds
        if not self.shuffle:  # evaluation: the same samples every time
            self.generator.manual_seed(self._eval_seed)
        if self.shuffle:
            seeds = seeds[torch.randperm(len(seeds), generator=self.generator)]
        for start in range(0, len(seeds), self.batch_size):
            yield self.sample(seeds[start:start + self.batch_size])

    def _in_edges(self, frontier: Tensor, fanout: int) -> Tensor:
        """Positions (into the destination-sorted edges) of the kept in-edges of ``frontier``."""
        starts, counts = self.rowptr[frontier], self.rowptr[frontier + 1] - self.rowptr[frontier]
        offsets = torch.cumsum(counts, 0) - counts
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(offsets, counts)
        positions = torch.repeat_interleave(starts, counts) + within
        if fanout < 0:
            return positions
        group = torch.repeat_interleave(torch.arange(len(frontier)), counts)
        shuffled = torch.argsort(group + torch.rand(len(group), generator=self.generator, dtype=torch.float64))
        return positions[shuffled][within < fanout]  # groups stay contiguous, so `within` is the rank

    def sample(self, seeds: Tensor) -> Data:
        n = self.graph.num_nodes
        visited = torch.zeros(n, dtype=torch.bool)
        visited[seeds] = True
        nodes, frontier, edges = [seeds], seeds, []
        for fanout in self.fanout:
            kept = self.order[self._in_edges(frontier, fanout)]
            edges.append(kept)
            sources = torch.unique(self.src[kept])
            frontier = sources[~visited[sources]]
            visited[frontier] = True
            nodes.append(frontier)
        n_id = torch.cat(nodes)
        local = torch.full((n,), -1, dtype=torch.long)
        local[n_id] = torch.arange(len(n_id))
        edge_ids = torch.cat(edges)
        batch = subgraph_batch(self.graph, n_id, edge_ids, local[self.graph.edge_index[:, edge_ids]])
        batch.batch_size = len(seeds)
        return _seed_mask(batch)


def subgraph_batch(graph: Data, n_id: Tensor, edge_ids: Tensor, edge_index: Tensor) -> Data:
    """The nodes ``n_id`` and edges ``edge_ids`` of ``graph`` as a batch: ``edge_index`` (relabelled to
    ``0..len(n_id)-1``), every node and edge tensor attribute sliced (``node_mask`` left out), ``n_id``."""
    batch = Data(edge_index=edge_index, num_nodes=len(n_id))
    for key, value in graph.items():
        if key in ("edge_index", "num_nodes", "node_mask") or not isinstance(value, Tensor):
            continue
        if graph.is_node_attr(key):
            batch[key] = value[n_id]
        elif graph.is_edge_attr(key):
            batch[key] = value[edge_ids]
    batch.n_id = n_id
    return batch


def neighbor_loaders(dataset: MultiTaskDataset, fanout: list[int], batch_size: int, seed: int,
                     num_workers: int = 0, sampler: str = "auto",
                     splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """One neighbour-sampling loader per split (of ``splits``) over that split's ``node_mask`` (training
    shuffled, seeded): PyG's ``NeighborLoader`` (``sampler: pyg``, or ``auto`` when it can sample here) or
    :class:`SampledBatches`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"data.sampler: expected one of {list(SAMPLERS)}, got {sampler!r}")
    if sampler == "pyg" and not pyg_sampler_available():
        raise ValueError("data.sampler: 'pyg' needs pyg-lib or torch-sparse installed; use 'builtin' or 'auto'")
    use_pyg = sampler == "pyg" or (sampler == "auto" and pyg_sampler_available())
    require_single_graph(dataset, "neighbor", "samples node neighbourhoods")
    loaders: dict[str, Any] = {}
    for split in splits:
        graph = dataset.splits[split][0]
        seeds = graph.node_mask
        if not bool(seeds.any()):
            raise ValueError(f"data: the {split} node mask of {dataset.name} selects no node")
        context = copy.copy(graph)  # shallow: the tensors are shared, not copied once per split
        del context.node_mask
        shuffle = split == "train"
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        if use_pyg:
            loaders[split] = NeighborLoader(context, num_neighbors=fanout, input_nodes=seeds, batch_size=batch_size,
                                            shuffle=shuffle, generator=generator, transform=_seed_mask,
                                            num_workers=num_workers)
        else:
            loaders[split] = SampledBatches(context, fanout, seeds, batch_size, shuffle,
                                            generator or torch.Generator().manual_seed(seed))
    return loaders
