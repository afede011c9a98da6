"""The embedded NCI molecule dataset: tasks, shapes, labels, OGB featurisation and the recipe-hashed cache."""

from __future__ import annotations

import math

import pytest
import torch
from ogb.utils import smiles2graph

from graph_mtl.data import load_embedded
from graph_mtl.data import molecules as mol_mod
from graph_mtl.tasks import KINDS

LIMIT = 200


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded_cache")


@pytest.fixture(scope="module")
def dataset(cache_dir):
    return load_embedded(cache_dir, limit=LIMIT)


def all_graphs(ds):
    return [g for split in ("train", "valid", "test") for g in ds.splits[split]]


def task_values(ds, task) -> torch.Tensor:
    return torch.cat([task.labels(g) for g in all_graphs(ds)]).flatten()


def test_tasks_cover_levels_and_kinds(dataset):
    tasks = dataset.tasks
    assert len(tasks) >= 6
    assert {t.level for t in tasks} == {"node", "graph"}
    for level in ("node", "graph"):
        kinds = {t.kind for t in tasks if t.level == level}
        assert "regression" in kinds and kinds & {"binary", "multiclass"}, level
    assert {t.kind for t in tasks} >= set(KINDS) - {"multilabel"}
    assert dataset.name == "embedded" and dataset.node_features == "ogb"


def test_sizes_and_counts(dataset):
    info = dataset.info
    sizes = {k: len(v) for k, v in dataset.splits.items()}
    assert sum(sizes.values()) == LIMIT == info["counts"]["kept"]
    assert info["split_sizes"] == sizes
    assert info["counts"]["read"] == info["counts"]["kept"] + info["counts"]["skipped"]
    assert sizes["train"] >= 0.7 * LIMIT and sizes["valid"] > 0 and sizes["test"] > 0


def test_label_columns_only_ever_grow_at_the_end():
    """A saved run's tasks name their label columns by index: the columns of earlier recipes keep their places, so
    ``evaluate`` of a run trained before a column was added reads its own labels."""
    assert mol_mod.GRAPH_COLUMNS[:5] == ("logp", "tpsa", "qed", "lipinski", "brenk")
    assert mol_mod.NODE_COLUMNS[:4] == ("gasteiger", "crippen_logp", "pharmacophore", "brenk_atom")  # recipe 2
    assert mol_mod.NODE_COLUMNS[4:] == ("tpsa_atom",)  # recipe 4


def test_shapes_and_dtypes(dataset):
    g_cols, n_cols = len(mol_mod.GRAPH_COLUMNS), len(mol_mod.NODE_COLUMNS)
    for g in all_graphs(dataset):
        n, e = g.x.size(0), g.edge_index.size(1)
        assert g.x.dtype == g.edge_index.dtype == g.edge_attr.dtype == torch.long
        assert g.x.shape == (n, 9) and g.edge_index.shape == (2, e) and g.edge_attr.shape == (e, 3)
        assert e > 0 and int(g.edge_index.max()) < n
        assert g.y_graph.dtype == g.y_node.dtype == torch.float32
        assert g.y_graph.shape == (1, g_cols) and g.y_node.shape == (n, n_cols)
        assert isinstance(g.smiles, str)
    assert dataset.num_node_features == 9 and dataset.num_edge_features == 3


def test_labels_present_and_in_range(dataset):
    for task in dataset.tasks:
        values = task_values(dataset, task)
        known = values[~torch.isnan(values)]
        assert known.numel() > 0.5 * values.numel(), task.name
        assert torch.isfinite(known).all(), task.name
        if task.kind == "binary":
            assert set(known.unique().tolist()) <= {0.0, 1.0}, task.name
            assert 0 < known.mean() < 1, task.name
        elif task.kind == "multiclass":
            assert set(known.unique().tolist()) <= set(map(float, range(task.num_outputs))), task.name
        else:
            assert known.std() > 0, task.name


def test_graph_equals_smiles2graph(dataset):
    for g in all_graphs(dataset)[:: LIMIT // 5]:
        ref = smiles2graph(g.smiles)
        assert torch.equal(g.x, torch.from_numpy(ref["node_feat"]))
        assert torch.equal(g.edge_index, torch.from_numpy(ref["edge_index"]))
        assert torch.equal(g.edge_attr, torch.from_numpy(ref["edge_feat"]))


@pytest.mark.parametrize("graph_task, node_task", [("logp", "crippen_logp"), ("tpsa", "tpsa_atom")])
def test_declared_node_sums_hold_on_the_labels(dataset, graph_task, node_task):
    whole = next(t for t in dataset.tasks if t.name == graph_task)
    atoms = next(t for t in dataset.tasks if t.name == node_task)
    assert whole.extra["sum_of"] == node_task  # what model.pool: auto reads out as a sum (NodeSumHead)
    polar = 0
    for g in all_graphs(dataset)[:50]:
        assert atoms.labels(g).sum().item() == pytest.approx(whole.labels(g).item(), abs=1e-3)
        polar += int((atoms.labels(g) != 0).sum())
    assert polar > 50  # not a column of zeros


def test_target_stats_for_regression_tasks(dataset):
    stats = dataset.info["target_stats"]
    assert set(stats) == {t.name for t in dataset.tasks if t.kind == "regression"}
    for name, s in stats.items():
        assert math.isfinite(s["mean"]) and s["std"] > 0 and s["count"] > 0, name
    assert dataset.info["recipe_hash"] in dataset.info["cache_file"]


def test_second_load_hits_cache(dataset, cache_dir, monkeypatch):
    def no_build(limit=None):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(mol_mod, "build_payload", no_build)
    again = load_embedded(cache_dir, limit=LIMIT)
    assert again.info["from_cache"] and again.info["cache_file"] == dataset.info["cache_file"]
    a, b = all_graphs(dataset)[3], all_graphs(again)[3]
    assert a.smiles == b.smiles and torch.equal(a.x, b.x)
    assert torch.equal(a.y_node.nan_to_num(-99.0), b.y_node.nan_to_num(-99.0))
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_cache_file_is_plain_tensors(dataset):
    payload = torch.load(dataset.info["cache_file"], weights_only=True)
    assert payload["recipe_hash"] == dataset.info["recipe_hash"]
    assert payload["node_ptr"][-1] == payload["x"].size(0)


def test_recipe_change_renames_cache_and_rebuilds(tmp_path, monkeypatch):
    first = mol_mod.cache_path(tmp_path, limit=10)
    assert mol_mod.cache_path(tmp_path, limit=11) != first
    monkeypatch.setattr(mol_mod, "RECIPE_VERSION", mol_mod.RECIPE_VERSION + 1)
    bumped = mol_mod.cache_path(tmp_path, limit=10)
    assert bumped != first
    ds = load_embedded(tmp_path, limit=10)
    assert not ds.info["from_cache"] and ds.info["cache_file"] == str(bumped) and bumped.is_file()


def test_corrupt_cache_is_rebuilt(tmp_path):
    path = mol_mod.cache_path(tmp_path, limit=10)
    path.write_bytes(b"not a torch file")
    ds = load_embedded(tmp_path, limit=10)
    assert not ds.info["from_cache"] and sum(len(v) for v in ds.splits.values()) == 10
    assert load_embedded(tmp_path, limit=10).info["from_cache"]


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(mol_mod.CACHE_ENV, str(tmp_path))
    assert mol_mod.cache_path(limit=5).parent == tmp_path


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit_raises(limit, tmp_path):
    with pytest.raises(ValueError, match="limit"):
        load_embedded(tmp_path, limit=limit)


def test_unparseable_and_bondless_molecules_are_skipped(tmp_path, monkeypatch):
    smi = tmp_path / "mini.smi"
    smi.write_text("CCO\t1\nC1CC\t2\n[Na+]\t3\nc1ccccc1O\t4\n\n")
    monkeypatch.setattr(mol_mod, "SMILES_FILE", smi)
    ds = load_embedded(tmp_path / "cache")
    assert ds.info["counts"] == {"read": 4, "kept": 2, "skipped": 2}
    reasons = {s["id"]: s["reason"] for s in ds.info["skipped"]}
    assert reasons == {"2": "unparseable", "3": "no_atoms_or_bonds"}
