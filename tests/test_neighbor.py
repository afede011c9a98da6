"""NeighborLoader mini-batches: losses on seed nodes only, exact sampled inference with full fan-out, errors."""

from __future__ import annotations

import math

import pytest
import torch

from graph_mtl.config import ModelConfig, TrainConfig, load_config
from graph_mtl.data.neighbor import check_fanout, neighbor_loaders
from graph_mtl.data.synthetic import load_sbm
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_balancer, build_model


@pytest.fixture(scope="module")
def sbm():
    return load_sbm(num_nodes=300, avg_degree=6.0)


@pytest.mark.parametrize("conv", ["gin", "sage"])
def test_full_fanout_minibatch_inference_equals_full_batch(sbm, conv):
    torch.manual_seed(0)
    model = build_model(ModelConfig(conv=conv, hidden=16, num_layers=2, virtual_node=False, dropout=0.0), sbm).eval()
    graph = sbm.splits["test"][0]
    with torch.no_grad():
        full = model(graph).preds
        loader = neighbor_loaders(sbm, check_fanout(None, 2), batch_size=32, seed=0)["test"]
        seen = torch.zeros(graph.num_nodes, dtype=torch.bool)
        for batch in loader:
            preds = model(batch).preds
            ids = batch.n_id[: batch.batch_size]
            assert batch.node_mask.sum() == batch.batch_size and batch.node_mask[: batch.batch_size].all()
            for name, value in preds.items():
                assert torch.allclose(value[: batch.batch_size], full[name][ids], atol=1e-5)
            seen[ids] = True
    assert torch.equal(seen, graph.node_mask)  # every test node once, nothing else


def test_neighbor_training_runs_with_a_balancer_and_seed_only_losses(sbm, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(conv="sage", hidden=16, num_layers=2, virtual_node=False), sbm)
    cfg = TrainConfig(epochs=2, balancer="pcgrad", progress=False)
    trainer = Trainer(model, build_balancer(cfg, model.task_names), cfg, sbm.splits["train"], out_dir=tmp_path,
                      log=lambda _: None)
    loaders = neighbor_loaders(sbm, [5, 3], batch_size=64, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    assert all(math.isfinite(r["train_loss"]) for r in trainer.history)
    true, _, _ = trainer.predict(loaders["valid"])
    assert all(len(v) == int(sbm.splits["valid"][0].node_mask.sum()) for v in true.values())


def test_fanout_and_loader_errors(sbm, tiny_dataset):
    with pytest.raises(ValueError, match=r"^data.fanout: 3 entries for model.num_layers=2"):
        check_fanout([10, 5, 5], 2)
    with pytest.raises(ValueError, match="data.fanout"):
        check_fanout([10, 0], 2)
    with pytest.raises(ValueError, match="serves node tasks only"):
        neighbor_loaders(tiny_dataset, [-1], batch_size=4, seed=0)
    empty = load_sbm(num_nodes=60)
    empty.splits["valid"][0].node_mask[:] = False
    with pytest.raises(ValueError, match="the valid node mask of sbm selects no node"):
        neighbor_loaders(empty, [-1], batch_size=4, seed=0)


def test_neighbor_loader_from_the_command_line(tmp_path, capsys):
    from graph_mtl.cli import main

    args = ["train", "--out", str(tmp_path), "--set", "dataset=sbm", "--set", "data.limit=200", "--set", "conv=sage",
            "--set", "model.virtual_node=false", "--set", "model.num_layers=2", "--set", "data.loader=neighbor",
            "--set", "data.fanout=[5, 5]", "--set", "epochs=1", "--set", "model.hidden=16", "--quiet"]
    assert main(args) == 0
    assert main([*args[:-3], "--set", "data.fanout=[5]", "--set", "epochs=1", "--overwrite"]) == 2
    assert "data.fanout: 1 entries for model.num_layers=2" in capsys.readouterr().err
    assert load_config(None, ["data.loader=neighbor"]).data.loader == "neighbor"


def test_sampled_edges_are_real_and_respect_the_fanout(sbm):
    from graph_mtl.data.neighbor import SampledBatches

    graph = sbm.splits["train"][0]
    loader = SampledBatches(graph, [3, 2], graph.node_mask, batch_size=16, shuffle=True,
                            generator=torch.Generator().manual_seed(1))
    real = set(map(tuple, graph.edge_index.t().tolist()))
    for batch in loader:
        src, dst = batch.n_id[batch.edge_index]
        assert set(zip(src.tolist(), dst.tolist())) <= real
        in_degree = torch.bincount(batch.edge_index[1], minlength=batch.num_nodes)
        assert int(in_degree[: batch.batch_size].max()) <= 3 and int(in_degree.max()) <= 3 + 2
        assert len(set(batch.n_id.tolist())) == batch.num_nodes  # each node once
        assert torch.allclose(batch.y_node, graph.y_node[batch.n_id], equal_nan=True)


def test_evaluation_samples_are_repeatable(sbm):
    loader = neighbor_loaders(sbm, [2, 2], batch_size=50, seed=0, sampler="builtin")["valid"]
    first = [b.n_id for b in loader]
    assert all(torch.equal(a, b.n_id) for a, b in zip(first, loader))


def test_pyg_neighbor_loader_when_installed(sbm):
    from graph_mtl.data.neighbor import pyg_sampler_available

    if not pyg_sampler_available():
        with pytest.raises(ValueError, match="data.sampler: 'pyg' needs pyg-lib or torch-sparse"):
            neighbor_loaders(sbm, [-1, -1], batch_size=32, seed=0, sampler="pyg")
        pytest.skip("PyG's NeighborLoader needs pyg-lib or torch-sparse, not installed here")
    loader = neighbor_loaders(sbm, [-1, -1], batch_size=32, seed=0, sampler="pyg")["test"]
    assert sum(int(b.node_mask.sum()) for b in loader) == int(sbm.splits["test"][0].node_mask.sum())
