"""Each process's share of the data in a data-parallel run (``engine/distributed.py``).

* Graph datasets: :class:`ShardedBatches` draws each epoch's order and cuts every global training batch of
  ``data.batch_size`` graphs into one shard per process. One process uses the same sampler (``world_size`` 1),
  so N processes take, step by step, exactly the batches one process takes (:func:`graph_loaders`);
  evaluation splits take every ``world_size``-th graph (nothing is padded or dropped, predictions are gathered).
* Single-graph node datasets (full graph or ``NeighborLoader``): every process holds the graph and the split
  masks are cut into shards of seed nodes (:func:`shard_node_mask`); a neighbour-sampled global batch of
  ``data.batch_size`` seeds becomes ``ceil(batch_size / world_size)`` seeds per process.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch_geometric.loader import DataLoader

from graph_mtl.data.base import SPLITS, MultiTaskDataset


class ShardedBatches:
    """The global batches of a graph dataset, each cut into ``world_size`` shards (a batch sampler).

    Epoch order: ``randperm(size, generator)``, the first draw from ``generator`` in the epoch (the same on
    every process, reseeded per epoch by the trainer; nothing else draws from it), or the dataset order.
    Global batch ``k`` is ``order[k B : (k+1) B]``; process ``r`` takes its items ``r, r + N, ...``, so the
    shards of a step together are exactly the batch of one process (``world_size`` 1) with the same seed.
    A last global batch with fewer items than processes is dropped (a process would get none): with
    ``size % B`` in ``1 .. N-1`` that is the one batch N processes do not share with one process.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int, shuffle: bool,
                 generator: torch.Generator | None = None) -> None:
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.shuffle = shuffle
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (rest >= self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = (torch.randperm(self.size, generator=self.generator) if self.shuffle
                 else torch.arange(self.size)).tolist()
        for k in range(len(self)):
            yield order[k * self.batch_size:(k + 1) * self.batch_size][self.rank::self.world_size]


def shard_node_mask(mask: Tensor, rank: int, world_size: int) -> Tensor:
    """This process's share of the nodes ``mask`` selects: the ``rank``-th of every ``world_size``."""
    ids = mask.nonzero().view(-1)[rank::world_size]
    out = torch.zeros_like(mask)
    out[ids] = True
    return out


def shard_node_dataset(dataset: MultiTaskDataset, rank: int, world_size: int) -> MultiTaskDataset:
    """A copy of a single-graph dataset whose split masks select this process's share of the nodes."""
    splits = {}
    for split in SPLITS:
        graph = copy.copy(dataset.splits[split][0])  # shallow: the graph's tensors are shared, not copied
        graph.node_mask = shard_node_mask(graph.node_mask, rank, world_size)
        splits[split] = [graph]
    return dataclasses.replace(dataset, splits=splits)


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Seeds per process for a global batch of ``batch_size``."""
    return max(1, math.ceil(batch_size / world_size))


def loader_options(num_workers: int = 0, pin_memory: bool = False) -> dict[str, Any]:
    """DataLoader settings: ``num_workers`` worker processes kept alive across epochs (``persistent_workers``:
    no restart per epoch), batches in page-locked memory with ``pin_memory`` (for a CUDA device: the
    trainer's copies to it are then asynchronous)."""
    return {"num_workers": num_workers, "persistent_workers": num_workers > 0, "pin_memory": pin_memory}


def graph_loaders(dataset: MultiTaskDataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                  num_workers: int = 0, pin_memory: bool = False) -> dict[str, Any]:
    """Loaders of a dataset of graphs, for one process (``world_size`` 1) or this process of ``world_size``.

    Training: this process's shard of every global batch of ``batch_size`` graphs, in the seeded order of
    :class:`ShardedBatches` (reseeded per epoch by the trainer). Evaluation: every ``world_size``-th graph from
    ``rank``, in batches of ``batch_size / world_size``, in dataset order. ``num_workers`` and ``pin_memory``:
    :func:`loader_options`."""
    if batch_size < world_size:
        raise ValueError(f"data.batch_size: {batch_size} graphs cannot be shared by {world_size} processes; use at "
                         f"least {world_size} (it is the global batch, cut into one shard per process)")
    train = dataset.splits["train"]
    sampler = ShardedBatches(len(train), batch_size, rank, world_size, shuffle=True,
                             generator=torch.Generator().manual_seed(seed))
    options = loader_options(num_workers, pin_memory)
    loaders: dict[str, Any] = {"train": DataLoader(train, batch_sampler=sampler, **options)}
    for split in ("valid", "test"):
        loaders[split] = DataLoader(dataset.splits[split][rank::world_size],
                                    batch_size=per_process_batch(batch_size, world_size), **options)
    return loaders
