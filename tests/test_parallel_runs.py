"""train --seeds --jobs: seeds trained at once in their own processes give the one-at-a-time results, and the
folder is an ensemble for evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph_mtl.cli import main
from graph_mtl.config import load_config
from graph_mtl.inference import Ensemble, evaluate_split, load_run
from graph_mtl.parallel_runs import check_jobs, threads_per_run
from graph_mtl.run import train_seeds

FIXTURE = Path(__file__).parent / "fixtures" / "qm9pack"
#: QM9 fixture (9 molecules: 7 train, 1 valid, 1 test), two tasks, a one-round NNConv, one epoch
TINY = [f"data.root={FIXTURE}", "dataset=qm9", "data.source=qm9pack", "data.tasks=[mu, alpha]", "conv=nnconv",
        "model.pool=set2set", "model.hidden=8", "model.num_layers=1", "epochs=1", "data.batch_size=4",
        "train.progress=false"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPH_MTL_CACHE", str(tmp_path / "cache"))


def test_parallel_seeds_equal_one_at_a_time_and_form_an_ensemble(tmp_path):
    config = load_config(None, [*TINY, "train.threads=1"])
    one = train_seeds(config, [0, 1], tmp_path / "one", log=lambda _: None)
    lines: list[str] = []
    two = train_seeds(config, [0, 1], tmp_path / "two", log=lines.append, jobs=2)
    assert sorted(p.name for p in (tmp_path / "two" / "logs").iterdir()) == ["seed0.log", "seed1.log"]
    assert "epoch   1/1" in (tmp_path / "two" / "logs" / "seed1.log").read_text()
    assert sum("done in" in line for line in lines) == 2
    for split in ("test", "valid"):
        assert two[split].keys() == one[split].keys()
        for key, entry in one[split].items():
            assert two[split][key]["mean"] == pytest.approx(entry["mean"], rel=1e-5, abs=1e-8), key
    for seed in (0, 1):  # each process trained its own seed
        written = json.loads((tmp_path / "two" / f"seed{seed}" / "results.json").read_text())
        assert written["test"] == json.loads((tmp_path / "one" / f"seed{seed}" / "results.json").read_text())["test"]
    ensemble = load_run(tmp_path / "two")  # the logs/ folder beside the seeds is not a member
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    assert set(evaluate_split(ensemble, "test")["per_task"]) == {"mu", "alpha"}


def test_jobs_values():
    assert check_jobs(3) == 3
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="--jobs"):
            check_jobs(bad)
    assert threads_per_run(10**6) == 1


@pytest.mark.parametrize("args", [["--jobs", "2"], ["--seeds", "0,1", "--jobs", "0"]])
def test_bad_jobs_is_a_one_line_error_before_any_run(tmp_path, capsys, args):
    out = tmp_path / "run"
    code = main(["train", *[a for s in TINY for a in ("--set", s)], *args, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--jobs" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
