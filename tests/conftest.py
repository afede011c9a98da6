"""Shared fixtures: a tiny molecular multi-task dataset built in memory (no cache, no download)."""

from __future__ import annotations

import pytest
import torch
from ogb.utils import smiles2graph
from torch_geometric.data import Data

from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.tasks import Task


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """A run with ``train.threads`` sets torch's thread count for the process; later tests (which compare runs
    in this process with runs in subprocesses, to the last digit) must not inherit it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)

SMILES = [
    "CCO", "CCN", "CCCl", "c1ccccc1", "c1ccccc1O", "CC(=O)O", "CC(=O)N", "CCOC", "C1CCCCC1", "c1ccncc1",
    "CC(C)O", "OCCO", "CCCC", "CCC(=O)O", "c1ccc(Cl)cc1", "NCCN", "CC#N", "C=CC", "COC(=O)C", "c1ccoc1",
    "CCS", "CSC", "CCBr", "FC(F)F", "c1ccc2ccccc2c1", "CC(N)C(=O)O", "OC1CCCCC1", "CCCCCO", "CNC", "ClCCl",
]

TINY_TASKS = [
    Task("size", "graph", "regression", target="y_graph", columns=(0,)),
    Task("ring", "graph", "binary", target="y_graph", columns=(1,)),
    Task("heavy", "node", "binary", target="y_node", columns=(0,)),
    Task("degree", "node", "multiclass", num_outputs=4, target="y_node", columns=(1,)),
]


def molecule(smiles: str) -> Data:
    """A molecule graph with simple, structure-derived labels (some NaN) for engine tests."""
    g = smiles2graph(smiles)
    x = torch.tensor(g["node_feat"], dtype=torch.long)
    edge_index = torch.tensor(g["edge_index"], dtype=torch.long)
    n = x.size(0)
    deg = torch.bincount(edge_index[0], minlength=n).clamp(max=3).float()
    heavy = (x[:, 0] > 6).float()  # heavier than carbon
    ring = float(bool(x[:, 5].any()))  # any atom in a ring
    size = torch.tensor([[float(n), ring]])
    if n % 5 == 0:
        size[0, 1] = float("nan")  # some graph labels missing
    return Data(x=x, edge_index=edge_index, edge_attr=torch.tensor(g["edge_feat"], dtype=torch.long),
                y_graph=size, y_node=torch.stack([heavy, deg], dim=1), num_nodes=n)


@pytest.fixture()
def tiny_dataset() -> MultiTaskDataset:
    graphs = [molecule(s) for s in SMILES]
    splits = {"train": graphs[:20], "valid": graphs[20:25], "test": graphs[25:]}
    return MultiTaskDataset("tiny", list(TINY_TASKS), splits, node_features="ogb")
