"""OGB molecular datasets read offline from a scratch copy of ../shared/data, OGB's evaluator, the presets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from graph_mtl.config import DataConfig, load_config
from graph_mtl.data.ogb_mol import load_ogb_mol, ogb_summary, open_ogb_dataset
from graph_mtl.data.registry import load_dataset
from graph_mtl.engine.metrics import evaluate_tasks

SHARED = Path(os.environ.get("GRAPH_MTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def scratch_copy(tmp_path_factory, folder: str) -> Path:
    """A scratch root holding a copy of ``SHARED/folder`` (the loaders write ``processed/`` next to ``raw/``)."""
    source = SHARED / folder
    if not source.is_dir():
        pytest.skip(f"{source} is absent: the offline OGB copies live in ../shared/data (or $GRAPH_MTL_SHARED_DATA)")
    root = tmp_path_factory.mktemp("ogb")
    shutil.copytree(source, root / folder)
    return root


@pytest.fixture(scope="module")
def tox21_root(tmp_path_factory) -> Path:
    return scratch_copy(tmp_path_factory, "ogbg_moltox21")


@pytest.fixture(scope="module")
def tox21(tox21_root):
    return load_ogb_mol("ogbg-moltox21", tox21_root)


def test_tox21_loads_offline_with_ogb_split_and_column_tasks(tox21):
    assert [t.name for t in tox21.tasks][:3] == ["NR-AR", "NR-AR-LBD", "NR-AhR"]
    assert len(tox21.tasks) == 12 and all(t.kind == "binary" and t.metric == "rocauc" for t in tox21.tasks)
    assert {k: len(v) for k, v in tox21.splits.items()} == {"train": 6264, "valid": 783, "test": 784}
    assert abs(tox21.info["missing_label_fraction"] - 0.1705) < 1e-3
    graph = tox21.splits["train"][0]
    assert graph.x.dtype == torch.long and graph.x.shape[1] == 9 and graph.edge_attr.shape[1] == 3
    assert graph.y_graph.shape == (1, 12)


def test_multilabel_view_is_one_task(tox21_root):
    data = load_dataset(DataConfig(name="ogbg-moltox21", root=str(tox21_root), task_view="multilabel", limit=50))
    (task,) = data.tasks
    assert task.name == "tox21" and task.kind == "multilabel" and task.num_outputs == 12


def test_ogb_torch_load_issue_is_handled(tmp_path_factory):
    """ogb 1.3.6 cannot read its own processed file on torch >= 2.6 (weights_only); our loader can, twice."""
    from ogb.graphproppred import PygGraphPropPredDataset

    root = scratch_copy(tmp_path_factory, "ogbg_molbace")
    first = open_ogb_dataset("ogbg-molbace", root)  # processes, then loads the processed file
    second = open_ogb_dataset("ogbg-molbace", root)  # reads the processed file only
    assert len(first) == len(second) == 1513
    try:
        PygGraphPropPredDataset(name="ogbg-molbace", root=str(root))
    except Exception as err:  # the upstream bug, as long as it exists
        assert "weights_only" in str(err) or "Unsupported global" in str(err)
    # and nothing was allow-listed globally by our loader
    from torch_geometric.data.data import DataEdgeAttr
    assert DataEdgeAttr not in torch.serialization.get_safe_globals()


def test_ogb_evaluator_agrees_with_our_metric_on_random_predictions(tox21):
    rng = np.random.default_rng(0)
    graphs = tox21.splits["valid"]
    labels = torch.cat([g.y_graph for g in graphs]).numpy()
    y_true = {t.name: labels[:, t.columns[0]] for t in tox21.tasks}
    y_pred = {t.name: rng.normal(size=len(graphs)) for t in tox21.tasks}
    ours = evaluate_tasks(tox21.tasks, y_true, y_pred)["per_task"]
    summary = ogb_summary("ogbg-moltox21", tox21.tasks, y_true, y_pred)
    assert summary["ogb/rocauc"] == pytest.approx(np.mean([v for v in ours.values() if v is not None]), abs=1e-9)
    assert summary["ogb/skipped_columns"] == [i for i, t in enumerate(tox21.tasks) if ours[t.name] is None]


def test_ogb_score_on_a_column_subset_is_ogbs_metric_on_those_columns(tox21):
    rng = np.random.default_rng(1)
    graphs = tox21.splits["valid"]
    labels = torch.cat([g.y_graph for g in graphs]).numpy()
    subset = tox21.tasks[2:7]
    y_true = {t.name: labels[:, t.columns[0]] for t in subset}
    y_pred = {t.name: rng.normal(size=len(graphs)) for t in subset}
    ours = [v for v in evaluate_tasks(subset, y_true, y_pred)["per_task"].values() if v is not None]
    summary = ogb_summary("ogbg-moltox21", subset, y_true, y_pred)
    assert summary["ogb/rocauc"] == pytest.approx(np.mean(ours), abs=1e-9)  # a number, not a silent nan
    assert summary["ogb/columns"] == "5 of 12 (data.tasks)"


def test_half_made_dataset_folder_is_named_and_stdin_never_read(tmp_path, monkeypatch):
    import builtins

    def read_stdin(*args):
        raise AssertionError("stdin read")

    monkeypatch.setattr(builtins, "input", read_stdin)
    (tmp_path / "ogbg_molbbbp" / "raw").mkdir(parents=True)  # what a failed download used to leave behind
    with pytest.raises(ValueError, match=r"^data.root: .*ogbg_molbbbp is a half-made OGB dataset folder") as err:
        load_ogb_mol("ogbg-molbbbp", tmp_path)
    assert "\n" not in str(err.value)


def test_missing_dataset_offline_is_a_one_line_error(tmp_path, monkeypatch):
    import ogb.graphproppred.dataset_pyg as dataset_pyg

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(dataset_pyg, "download_url", offline)
    with pytest.raises(ValueError, match=r"^data.root: ogbg-molbbbp is neither under .* nor downloadable") as err:
        load_ogb_mol("ogbg-molbbbp", tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "ogbg_molbbbp").exists()  # nothing half-made left for the next run to trip on


def test_ogb_baseline_preset_and_overrides():
    config = load_config(None, ["preset=ogb-baseline", "data.name=ogbg-moltox21", "train.epochs=3"])
    assert (config.model.conv, config.model.hidden, config.model.num_layers) == ("gine", 300, 5)
    assert config.model.virtual_node and config.model.dropout == 0.5 and config.data.batch_size == 32
    assert config.data.task_view == "multilabel" and config.train.lr == 1e-3
    assert config.train.epochs == 3  # the user's value wins over the preset's 100


def test_ogb_cpu_preset_is_the_ogb_model_narrower_with_the_cpu_schedule():
    config = load_config(None, ["preset=ogb-cpu", "data.name=ogbg-moltox21"])
    baseline = load_config(None, ["preset=ogb-baseline", "data.name=ogbg-moltox21"])
    assert config.model.hidden == 128 and config.data.batch_size == 64 and config.data.task_view == "columns"
    assert (config.train.epochs, config.train.scheduler, config.train.warmup_epochs) == (60, "cosine", 2)
    assert config.train.ema_decay == 0.999
    for key in ("conv", "num_layers", "virtual_node", "dropout", "pool", "head_layers", "residual"):
        assert getattr(config.model, key) == getattr(baseline.model, key), key
    assert load_config(None, ["preset=ogb-cpu", "train.ema_decay=null"]).train.ema_decay is None


def test_unknown_preset_is_a_config_error():
    from graph_mtl.config import ConfigError

    with pytest.raises(ConfigError, match="preset: unknown preset 'ogb'"):
        load_config(None, ["preset=ogb"])


def test_cli_seeds_on_tox21_report_mean_and_std_with_the_ogb_score(tox21_root, tmp_path, capsys):
    from graph_mtl.cli import main

    code = main(["train", "--out", str(tmp_path / "run"), "--seeds", "0,1",
                 "--set", "preset=ogb-baseline", "--set", "data.name=ogbg-moltox21",
                 "--set", f"data.root={tox21_root}", "--set", "data.limit=60", "--set", "epochs=1",
                 "--set", "model.hidden=16", "--set", "model.num_layers=2", "--set", "train.progress=false"])
    assert code == 0
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["test"]["ogb/rocauc"]["values"]) == 2
    assert 0 <= summary["test"]["ogb/rocauc"]["mean"] <= 1 and summary["test"]["ogb/rocauc"]["std"] >= 0
    assert (tmp_path / "run" / "seed1" / "best.pt").is_file()
    assert "ogb/rocauc" in capsys.readouterr().out


def test_cli_bad_seeds_are_a_one_line_error(capsys):
    from graph_mtl.cli import main

    assert main(["train", "--seeds", "0,x"]) == 2
    assert "--seeds: expected distinct comma-separated integers" in capsys.readouterr().err


def test_ogb_graphs_carry_their_smiles_for_graph_features(tox21):
    from ogb.utils import smiles2graph

    for graph in (tox21.splits["train"][0], tox21.splits["test"][-1]):
        assert isinstance(graph.smiles, str) and smiles2graph(graph.smiles)["num_nodes"] == graph.num_nodes
