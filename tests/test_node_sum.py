"""Graph tasks read out as the sum of a node task's values (``model.task_sum``, :class:`NodeSumHead`)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SMILES, molecule
from torch_geometric.loader import DataLoader
from torch_geometric.nn import global_mean_pool

from graph_mtl.balancers import create
from graph_mtl.config import ModelConfig, TrainConfig
from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.engine.step import StepEngine
from graph_mtl.engine.trainer import Trainer
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.models.heads import NodeSumHead
from graph_mtl.run import build_loaders, build_model
from graph_mtl.tasks import Task


def _dataset(declare: bool = False) -> MultiTaskDataset:
    """Molecules with a node regression task (1 for an atom heavier than carbon, else 0.25) and its sum per graph
    (``mass``), plus a graph task of another kind and a second node task."""
    graphs = []
    for s in SMILES:
        g = molecule(s)
        value = 0.25 + 0.75 * g.y_node[:, :1]
        g.y_node = torch.cat([g.y_node, value], dim=1)
        g.y_graph = torch.cat([g.y_graph, value.sum().view(1, 1)], dim=1)
        graphs.append(g)
    extra = {"sum_of": "weight"} if declare else {}
    tasks = [
        Task("mass", "graph", "regression", target="y_graph", columns=(2,), extra=extra),
        Task("ring", "graph", "binary", target="y_graph", columns=(1,)),
        Task("weight", "node", "regression", target="y_node", columns=(2,)),
        Task("heavy", "node", "binary", target="y_node", columns=(0,)),
    ]
    splits = {"train": graphs[:20], "valid": graphs[20:25], "test": graphs[25:]}
    return MultiTaskDataset("sums", tasks, splits, node_features="ogb")


def _model(dataset: MultiTaskDataset, **kwargs) -> MultiTaskGNN:
    torch.manual_seed(0)
    encoder = GNNEncoder(9, hidden=16, num_layers=2, conv="gine", node_encoder="atom", edge_encoder="bond",
                         virtual_node=True)
    return MultiTaskGNN(encoder, dataset.tasks, **kwargs)


def _batch(dataset: MultiTaskDataset):
    return next(iter(DataLoader(dataset.splits["train"], batch_size=6)))


def test_calibrated_sum_is_the_raw_sum_of_the_node_values():
    dataset = _dataset()
    model = _model(dataset, task_sum={"mass": "weight"}).eval()
    assert isinstance(model.head("mass"), NodeSumHead) and "mass" not in model.task_pool
    scalers = {"mass": (torch.tensor([3.0]), torch.tensor([2.0])), "weight": (torch.tensor([0.4]), torch.tensor([0.3]))}
    model.calibrate_sums(scalers)
    batch = _batch(dataset)
    out = model(batch)
    raw_nodes = 0.4 + 0.3 * out.preds["weight"]
    by_hand = torch.stack([raw_nodes[batch.batch == i].sum(0) for i in range(batch.num_graphs)])
    assert torch.allclose(3.0 + 2.0 * out.preds["mass"], by_hand, atol=1e-5)
    model.calibrate_sums({})  # neither standardised: the plain sum
    out = model(batch)
    plain = torch.stack([out.preds["weight"][batch.batch == i].sum(0) for i in range(batch.num_graphs)])
    assert torch.allclose(out.preds["mass"], plain, atol=1e-5)


def test_the_sum_loss_reaches_the_encoder_and_its_own_head_not_the_node_head():
    dataset = _dataset()
    model = _model(dataset, task_sum={"mass": "weight"})
    model(_batch(dataset)).preds["mass"].pow(2).sum().backward()
    assert all(p.grad is None for p in model.head("weight").parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head("mass").parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_parameters())
    assert {id(p) for p in model.task_parameters("mass")} == {id(p) for p in model.head("mass").parameters()}


def test_declared_sums_follow_pool_auto_and_yield_to_task_pool():
    dataset = _dataset(declare=True)
    assert _model(dataset, pool="auto").task_sum == {"mass": "weight"}
    assert _model(dataset, pool="mean").task_sum == {}
    assert _model(dataset, pool="auto", task_pool={"mass": "add"}).task_pool["mass"] == "add"
    assert _model(dataset, pool="auto", task_pool={"mass": "add"}).task_sum == {}
    dataset.tasks = [t for t in dataset.tasks if t.name != "weight"]  # the declared node task is not selected
    assert _model(dataset, pool="auto").task_sum == {}


@pytest.mark.parametrize("task_sum, task_pool, message", [
    ({"weight": "weight"}, {}, "'weight' is not a graph task"),
    ({"mass": "ring"}, {}, "'ring' .* is not a node task"),
    ({"mass": "weight"}, {"mass": "add"}, "also in model.task_pool"),
    ({"mass": "heavy"}, {}, "must both be regression tasks"),
    ({"ring": "weight"}, {}, "must both be regression tasks"),
])
def test_bad_sums_are_one_line_errors_naming_the_key(task_sum, task_pool, message):
    with pytest.raises(ValueError, match=rf"^model.task_sum: .*{message}"):
        _model(_dataset(), task_sum=task_sum, task_pool=task_pool)


@pytest.mark.parametrize("balancer, grad_mode", [("ew", "auto"), ("pcgrad", "rep")])
def test_a_node_sum_trains_calibrated_with_ew_and_pcgrad_rep(balancer, grad_mode):
    dataset = _dataset()
    model = _model(dataset, task_sum={"mass": "weight"})
    engine = StepEngine(create(balancer, [t.name for t in dataset.tasks]), grad_mode=grad_mode)
    trainer = Trainer(model, engine, TrainConfig(epochs=3, progress=False), dataset.splits["train"],
                      log=lambda _: None)
    (mean_g, std_g), (mean_k, std_k) = trainer.scalers["mass"], trainer.scalers["weight"]
    head = model.head("mass")
    assert torch.allclose(head.scale.detach(), std_k / std_g) and torch.allclose(head.bias.detach(), -mean_g / std_g)
    assert torch.allclose(head.per_node.detach(), mean_k / std_g)
    loaders = build_loaders(dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    assert trainer.step == 12 and all(math.isfinite(r["train_loss"]) for r in trainer.history)


@pytest.mark.parametrize("declare, pool, vn_pool, expected", [
    (True, "auto", "auto", "mean"), (False, "auto", "auto", "add"), (True, "mean", "auto", "add"),
    (True, "auto", "add", "add"),
])
def test_vn_pool_auto_reads_the_mean_where_a_task_is_a_node_sum(declare, pool, vn_pool, expected):
    """A node-sum read-out needs node values that do not grow with the graph: ``vn_pool: auto`` is ``mean`` then."""
    model = build_model(ModelConfig(hidden=8, num_layers=2, pool=pool, vn_pool=vn_pool), _dataset(declare=declare))
    assert (model.encoder.vn_pool is global_mean_pool) == (expected == "mean")
    assert bool(model.task_sum) == (declare and pool == "auto")


@pytest.mark.parametrize("arch", ["mmoe", "cross_stitch"])
def test_with_a_sharing_trunk_the_sum_reads_the_graph_tasks_own_representation(arch):
    dataset = _dataset()
    model = build_model(ModelConfig(hidden=8, num_layers=2, arch=arch, task_sum={"mass": "weight"}), dataset).eval()
    model.calibrate_sums({})
    batch = _batch(dataset)
    out = model(batch)
    index = model.task_names.index("mass")
    with torch.no_grad():
        h = model.encoder(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs).task_reprs[index]
        own = model.head("weight")(h)
    by_hand = torch.stack([own[batch.batch == i].sum(0) for i in range(batch.num_graphs)])
    assert torch.allclose(out.preds["mass"], by_hand, atol=1e-5)
