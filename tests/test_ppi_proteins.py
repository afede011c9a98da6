"""PPI and ogbn-proteins through the real PyG / OGB classes, offline, on small generated raw folders of the same
layout (tests/fakes_node_datasets.py): shapes, tasks, splits, labels, errors, OGB's evaluator, short runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from fakes_node_datasets import PPI_FEATURES, PPI_LABELS, PROTEIN_TASKS, write_fake_ppi, write_fake_proteins

from graph_mtl.cli import main
from graph_mtl.config import DataConfig
from graph_mtl.data.ogbn_proteins import load_ogbn_proteins, proteins_summary
from graph_mtl.data.ppi import load_ppi, ppi_summary
from graph_mtl.data.registry import load_dataset
from graph_mtl.engine.metrics import evaluate_tasks

SMALL_MODEL = ["--set", "model.hidden=16", "--set", "model.num_layers=2", "--set", "epochs=1", "--quiet"]


@pytest.fixture(scope="module")
def fake_ppi(tmp_path_factory):
    return write_fake_ppi(tmp_path_factory.mktemp("ppi"))


@pytest.fixture(scope="module")
def fake_proteins(tmp_path_factory):
    return write_fake_proteins(tmp_path_factory.mktemp("proteins"))


@pytest.fixture()
def one_thread():
    """One intra-op thread: 112 tasks make thousands of tiny ops per step, and OpenMP's spin-waiting on tiny
    tensors makes them 10-20x slower when other processes load the CPU (7 s alone, minutes on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def directed(pairs) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for i, j in pairs for a, b in ((i, j), (j, i))}


# ----------------------------------------------------------------------------------------------------- PPI


def test_ppi_loads_through_pyg_with_one_graph_per_tissue(fake_ppi):
    data = load_ppi(fake_ppi.root)
    assert [t.name for t in data.tasks][:2] == ["label_000", "label_001"] and data.tasks[-1].name == "label_120"
    assert len(data.tasks) == PPI_LABELS
    assert all(t.level == "node" and t.kind == "binary" and t.metric == "rocauc" for t in data.tasks)
    assert data.tasks[7].columns == (7,)
    assert {s: len(g) for s, g in data.splits.items()} == {"train": 4, "valid": 2, "test": 2}
    assert data.num_node_features == PPI_FEATURES and data.num_edge_features == 0
    for split, graphs in data.splits.items():
        for graph, feats, labels, edges in zip(graphs, fake_ppi.feats[split], fake_ppi.labels[split],
                                               fake_ppi.edges[split]):
            assert graph.x.dtype == torch.float32 and graph.x.shape == (len(feats), PPI_FEATURES)
            assert torch.allclose(graph.x, torch.from_numpy(feats).float())
            assert torch.equal(graph.y_node, torch.from_numpy(labels).float())  # float, NaN-free
            assert getattr(graph, "node_mask", None) is None  # different graphs per split: every node counts
            assert set(map(tuple, graph.edge_index.t().tolist())) == directed(edges)  # both ways, no self-loop
    assert data.info["graphs"] == {"train": 4, "valid": 2, "test": 2}


def test_ppi_multilabel_view_and_limit_through_the_registry(fake_ppi):
    data = load_dataset(DataConfig(name="ppi", root=str(fake_ppi.root), task_view="multilabel", limit=1))
    (task,) = data.tasks
    assert (task.name, task.kind, task.num_outputs, task.target) == ("ppi", "multilabel", PPI_LABELS, "y_node")
    assert {s: len(g) for s, g in data.splits.items()} == {"train": 1, "valid": 1, "test": 1}
    assert task.labels(data.splits["valid"][0]).shape == (len(fake_ppi.feats["valid"][0]), PPI_LABELS)
    with pytest.raises(ValueError, match=r"^data.task_view: expected 'columns' or 'multilabel'"):
        load_ppi(fake_ppi.root, task_view="rows")


def test_ppi_missing_root_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import torch_geometric.datasets.ppi as pyg_ppi

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(pyg_ppi, "download_url", offline)
    with pytest.raises(ValueError, match=r"^data.root: PPI is neither under .*PPI/raw nor downloadable") as err:
        load_ppi(tmp_path / "nowhere")
    assert "\n" not in str(err.value) and "$GRAPH_MTL_DATA" in str(err.value)
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "data.name=ppi",
                 "--set", f"data.root={tmp_path / 'nowhere'}", "--set", "conv=gin", *SMALL_MODEL]) == 2
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and "data.root: PPI is neither under" in err_text


def test_ppi_micro_f1_is_one_f1_over_every_label(fake_ppi):
    from sklearn.metrics import f1_score

    columns, multilabel = load_ppi(fake_ppi.root), load_ppi(fake_ppi.root, "multilabel")
    labels = np.concatenate(fake_ppi.labels["test"]).astype(float)
    logits = np.random.default_rng(0).normal(size=labels.shape) - 0.5
    expected = f1_score(labels.ravel(), (logits > 0).ravel())  # binary F1 of the flat array = micro-F1
    assert np.isclose(expected, f1_score(labels, logits > 0, average="micro"))
    by_column = ppi_summary(columns.tasks, {t.name: labels[:, t.columns] for t in columns.tasks},
                            {t.name: logits[:, t.columns] for t in columns.tasks})
    as_one = ppi_summary(multilabel.tasks, {"ppi": labels}, {"ppi": logits})
    assert by_column["ppi/micro_f1"] == pytest.approx(expected) == as_one["ppi/micro_f1"]
    labels[0, :] = np.nan  # missing labels are left out
    assert ppi_summary(multilabel.tasks, {"ppi": labels}, {"ppi": logits})["ppi/micro_f1"] == pytest.approx(
        f1_score(labels[1:].ravel(), (logits[1:] > 0).ravel()))


def test_ppi_trains_from_the_command_line(fake_ppi, tmp_path, one_thread):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "data.name=ppi", "--set", f"data.root={fake_ppi.root}",
                 "--set", "data.task_view=multilabel", "--set", "conv=gin", "--set", "data.batch_size=2",
                 *SMALL_MODEL]) == 0
    assert (out / "metrics.csv").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "ppi" and 0.0 <= results["test"]["summary"]["ppi/micro_f1"] <= 1.0
    assert results["test"]["per_task"]["ppi"] is not None


# -------------------------------------------------------------------------------------------- ogbn-proteins


def test_proteins_loads_through_ogb_with_species_split_masks(fake_proteins):
    data = load_ogbn_proteins(fake_proteins.root)
    n, e = len(fake_proteins.labels), len(fake_proteins.edges)
    assert len(data.tasks) == PROTEIN_TASKS and data.tasks[-1].name == "label_111"
    assert all(t.level == "node" and t.kind == "binary" and t.metric == "rocauc" for t in data.tasks)
    assert all(len(g) == 1 for g in data.splits.values())
    train, valid, test = (data.splits[s][0] for s in ("train", "valid", "test"))
    assert train.x.shape == (n, 8) and train.edge_attr.shape == (2 * e, 8) and train.edge_index.shape == (2, 2 * e)
    assert data.num_node_features == 8 and data.num_edge_features == 8
    assert set(map(tuple, train.edge_index.t().tolist())) == directed(fake_proteins.edges)
    # x: the mean of each node's incident edge features, from the written files
    total, count = np.zeros((n, 8)), np.zeros(n)
    for (i, j), feat in zip(fake_proteins.edges, fake_proteins.edge_feat):
        total[[i, j]] += feat
        count[[i, j]] += 1
    assert torch.allclose(train.x.double(), torch.from_numpy(total / np.maximum(count, 1)[:, None]), atol=1e-6)
    assert torch.equal(train.y_node, torch.from_numpy(fake_proteins.labels).float())
    masks = {s: data.splits[s][0].node_mask for s in ("train", "valid", "test")}
    for split, mask in masks.items():
        assert mask.dtype == torch.bool
        assert torch.equal(mask.nonzero().view(-1), torch.from_numpy(fake_proteins.split[split]))
    assert not (masks["train"] & masks["valid"]).any() and not (masks["train"] & masks["test"]).any()
    assert not (masks["valid"] & masks["test"]).any() and bool((masks["train"] | masks["valid"] | masks["test"]).all())
    assert data.info["species"] == {"train": [3702], "valid": [4932], "test": [9606]}
    assert valid.x is train.x and test.edge_index is train.edge_index  # one graph, shared by the three copies


def test_proteins_multilabel_view_and_limit(fake_proteins):
    full = load_ogbn_proteins(fake_proteins.root)
    data = load_dataset(DataConfig(name="ogbn-proteins", root=str(fake_proteins.root), task_view="multilabel",
                                   limit=10))
    (task,) = data.tasks
    assert (task.name, task.kind, task.num_outputs) == ("proteins", "multilabel", PROTEIN_TASKS)
    graph = data.splits["train"][0]
    assert graph.num_nodes == 30 and data.info["split_sizes"] == {"train": 10, "valid": 10, "test": 10}
    keep = torch.cat([torch.from_numpy(fake_proteins.split[s][:10]) for s in ("train", "valid", "test")]).sort()[0]
    assert torch.equal(graph.x, full.splits["train"][0].x[keep])  # features of the whole graph, then the subset
    original = set(map(tuple, full.splits["train"][0].edge_index.t().tolist()))
    assert {(int(keep[a]), int(keep[b])) for a, b in graph.edge_index.t().tolist()} <= original


def test_proteins_missing_or_unversioned_root_is_a_one_line_error(tmp_path, monkeypatch):
    import ogb.nodeproppred.dataset_pyg as dataset_pyg

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    def no_prompt(*args, **kwargs):
        raise AssertionError("ogb asked on stdin")

    monkeypatch.setattr(dataset_pyg, "decide_download", offline)
    monkeypatch.setattr("builtins.input", no_prompt)
    with pytest.raises(ValueError, match=r"^data.root: ogbn-proteins is neither under .*ogbn_proteins nor "
                                         r"downloadable") as err:
        load_ogbn_proteins(tmp_path / "empty")
    assert "\n" not in str(err.value) and "$GRAPH_MTL_DATA" in str(err.value)
    write_fake_proteins(tmp_path / "old", num_nodes=40, num_edges=60, release=False)
    with pytest.raises(ValueError, match=r"^data.root: .*ogbn_proteins has no RELEASE_v1.txt") as err:
        load_ogbn_proteins(tmp_path / "old")
    assert "\n" not in str(err.value)


def test_proteins_summary_is_ogbs_evaluator_in_either_view(fake_proteins):
    from ogb.nodeproppred import Evaluator

    columns = load_ogbn_proteins(fake_proteins.root)
    multilabel = load_ogbn_proteins(fake_proteins.root, "multilabel")
    labels = fake_proteins.labels[fake_proteins.split["test"]].astype(float)
    logits = np.random.default_rng(0).normal(size=labels.shape)
    labels[:, 5] = 0.0  # a column without positives: OGB leaves it out of the mean, as our metric does
    y_true = {t.name: labels[:, t.columns] for t in columns.tasks}
    y_pred = {t.name: logits[:, t.columns] for t in columns.tasks}
    summary = proteins_summary(columns.tasks, y_true, y_pred)
    direct = Evaluator("ogbn-proteins").eval({"y_true": labels, "y_pred": logits})["rocauc"]
    ours = evaluate_tasks(columns.tasks, y_true, y_pred)["per_task"]
    assert summary["ogb/rocauc"] == pytest.approx(direct, abs=1e-12)
    assert summary["ogb/rocauc"] == pytest.approx(np.mean([v for v in ours.values() if v is not None]), abs=1e-9)
    assert summary["ogb/skipped_columns"] == [5]
    assert proteins_summary(multilabel.tasks, {"proteins": labels}, {"proteins": logits}) == summary
    assert proteins_summary(columns.tasks[:3], y_true, y_pred) == {}  # OGB scores all 112 columns or nothing


def test_proteins_trains_with_neighbor_sampling_and_pcgrad(fake_proteins, tmp_path, one_thread):
    out = tmp_path / "run"  # 112 column tasks, one step of 256 seed nodes (every training node) per epoch
    assert main(["train", "--out", str(out), "--set", "data.name=ogbn-proteins",
                 "--set", f"data.root={fake_proteins.root}", "--set", "data.loader=neighbor",
                 "--set", "data.fanout=[5, 5]", "--set", "data.batch_size=256", "--set", "balancer=pcgrad",
                 "--set", "conv=gine", "--set", "model.virtual_node=false", *SMALL_MODEL]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["valid/ogb/rocauc"]) <= 1.0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["test"]["summary"]["ogb/rocauc"] <= 1.0
    assert len(results["test"]["per_task"]) == PROTEIN_TASKS


def test_list_shows_both_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ppi" in out and "ogbn-proteins" in out
