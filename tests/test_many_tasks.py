"""Hundreds of tasks: any label name, a bounded console log, full per-task files, start-up that scales."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from graph_mtl.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from many_tasks import column_names, many_task_molecules  # noqa: E402

from tests.test_csv_dataset import SMILES  # noqa: E402

#: ToxCast-like names a module name cannot hold: dots, spaces, a comma, a quote, unicode
ODD = ["NVS_GPCR_hDRD4.4", "assay x.7 ratio", "Tox, 21 \"up\"", "Δ-logP", "training"]


def _toxcast_like_csv(path: Path, num_tasks: int = 617) -> list[str]:
    """A CSV of the test molecules (twice) with ``num_tasks`` sparse binary columns, 71 % of the labels missing."""
    names = ODD + column_names(num_tasks - len(ODD))
    rng = np.random.default_rng(0)
    smiles = SMILES * 2
    labels = rng.integers(0, 2, (len(smiles), num_tasks)).astype(float)
    labels[rng.random(labels.shape) < 0.71] = np.nan
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["smiles", *names])
        for s, row in zip(smiles, labels):
            writer.writerow([s, *["" if np.isnan(v) else int(v) for v in row]])
    return names


@pytest.fixture
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_617_tasks_with_dotted_and_spaced_names_train_end_to_end(tmp_path, capsys, restore_threads):
    import torch

    names = _toxcast_like_csv(tmp_path / "toxcast.csv")
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--quiet", "--set", "data.name=csv",
                 "--set", f"data.csv={tmp_path / 'toxcast.csv'}", "--set", "data.split=random",
                 "--set", "data.batch_size=32", "--set", "epochs=1", "--set", "model.hidden=8",
                 "--set", "model.num_layers=1", "--set", "model.head_layers=1", "--set", "train.threads=1",
                 "--set", "balancer=pcgrad", "--set", "grad_mode=rep"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    assert torch.get_num_threads() == 1  # train.threads
    assert len(printed.splitlines()) < 20  # a summary, not 617 rows
    assert "617 tasks on test" in printed and "beat their trivial baseline" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == names  # the original names, in order
    assert set(results["test"]["per_task"]) == set(names)
    full = (out / "per_task_test.txt").read_text().splitlines()
    assert sum(line.startswith("NVS_GPCR_hDRD4.4 ") for line in full) == 1 and len(full) >= 617 + 2
    with (out / "metrics.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert f"valid/{ODD[2]}" in header and f"train_loss/{ODD[0]}" in header
    state = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert any(key.startswith("grouped.") for key in state["model"])  # 617 one-output tasks: grouped heads
    code = main(["predict", str(out), "--input", str(tmp_path / "toxcast.csv"), "--out", str(tmp_path / "p.csv")])
    assert code == 0
    with (tmp_path / "p.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * len(SMILES) and all(0.0 <= float(rows[0][name]) <= 1.0 for name in names[:5])
    # a run written before heads were grouped automatically (separate heads) still loads for predictions
    from graph_mtl.config import from_dict
    from graph_mtl.engine.metadata import task_from_dict
    from graph_mtl.inference import load_run
    from graph_mtl.run import model_from_inputs

    meta = state["metadata"]
    old_model = from_dict(meta["config"]).model
    old_model.grouped_heads = False
    separate = model_from_inputs(old_model, meta["model_inputs"], [task_from_dict(t) for t in meta["tasks"]])
    torch.save({**state, "model": separate.state_dict()}, tmp_path / "old.pt")
    loaded = load_run(tmp_path / "old.pt")
    assert loaded.model.grouped is None and len(loaded.model.heads) == 617


def test_a_gradient_balancer_on_one_task_names_the_task_view():
    from graph_mtl.config import TrainConfig
    from graph_mtl.run import build_balancer

    with pytest.raises(ValueError, match=r"^train.balancer: 'pcgrad' .* data.task_view: columns"):
        build_balancer(TrainConfig(balancer="pcgrad"), ["tox21"])
    assert build_balancer(TrainConfig(balancer="ew"), ["tox21"]) is not None


def test_threads_key_is_checked():
    from graph_mtl.config import ConfigError, load_config

    assert load_config(None, ["train.threads=2"]).train.threads == 2
    with pytest.raises(ConfigError, match="train.threads: must be >= 1"):
        load_config(None, ["train.threads=0"])


def test_start_up_collects_labels_without_a_graph_by_task_loop():
    """Trainer start-up at 617 tasks on 800 molecules: about a second (the old per-graph x per-task loop took 10x
    the time); a loose bound, so a busy machine does not fail it."""
    import time

    from graph_mtl.tasks import collect_labels

    dataset = many_task_molecules(1000, 617)
    started = time.perf_counter()
    labels = collect_labels(dataset.tasks, dataset.splits["train"])
    assert time.perf_counter() - started < 3.0
    assert len(labels) == 617 and labels[dataset.tasks[0].name].shape == (800, 1)
    missing = float(np.mean([np.isnan(y.numpy()).mean() for y in labels.values()]))
    assert missing == pytest.approx(0.71, abs=0.02)
