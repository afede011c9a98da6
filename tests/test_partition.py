"""Partition (Cluster-GCN-style) mini-batches: exact parts, induced subgraphs, reseeding, CLI run, errors."""

from __future__ import annotations

import pytest
import torch

from graph_mtl.config import ConfigError, load_config
from graph_mtl.data.partition import PartitionBatches, metis_available, partition_loaders
from graph_mtl.data.synthetic import load_sbm


@pytest.fixture(scope="module")
def sbm():
    dataset = load_sbm(num_nodes=240, avg_degree=6.0)
    graph = dataset.splits["train"][0]
    graph.edge_attr = torch.randn(graph.num_edges, 3)  # an edge attribute to be sliced with the edges
    return dataset


def _train_loader(dataset, num_parts=6, parts_per_batch=1, seed=0) -> PartitionBatches:
    return partition_loaders(dataset, num_parts, parts_per_batch, num_layers=2, batch_size=64, seed=seed)["train"]


def _brute_force_edges(graph, n_id):
    """The edges of ``graph`` with both ends in ``n_id``, in original order, with their positions."""
    inside = set(n_id.tolist())
    return [(i, (s, d)) for i, (s, d) in enumerate(graph.edge_index.t().tolist()) if s in inside and d in inside]


def test_one_epoch_partitions_the_nodes_into_induced_subgraphs(sbm):
    graph = sbm.splits["train"][0]
    loader = _train_loader(sbm, num_parts=6)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    counts = torch.zeros(graph.num_nodes, dtype=torch.long)
    for batch in batches:
        counts[batch.n_id] += 1
        assert batch.num_nodes == len(batch.n_id) == 40  # 240 / 6, balanced
        expected = _brute_force_edges(graph, batch.n_id)
        got = batch.n_id[batch.edge_index].t().tolist()
        assert [tuple(e) for e in got] == [e for _, e in expected]
        positions = torch.tensor([i for i, _ in expected], dtype=torch.long)
        assert torch.equal(batch.edge_attr, graph.edge_attr[positions])
        assert torch.equal(batch.x, graph.x[batch.n_id])
        assert torch.allclose(batch.y_node, graph.y_node[batch.n_id], equal_nan=True)
        assert torch.equal(batch.node_mask, graph.node_mask[batch.n_id])
    assert torch.equal(counts, torch.ones(graph.num_nodes, dtype=torch.long))  # each node in exactly one part


def test_parts_per_batch_groups_parts_and_all_parts_give_the_whole_graph(sbm):
    graph = sbm.splits["train"][0]
    grouped = list(_train_loader(sbm, num_parts=5, parts_per_batch=2))
    assert [b.num_nodes for b in grouped] == [96, 96, 48]  # 5 parts of 48 nodes, 2 per batch, the last alone
    (whole,) = list(_train_loader(sbm, num_parts=4, parts_per_batch=4))
    assert torch.equal(whole.n_id, torch.arange(graph.num_nodes))
    assert torch.equal(whole.edge_index, graph.edge_index)
    assert torch.equal(whole.x, graph.x) and torch.equal(whole.node_mask, graph.node_mask)


def test_reseeding_repeats_the_partition_and_another_seed_changes_it(sbm):
    loader = _train_loader(sbm)
    loader.generator.manual_seed(7)
    first = [b.n_id for b in loader]
    second = [b.n_id for b in loader]  # the next epoch without reseeding: a new partition
    loader.generator.manual_seed(7)
    again = [b.n_id for b in loader]
    loader.generator.manual_seed(8)
    other = [b.n_id for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_fixed_clusters_are_kept_whole_and_shuffled_between_batches(sbm):
    graph = sbm.splits["train"][0]
    block = sbm.splits["train"][0].y_node[:, 0].long()  # stand-in for METIS clusters: the SBM blocks
    clusters = [(block == b).nonzero().view(-1) for b in range(4)]
    loader = PartitionBatches(graph, graph.node_mask, 99, 2, torch.Generator().manual_seed(0), clusters)
    assert len(loader) == 2
    orders = set()
    for _ in range(6):
        batches = list(loader)
        found = [sorted({int(block[i]) for i in b.n_id}) for b in batches]
        assert all(len(f) == 2 for f in found) and sorted(sum(found, [])) == [0, 1, 2, 3]
        assert all(b.num_nodes == sum(int((block == k).sum()) for k in f) for b, f in zip(batches, found))
        orders.add(tuple(map(tuple, found)))
    assert len(orders) > 1  # the grouping of clusters changes between epochs


def test_evaluation_loaders_are_full_fanout_neighbor_loaders(sbm):
    loaders = partition_loaders(sbm, 4, 1, num_layers=2, batch_size=50, seed=0)
    assert set(loaders) == {"train", "valid", "test"}
    for split in ("valid", "test"):
        mask = sbm.splits[split][0].node_mask
        seen = torch.cat([b.n_id[: b.batch_size] for b in loaders[split]])
        assert sorted(seen.tolist()) == mask.nonzero().view(-1).tolist()  # every split node once


def test_partition_loader_from_the_command_line_with_a_balancer(tmp_path):
    from graph_mtl.cli import main

    args = ["train", "--out", str(tmp_path), "--set", "dataset=sbm", "--set", "data.limit=200", "--set", "conv=sage",
            "--set", "model.virtual_node=false", "--set", "model.num_layers=2", "--set", "data.loader=partition",
            "--set", "data.num_parts=4", "--set", "data.parts_per_batch=2", "--set", "balancer=pcgrad",
            "--set", "epochs=2", "--set", "model.hidden=16", "--quiet"]
    assert main(args) == 0
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "results.json").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.num_parts=1"], "data.num_parts: must be >= 2, got 1"),
        (["data.num_parts=4", "data.parts_per_batch=5"], "data.parts_per_batch: 5 is more than data.num_parts=4"),
        (["data.parts_per_batch=0"], "data.parts_per_batch: must be >= 1"),
        (["data.partition=spectral"], "data.partition: unknown value 'spectral'"),
        (["data.loader=cluster"], "data.loader: unknown value 'cluster'"),
    ],
)
def test_bad_partition_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.loader=partition", *overrides])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_partition_loader_errors(sbm, tiny_dataset):
    with pytest.raises(ValueError, match="^data.num_parts: must be >= 2"):
        partition_loaders(sbm, 1, 1, num_layers=2, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="^data.parts_per_batch: must be between 1 and data.num_parts=4"):
        partition_loaders(sbm, 4, 5, num_layers=2, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="^data.num_parts: 500 parts for a graph of 240 nodes"):
        partition_loaders(sbm, 500, 1, num_layers=2, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="serves node tasks only.*use data.loader: full"):
        partition_loaders(tiny_dataset, 4, 1, num_layers=2, batch_size=8, seed=0)
    node_only = tiny_dataset
    node_only.tasks = [t for t in node_only.tasks if t.level == "node"]
    with pytest.raises(ValueError, match="needs a single-graph node dataset.*20 graphs in its train split"):
        partition_loaders(node_only, 4, 1, num_layers=2, batch_size=8, seed=0)


def test_metis_is_a_clear_error_when_unavailable(sbm):
    if metis_available():
        pytest.skip("METIS is available here (pyg-lib with METIS or torch-sparse)")
    with pytest.raises(ValueError, match="^data.partition: 'metis' needs pyg-lib with METIS or torch-sparse") as info:
        partition_loaders(sbm, 4, 1, num_layers=2, batch_size=8, seed=0, partition="metis")
    assert "\n" not in str(info.value)


def test_graph_dataset_with_the_partition_loader_fails_from_the_command_line(tmp_path, capsys):
    from graph_mtl.cli import main

    args = ["train", "--out", str(tmp_path), "--set", "data.limit=40", "--set", "data.loader=partition",
            "--set", "epochs=1", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "data.loader: 'partition' cuts one graph into node parts and serves node tasks only" in err
