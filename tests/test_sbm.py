"""The stochastic-block-model node dataset: deterministic, masked splits, label shapes and meaning."""

from __future__ import annotations

import pytest
import torch

from graph_mtl.data import load_sbm
from graph_mtl.data.synthetic import block_sizes, cross_block_degree, neighbour_mean

N = 400


@pytest.fixture(scope="module")
def sbm():
    return load_sbm(num_nodes=N, num_blocks=4, seed=0)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.nan_to_num(-99.0), b.nan_to_num(-99.0))


def test_deterministic_for_seed(sbm):
    again = load_sbm(num_nodes=N, num_blocks=4, seed=0)
    other = load_sbm(num_nodes=N, num_blocks=4, seed=1)
    for split in ("train", "valid", "test"):
        a, b = sbm.splits[split][0], again.splits[split][0]
        assert same(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)
        assert same(a.y_node, b.y_node) and torch.equal(a.node_mask, b.node_mask)
    assert not torch.equal(sbm.splits["train"][0].x, other.splits["train"][0].x)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_sbm(num_nodes=100, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_masks_partition_nodes_60_20_20(sbm):
    masks = [sbm.splits[s][0].node_mask for s in ("train", "valid", "test")]
    assert all(m.dtype == torch.bool and m.shape == (N,) for m in masks)
    assert torch.equal(torch.stack(masks).sum(0), torch.ones(N, dtype=torch.long))
    assert [int(m.sum()) for m in masks] == [240, 80, 80]
    assert sbm.info["split_sizes"] == {"train": 240, "valid": 80, "test": 80}


def test_same_graph_in_every_split(sbm):
    ref = sbm.splits["train"][0]
    for split in ("valid", "test"):
        g = sbm.splits[split][0]
        assert torch.equal(g.x, ref.x) and torch.equal(g.edge_index, ref.edge_index)


def test_shapes_and_tasks(sbm):
    g = sbm.splits["train"][0]
    assert g.x.dtype == torch.float32 and g.x.shape == (N, 16)
    assert g.y_node.shape == (N, 3) and g.y_node.dtype == torch.float32
    assert [t.name for t in sbm.tasks] == ["block", "cross_degree", "neighbour_mean"]
    assert [(t.level, t.kind) for t in sbm.tasks] == [
        ("node", "multiclass"),
        ("node", "binary"),
        ("node", "regression"),
    ]
    assert sbm.tasks[0].num_outputs == 4 and sbm.node_features == "float"
    for task in sbm.tasks:
        assert task.labels(g).shape == (N, 1)


def test_label_meaning(sbm):
    g = sbm.splits["train"][0]
    block = g.y_node[:, 0]
    assert torch.equal(block, torch.repeat_interleave(torch.arange(4.0), torch.tensor(block_sizes(N, 4))))
    binary = g.y_node[:, 1]
    assert set(binary.unique().tolist()) <= {0.0, 1.0} and 0 < binary.mean() < 1
    cross = cross_block_degree(g.edge_index, block.long())
    assert torch.equal(binary, (cross > cross.median()).float())
    reg = g.y_node[:, 2]
    isolated = torch.bincount(g.edge_index[1], minlength=N) == 0
    assert torch.equal(torch.isnan(reg), isolated)
    assert reg[~isolated].std() > 0
    assert 0.6 < sbm.info["edge_homophily"] < 1.0


def test_neighbour_mean_small_graph():
    edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    out = neighbour_mean(edge_index, torch.tensor([1.0, 2.0, 4.0, 8.0]))
    assert out[:3].tolist() == [2.0, 2.5, 2.0] and torch.isnan(out[3])


def test_block_sizes():
    assert block_sizes(10, 3) == [4, 3, 3]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"num_blocks": 1}, "num_blocks"),
        ({"num_nodes": 5, "num_blocks": 4}, "num_nodes"),
        ({"homophily": 1.5}, "homophily"),
        ({"avg_degree": 0.0}, "avg_degree"),
        ({"num_features": 0}, "num_features"),
    ],
)
def test_bad_arguments_raise(kwargs, key):
    with pytest.raises(ValueError, match=key):
        load_sbm(**kwargs)


def test_sparse_block_model_edges_are_simple_symmetric_and_near_the_expected_count():
    from graph_mtl.data.synthetic import edge_probabilities, sparse_sbm_edges

    sizes = [3000, 3000, 3000]
    p_in, p_out = edge_probabilities(sizes, avg_degree=8.0, homophily=0.7)
    edges = sparse_sbm_edges(sizes, p_in, p_out, seed=0)
    assert (edges[0] != edges[1]).all()
    assert edges.unique(dim=1).shape == edges.shape
    assert set(map(tuple, edges.t().tolist())) == set(map(tuple, edges.flip(0).t().tolist()))
    assert abs(edges.shape[1] / 9000 - 8.0) < 0.3  # mean degree
    block = torch.arange(9000) // 3000
    assert abs((block[edges[0]] == block[edges[1]]).float().mean().item() - 0.7) < 0.02
    assert torch.equal(edges, sparse_sbm_edges(sizes, p_in, p_out, seed=0))
