"""Molecule-level graph features (``data.graph_features``), per-task pooling (``model.task_pool``) and the
learning-rate warm-up (``train.warmup_epochs``). Tiny in-memory data; seconds each."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMILES, molecule
from torch_geometric.loader import DataLoader

import graph_mtl
from graph_mtl.balancers import create
from graph_mtl.cli import main
from graph_mtl.config import TrainConfig
from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.data.graph_features import attach_graph_features, features_for_smiles
from graph_mtl.engine.metrics import evaluate_tasks
from graph_mtl.engine.step import StepEngine
from graph_mtl.engine.trainer import Trainer, build_optimizer, build_scheduler
from graph_mtl.inference import metric_inputs
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.models.heads import GraphHead
from graph_mtl.run import build_loaders

KIND = "rdkit2d+morgan"


def _molecules(tiny_dataset: MultiTaskDataset, smiles: list[str] = SMILES) -> MultiTaskDataset:
    """``tiny_dataset``'s split of 20/5/5 molecules, each graph carrying its SMILES."""
    graphs = []
    for s in smiles:
        graph = molecule(s)
        graph.smiles = s
        graphs.append(graph)
    splits = {"train": graphs[:20], "valid": graphs[20:25], "test": graphs[25:]}
    return MultiTaskDataset("tiny", list(tiny_dataset.tasks), splits, node_features="ogb")


def _features(dataset: MultiTaskDataset) -> torch.Tensor:
    return torch.cat([g.graph_x for s in ("train", "valid", "test") for g in dataset.splits[s]])


def _model(dataset: MultiTaskDataset, **kwargs) -> MultiTaskGNN:
    encoder = GNNEncoder(9, hidden=16, num_layers=2, conv="gine", node_encoder="atom", edge_encoder="bond")
    return MultiTaskGNN(encoder, dataset.tasks, **kwargs)


def test_descriptors_are_finite_and_standardised_after_normalisation(tiny_dataset, tmp_path):
    dataset = _molecules(tiny_dataset)
    attach_graph_features(dataset, KIND, tmp_path)
    x = _features(dataset)
    info = dataset.info["graph_features"]
    assert x.shape == (30, info["width"]) and info["width"] > 2048 and torch.isfinite(x).all()
    train = torch.cat([g.graph_x for g in dataset.splits["train"]])[:, :info["width"] - 2048]
    assert train.mean(0).abs().max() < 1e-4  # clipped training values: mean 0, std 1 or a constant 0 column
    assert ((train.std(0, unbiased=False) - 1).abs() < 1e-4).logical_or(train.std(0) == 0).all()
    assert x.abs().max() < 50


def test_statistics_come_from_the_training_split_only(tiny_dataset, tmp_path):
    first = _molecules(tiny_dataset)
    attach_graph_features(first, KIND, tmp_path)
    changed = _molecules(tiny_dataset, SMILES[:-1] + ["CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCO"])
    attach_graph_features(changed, KIND, tmp_path)
    a, b = first.info["graph_features"]["spec"], changed.info["graph_features"]["spec"]
    for key in ("lo", "hi", "mean", "std"):
        assert torch.equal(a["rdkit2d"][key], b["rdkit2d"][key]), key
    assert torch.equal(_features(first)[:29], _features(changed)[:29])


def test_a_cache_hit_returns_identical_tensors(tiny_dataset, tmp_path):
    first, second = _molecules(tiny_dataset), _molecules(tiny_dataset)
    attach_graph_features(first, KIND, tmp_path)
    attach_graph_features(second, KIND, tmp_path)
    assert not first.info["graph_features"]["from_cache"] and second.info["graph_features"]["from_cache"]
    assert torch.equal(_features(first), _features(second))
    assert len(list(tmp_path.glob(f"graph-features-{KIND}-v*.pt"))) == 1


@pytest.mark.parametrize("grouped", [False, True])
def test_the_feature_width_reaches_every_graph_head(tiny_dataset, tmp_path, grouped):
    dataset = _molecules(tiny_dataset)
    attach_graph_features(dataset, "morgan", tmp_path)
    if grouped:
        dataset.tasks = [t for t in dataset.tasks if t.level == "graph"]
    model = _model(dataset, graph_features=2048, grouped_heads=grouped)
    firsts = ([model.grouped.weights[0].shape[1]] if grouped else
              [h.mlp[0].in_features for h in model.heads.values() if isinstance(h, GraphHead)])
    assert firsts and all(width == 16 + 2048 for width in firsts)
    batch = next(iter(DataLoader(dataset.splits["train"], batch_size=5)))
    out = model(batch)
    assert out.graph_repr.shape == (5, 16 + 2048) and out.preds["size"].shape == (5, 1)
    changed = batch.clone()
    changed.graph_x = torch.zeros_like(batch.graph_x)
    model.eval()
    assert not torch.equal(model(batch).preds["size"], model(changed).preds["size"])  # the features are read


def test_predict_on_smiles_gives_the_evaluation_predictions(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPH_MTL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "mols.csv"
    data.write_text("smiles,size,ring\n" + "".join(f"{s},{len(s)},{int('1' in s)}\n" for s in SMILES))
    run = tmp_path / "run"
    args = ["dataset=csv", f"csv={data}", "data.split=random", f"data.graph_features={KIND}", "epochs=2",
            "model.hidden=16", "model.num_layers=2", "data.batch_size=8", "train.progress=false"]
    assert main(["train", *[a for s in args for a in ("--set", s)], "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    loaded = graph_mtl.load_run(run)
    assert loaded.featuriser["graph_features"]["kind"] == KIND
    from graph_mtl.data.registry import load_dataset

    test = load_dataset(loaded.config.data).splits["test"]
    path = tmp_path / "test.csv"
    path.write_text("smiles\n" + "".join(f"{g.smiles}\n" for g in test))
    assert main(["predict", str(run), "--input", str(path), "--out", str(tmp_path / "p.csv")]) == 0
    with (tmp_path / "p.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {name: np.array([float(r[name]) for r in rows]) for name in ("size", "ring")}
    true = {t.name: torch.cat([g.y_graph[:, t.columns] for g in test]).numpy() for t in loaded.tasks}
    scored = evaluate_tasks(loaded.tasks, true, {t.name: metric_inputs(t, columns) for t in loaded.tasks})
    assert scored["per_task"] == results["test"]["per_task"]  # exactly: the same features, the same transform
    spec = loaded.featuriser["graph_features"]
    assert torch.equal(features_for_smiles(spec, [g.smiles for g in test]), torch.cat([g.graph_x for g in test]))


def test_add_pooling_of_a_graph_is_the_sum_of_its_node_representations(tiny_dataset):
    model = _model(tiny_dataset, task_pool={"size": "add"}).eval()
    batch = next(iter(DataLoader(tiny_dataset.splits["train"], batch_size=5)))
    h = model(batch).node_repr
    pooled = model.head("size").pool(h, batch.batch, batch.num_graphs)
    by_hand = torch.stack([h[batch.batch == i].sum(0) for i in range(batch.num_graphs)])
    assert torch.allclose(pooled, by_hand, atol=1e-5)
    assert model.task_pool == {"size": "add", "ring": "mean"}


def test_auto_pooling_takes_the_dataset_preference_and_an_explicit_pool_wins(tiny_dataset):
    tiny_dataset.tasks[0].extra["pool"] = "add"
    assert _model(tiny_dataset, pool="auto").task_pool == {"size": "add", "ring": "mean"}
    assert _model(tiny_dataset, pool="max").task_pool == {"size": "max", "ring": "max"}
    assert _model(tiny_dataset, pool="max", task_pool={"ring": "add"}).task_pool == {"size": "max", "ring": "add"}


@pytest.mark.parametrize("balancer, grad_mode", [("ew", "auto"), ("pcgrad", "rep")])
def test_a_task_pool_mix_trains_with_ew_and_pcgrad_rep(tiny_dataset, tmp_path, balancer, grad_mode):
    dataset = _molecules(tiny_dataset)
    dataset.tasks = [t for t in dataset.tasks if t.level == "graph"]
    model = _model(dataset, task_pool={"size": "add"})
    batch = next(iter(DataLoader(dataset.splits["train"], batch_size=5)))
    out = model(batch)
    assert out.graph_repr is None and out.shared_repr is out.node_repr  # no shared graph representation
    with pytest.raises(ValueError, match=r"^model.grouped_heads: graph tasks pool differently"):
        _model(dataset, task_pool={"size": "add"}, grouped_heads=True)
    engine = StepEngine(create(balancer, ["size", "ring"]), grad_mode=grad_mode)
    trainer = Trainer(model, engine, TrainConfig(epochs=2, progress=False), dataset.splits["train"], log=lambda _: None)
    loaders = build_loaders(dataset, batch_size=5, seed=0)
    trainer.fit(loaders["train"], loaders["valid"])
    assert trainer.step == 8 and all(math.isfinite(r["train_loss"]) for r in trainer.history)


def _lrs(cfg: TrainConfig, scores: list[float] | None = None) -> list[float]:
    """The learning rate each epoch trains at."""
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    scheduler = build_scheduler(optimizer, cfg)
    lrs = []
    for epoch in range(cfg.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(scores[epoch]) if scores else scheduler.step()
    return lrs


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_warm_up_learning_rates_per_epoch_equal_hand_values():
    cosine = _lrs(TrainConfig(epochs=7, lr=0.3, warmup_epochs=3, scheduler="cosine"))
    hand = [0.1, 0.2, 0.3] + [0.15 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert np.allclose(cosine, hand, rtol=1e-12)
    assert np.allclose(_lrs(TrainConfig(epochs=4, lr=0.2, warmup_epochs=4 - 1)), [0.2 / 3, 0.4 / 3, 0.2, 0.2])
    # plateau counts from the end of the warm-up: epoch 3 sets its best, epochs 4 and 5 do not improve on it
    # (2 > patience 1), so epoch 6 trains at half the rate
    plateau = _lrs(TrainConfig(epochs=6, lr=0.2, warmup_epochs=2, scheduler="plateau", plateau_patience=1),
                   scores=[1.0] * 6)
    assert np.allclose(plateau, [0.1, 0.2, 0.2, 0.2, 0.2, 0.1])


def test_resume_across_the_warm_up_boundary_is_exact(tiny_dataset, tmp_path):
    def trainer(out: Path, epochs: int) -> Trainer:
        torch.manual_seed(0)
        model = _model(tiny_dataset)
        cfg = TrainConfig(epochs=epochs, warmup_epochs=2, scheduler="cosine", progress=False)
        return Trainer(model, create("ew", [t.name for t in tiny_dataset.tasks]), cfg, tiny_dataset.splits["train"],
                       out_dir=out, log=lambda _: None)

    def loaders():
        return build_loaders(tiny_dataset, batch_size=5, seed=0)

    full = trainer(tmp_path / "full", 4)
    full.fit(loaders()["train"], loaders()["valid"])
    # the unbroken run's schedule is that of epochs=4; the part stops after epoch 1 (inside the warm-up) and
    # resumes under the same config
    part = trainer(tmp_path / "part", 4)
    part.cfg.epochs = 1
    part.fit(loaders()["train"], loaders()["valid"])
    torch.manual_seed(123)
    resumed = trainer(tmp_path / "part", 4)
    resumed.fit(loaders()["train"], loaders()["valid"], resume=tmp_path / "part" / "last.pt")
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


@pytest.mark.parametrize("args, field", [
    (["dataset=sbm", "data.limit=60", "data.graph_features=rdkit2d"], "data.graph_features"),
    (["data.graph_features=maccs"], "data.graph_features"),
    (["model.task_pool={nope: add}"], "model.task_pool"),
    (["model.task_pool={size: sum}"], "model.task_pool"),
    (["model.task_pool=add"], "model.task_pool"),
    (["model.task_sum={size: nope}"], "model.task_sum"),
    (["model.task_sum=size"], "model.task_sum"),
    (["train.warmup_epochs=-1"], "train.warmup_epochs"),
    (["train.warmup_epochs=1"], "train.warmup_epochs"),  # not less than epochs=1
], ids=["no_smiles", "unknown_kind", "unknown_task", "unknown_pool", "not_a_mapping", "unknown_node_task",
     "sum_not_a_mapping", "negative", "all_epochs"])
def test_bad_inputs_exit_2_with_one_line_naming_the_key(args, field, tmp_path, capsys):
    data = tmp_path / "mols.csv"
    data.write_text("smiles,size\n" + "".join(f"{s},{len(s)}\n" for s in SMILES))
    base = ["dataset=csv", f"csv={data}", "data.split=random", "epochs=1", "model.hidden=8", "model.num_layers=2",
            "train.progress=false"]
    out = tmp_path / "run"
    code = main(["train", *[a for s in base + args for a in ("--set", s)], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())


def test_contrib_pooling_sums_a_contribution_per_node(tiny_dataset, tmp_path):
    dataset = _molecules(tiny_dataset)
    attach_graph_features(dataset, "morgan", tmp_path)
    model = _model(dataset, task_pool={"size": "contrib"}, graph_features=2048).eval()
    batch = next(iter(DataLoader(dataset.splits["train"], batch_size=5)))
    out = model(batch)
    head = model.head("size")
    node = head.mlp(out.node_repr)
    with torch.no_grad():
        head.graph_bias.fill_(0.25)
    out = model(batch)
    by_hand = (torch.stack([node[batch.batch == i].sum(0) for i in range(5)]) + 0.25
               + head.extra_linear(batch.graph_x))
    assert torch.allclose(out.preds["size"], by_hand, atol=1e-5) and out.graph_repr is None
    assert "graph_bias" in dict(head.named_parameters())  # trained with the head
    dataset.tasks = [t for t in dataset.tasks if t.level == "graph"]
    with pytest.raises(ValueError, match=r"^model.grouped_heads: pool 'contrib'"):
        _model(dataset, pool="contrib", grouped_heads=True)


def test_a_contrib_head_saved_before_its_constant_loads_with_a_zero_constant(tiny_dataset):
    dataset = _molecules(tiny_dataset)
    model = _model(dataset, task_pool={"size": "contrib"}).eval()
    batch = next(iter(DataLoader(dataset.splits["train"], batch_size=5)))
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("graph_bias")}
    with torch.no_grad():
        model.head("size").graph_bias.fill_(3.0)
    model.load_state_dict(old)  # strict: the missing constant is filled with zeros, nothing else is
    assert torch.equal(model.head("size").graph_bias, torch.zeros(1))
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict({k: v for k, v in old.items() if not k.endswith("mlp.0.weight")})
    assert torch.isfinite(model(batch).preds["size"]).all()



def test_add_norm_pooling_is_the_batch_normalised_sum_of_each_head(tiny_dataset, tmp_path):
    dataset = _molecules(tiny_dataset)
    model = _model(dataset, task_pool={"size": "add_norm"})
    batch = next(iter(DataLoader(dataset.splits["train"], batch_size=5)))
    model.train()(batch)  # one training batch moves the running statistics off their start
    model.eval()
    out = model(batch)
    head = model.head("size")
    norm = head.pooling.norm
    sums = torch.stack([out.node_repr[batch.batch == i].sum(0) for i in range(5)])
    by_hand = (sums - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    assert torch.allclose(head.pool(out.node_repr, batch.batch, 5), by_hand, atol=1e-4)
    assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))
    assert head.learned_pool and out.graph_repr is None  # the head's own: its statistics are not shared
    model.train()(next(iter(DataLoader(dataset.splits["train"], batch_size=1))))  # one graph in training: no error
    dataset.tasks = [t for t in dataset.tasks if t.level == "graph"]
    with pytest.raises(ValueError, match=r"^model.grouped_heads: pool 'add_norm'"):
        _model(dataset, pool="add_norm", grouped_heads=True)
