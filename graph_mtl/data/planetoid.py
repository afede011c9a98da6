"""Planetoid citation graphs (Cora, CiteSeer, PubMed) as multi-task node datasets: the class label on the public
split plus auxiliary node tasks computed from the graph itself.

Tasks (columns of ``y_node``; ``aux`` picks the auxiliary ones, in this order):

==============  ==========  ====================================================================================
task            kind        label
==============  ==========  ====================================================================================
``class``       multiclass  the paper's topic; labelled on the 20-per-class public training nodes only
``degree``      multiclass  degree bucket: quartile of the node degree over the graph (4 classes)
``clustering``  regression  local clustering coefficient ``2 T_i / (d_i (d_i - 1))`` (0 for ``d_i < 2``)
``pagerank``    regression  ``log(N * PageRank_i)``, damping 0.85, 50 power iterations
==============  ==========  ====================================================================================

The auxiliary labels are functions of the graph, not of the classes, so in the transductive setting they are
known for every node: the training copy of the graph masks in every node outside the validation and test sets
(the class column is ``NaN`` there except on the public training nodes); the validation and test copies score
all tasks on the public validation (500) and test (1,000) nodes.

Offline: ``root`` (``data.root``, else ``$GRAPH_MTL_DATA``, else ``~/.cache/graph_mtl/datasets``) holds
``Cora/raw/ind.cora.*`` as PyG's ``Planetoid`` expects; online, PyG downloads it there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import to_undirected

from graph_mtl.data.base import SPLITS, MultiTaskDataset
from graph_mtl.data.ogb_mol import DATA_ENV, default_root
from graph_mtl.tasks import Task

PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
AUX_TASKS: tuple[str, ...] = ("degree", "clustering", "pagerank")


def adjacency(edge_index: Tensor, num_nodes: int) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency without self-loops."""
    edge_index = to_undirected(edge_index, num_nodes=num_nodes)
    src, dst = edge_index.numpy()
    keep = src != dst
    data = np.ones(int(keep.sum()), dtype=np.float64)
    matrix = sp.csr_matrix((data, (src[keep], dst[keep])), shape=(num_nodes, num_nodes))
    matrix.data[:] = 1.0  # duplicates summed -> back to 0/1
    return matrix


def degree_buckets(adj: sp.csr_matrix, buckets: int = 4) -> np.ndarray:
    """The quantile bucket ``0..buckets-1`` of each node's degree (ties fall in the lower bucket)."""
    deg = np.asarray(adj.sum(axis=1)).ravel()
    edges = np.quantile(deg, np.linspace(0, 1, buckets + 1)[1:-1])
    return np.searchsorted(edges, deg, side="left").astype(np.float64)


def clustering_coefficient(adj: sp.csr_matrix) -> np.ndarray:
    """``2 T_i / (d_i (d_i - 1))`` with ``T_i = (A^3)_ii / 2`` triangles through ``i``; 0 when ``d_i < 2``."""
    deg = np.asarray(adj.sum(axis=1)).ravel()
    triangles = np.asarray((adj @ adj).multiply(adj).sum(axis=1)).ravel() / 2
    pairs = deg * (deg - 1) / 2
    return np.divide(triangles, pairs, out=np.zeros_like(triangles), where=pairs > 0)


def log_pagerank(adj: sp.csr_matrix, damping: float = 0.85, iterations: int = 50) -> np.ndarray:
    """``log(N * pr)`` with ``pr = (1 - a)/N + a * P^T pr`` (dangling nodes spread uniformly)."""
    n = adj.shape[0]
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    transition = sp.diags(inv) @ adj
    pr = np.full(n, 1.0 / n)
    for _ in range(iterations):
        dangling = pr[deg == 0].sum()
        pr = (1 - damping) / n + damping * (transition.T @ pr + dangling / n)
    return np.log(n * pr)


def planetoid_tasks(num_classes: int, aux: list[str]) -> list[Task]:
    tasks = [Task("class", "node", "multiclass", num_classes, target="y_node", columns=(0,))]
    for i, name in enumerate(aux, start=1):
        if name == "degree":
            tasks.append(Task(name, "node", "multiclass", 4, target="y_node", columns=(i,)))
        else:
            tasks.append(Task(name, "node", "regression", target="y_node", columns=(i,)))
    return tasks


def load_planetoid(name: str, root: str | Path | None = None, aux: list[str] | None = None) -> MultiTaskDataset:
    """Cora / CiteSeer / PubMed with the ``class`` task on the public split and the ``aux`` tasks."""
    from torch_geometric.datasets import Planetoid

    aux = list(AUX_TASKS) if aux is None else list(aux)
    unknown = [a for a in aux if a not in AUX_TASKS]
    if unknown:
        raise ValueError(f"data.aux_tasks: unknown {unknown}; choose from {list(AUX_TASKS)} (or [] for none)")
    root = Path(root) if root is not None else default_root()
    try:
        dataset = Planetoid(str(root), PLANETOID[name])
    except (OSError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"data.root: {PLANETOID[name]} is neither under {root / PLANETOID[name]} nor downloadable "
                         f"({first}); put the raw Planetoid files there or set data.root / ${DATA_ENV}") from None
    data = dataset[0]
    n = data.num_nodes
    adj = adjacency(data.edge_index, n)
    columns = {"degree": degree_buckets, "clustering": clustering_coefficient, "pagerank": log_pagerank}
    y = torch.full((n, 1 + len(aux)), float("nan"))
    y[:, 0] = data.y.float()
    for i, task in enumerate(aux, start=1):
        y[:, i] = torch.from_numpy(columns[task](adj)).float()
    train_y = y.clone()
    train_y[~data.train_mask, 0] = float("nan")  # the class is known on the public training nodes only
    masks = {"train": ~(data.val_mask | data.test_mask), "valid": data.val_mask, "test": data.test_mask}
    splits = {}
    for split in SPLITS:
        labels = train_y if split == "train" else y
        splits[split] = [Data(x=data.x, edge_index=data.edge_index, y_node=labels, node_mask=masks[split].clone())]
    info = {"source": f"torch_geometric.datasets.Planetoid {PLANETOID[name]}", "num_nodes": n,
            "num_edges": int(data.edge_index.size(1)), "aux_tasks": aux,
            "class_labelled_train_nodes": int(data.train_mask.sum()),
            "split_sizes": {s: int(m.sum()) for s, m in masks.items()}}
    return MultiTaskDataset(name, planetoid_tasks(dataset.num_classes, aux), splits, node_features="float",
                            info=info)
