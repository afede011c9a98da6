"""Planetoid with auxiliary node tasks: the graph statistics on a hand-checked graph, Cora offline, a short run."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from test_ogb_mol import SHARED

from graph_mtl.config import DataConfig, ModelConfig, TrainConfig
from graph_mtl.data.planetoid import adjacency, clustering_coefficient, degree_buckets, log_pagerank
from graph_mtl.data.registry import load_dataset


def small_graph():
    """A triangle 0-1-2 with a tail 2-3 and an isolated node 4 (edges given once, one duplicated)."""
    edge_index = torch.tensor([[0, 1, 2, 2, 0], [1, 2, 0, 3, 1]])
    return adjacency(edge_index, 5)


def test_clustering_coefficient_by_hand():
    assert np.allclose(clustering_coefficient(small_graph()), [1.0, 1.0, 1 / 3, 0.0, 0.0])


def test_pagerank_is_a_distribution_and_ranks_the_hub_first():
    pr = np.exp(log_pagerank(small_graph())) / 5
    assert math.isclose(pr.sum(), 1.0, rel_tol=1e-9)
    assert pr.argmax() == 2 and pr[4] == pr.min()


def test_degree_buckets_are_ordered_by_degree():
    buckets = degree_buckets(small_graph())
    assert buckets[2] == buckets.max() and buckets[4] == buckets.min()


@pytest.fixture(scope="module")
def cora_root(tmp_path_factory):
    if not (SHARED / "Cora").is_dir():
        pytest.skip(f"{SHARED / 'Cora'} is absent: the offline Planetoid copies live in ../shared/data")
    root = tmp_path_factory.mktemp("planetoid")
    shutil.copytree(SHARED / "Cora", root / "Cora")
    return root


def test_cora_offline_with_public_split_and_aux_tasks(cora_root):
    data = load_dataset(DataConfig(name="cora", root=str(cora_root)))
    assert [t.name for t in data.tasks] == ["class", "degree", "clustering", "pagerank"]
    train, valid, test = (data.splits[s][0] for s in ("train", "valid", "test"))
    assert (int(valid.node_mask.sum()), int(test.node_mask.sum())) == (500, 1000)
    assert int((~torch.isnan(train.y_node[train.node_mask, 0])).sum()) == 140  # class: public train nodes only
    assert not torch.isnan(train.y_node[train.node_mask, 1:]).any()  # aux: every non-valid/test node
    assert not (train.node_mask & (valid.node_mask | test.node_mask)).any()


def test_cora_trains_with_a_balancer(cora_root, tmp_path):
    from graph_mtl.engine.trainer import Trainer
    from graph_mtl.run import build_balancer, build_loaders, build_model

    torch.manual_seed(0)
    data = load_dataset(DataConfig(name="cora", root=str(cora_root), aux_tasks=["degree", "pagerank"]))
    model = build_model(ModelConfig(conv="gcn", hidden=64, num_layers=2, virtual_node=False, dropout=0.5,
                                    norm="none", residual=False), data)
    cfg = TrainConfig(epochs=40, balancer="pcgrad", progress=False, lr=0.01, weight_decay=5e-4)
    trainer = Trainer(model, build_balancer(cfg, [t.name for t in data.tasks]), cfg, data.splits["train"],
                      out_dir=tmp_path, log=lambda _: None)
    loaders = build_loaders(data, batch_size=1, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    result = trainer.test({"test": loaders["test"]})["test"]  # at the best validation epoch
    assert set(result["per_task"]) == {"class", "degree", "pagerank"}
    assert result["per_task"]["class"] > 0.5  # 7 classes, majority 0.32: learning after 40 full-batch steps


def test_unknown_aux_task_is_a_one_line_error(cora_root):
    with pytest.raises(ValueError, match=r"data.aux_tasks: unknown \['triangles'\]"):
        load_dataset(DataConfig(name="cora", root=str(cora_root), aux_tasks=["triangles"]))
