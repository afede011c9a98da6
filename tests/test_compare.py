"""graph-mtl compare: the delta-m formula, reuse and resume of run folders, baselines file, main task, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import graph_mtl.run
from graph_mtl.cli import main
from graph_mtl.compare import compare, delta_m, make_plan, read_baselines, run_configs
from graph_mtl.config import load_config

FIXTURE = Path(__file__).parent / "fixtures" / "qm9pack"
#: QM9 fixture (9 molecules: 7 train, 1 valid, 1 test), two tasks, a one-round NNConv, one epoch
TINY = [f"data.root={FIXTURE}", "dataset=qm9", "data.source=qm9pack", "data.tasks=[mu, alpha]", "conv=nnconv",
        "model.pool=set2set", "model.hidden=8", "model.num_layers=1", "epochs=1", "data.batch_size=4"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPH_MTL_CACHE", str(tmp_path / "cache"))


def test_delta_m_against_a_hand_computation():
    """MAE 1.1 vs 1.0: +10% worse; ROC-AUC 0.9 vs 0.8 (higher is better): -12.5%, i.e. better; mean -1.25%."""
    values = {"err": 1.1, "auc": 0.9}
    baselines = {"err": 1.0, "auc": 0.8}
    assert delta_m(values, baselines, {"err": False, "auc": True}) == pytest.approx(-1.25)
    assert delta_m(values, {"auc": 0.8}, {"err": False, "auc": True}) == pytest.approx(-12.5)  # main task only
    assert delta_m(baselines, baselines, {"err": False, "auc": True}) == 0.0
    with pytest.raises(ValueError, match="0"):
        delta_m(values, {"err": 0.0}, {"err": False})


def test_compare_reuses_finished_runs_and_resumes_an_interrupted_one(tmp_path, monkeypatch):
    config = load_config(None, TINY)
    out = tmp_path / "cmp"
    first = compare(config, ["ew", "pcgrad"], [0], out, log=lambda _: None)
    for name in ("compare.md", "compare.csv", "compare.json", "compare.png"):
        assert (out / name).is_file()
    assert set(first["balancers"]) == {"ew", "pcgrad"} and set(first["baselines"]) == {"mu", "alpha"}
    (out / "ew" / "seed0" / "results.json").unlink()  # interrupted after its last checkpoint
    written = out / "pcgrad" / "seed0" / "config.yaml"  # written by a version without a key added since
    older = yaml.safe_load(written.read_text())
    del older["model"]["grouped_heads"]
    written.write_text(yaml.safe_dump(older))
    calls = []
    real = graph_mtl.run.train

    def spy(cfg, folder, resume=None, log=print):
        calls.append((Path(folder), resume))
        return real(cfg, folder, resume=resume, log=log)

    monkeypatch.setattr(graph_mtl.run, "train", spy)
    again = compare(config, ["ew", "pcgrad"], [0], out, log=lambda _: None)
    assert calls == [(out / "ew" / "seed0", out / "ew" / "seed0" / "last.pt")]
    assert again["balancers"]["pcgrad"] == first["balancers"]["pcgrad"]
    assert again["balancers"]["ew"]["delta_m"]["mean"] == pytest.approx(first["balancers"]["ew"]["delta_m"]["mean"])
    other = load_config(None, [*TINY, "model.hidden=16"])
    with pytest.raises(ValueError, match="another config"):
        compare(other, ["ew"], [0], out, log=lambda _: None)


def test_baselines_file_and_main_task_skip_single_task_training(tmp_path, monkeypatch, capsys):
    baselines = tmp_path / "base.csv"
    baselines.write_text("task,value\nmu,2.0\n")
    assert read_baselines(baselines) == {"mu": 2.0}
    code = main(["compare", *[a for s in TINY for a in ("--set", s)], "--balancers", "ew", "--seeds", "0,1",
                 "--baselines", str(baselines), "--main-task", "mu", "--out", str(tmp_path / "c")])
    assert code == 0
    assert not (tmp_path / "c" / "single").exists()
    summary = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert summary["reference"] == ["mu"] and summary["baselines"] == {"mu": 2.0}
    ew = summary["balancers"]["ew"]
    assert ew["delta_m"]["mean"] == pytest.approx(100 * (ew["tasks"]["mu"]["mean"] - 2.0) / 2.0)
    assert "Δm%" in capsys.readouterr().out


def test_parallel_jobs_train_the_same_runs_as_one_job(tmp_path):
    """--jobs 2: every run in its own process, its console in OUT/logs, the same results as one job at a time."""
    config = load_config(None, [*TINY, "train.threads=1"])
    lines: list[str] = []
    one = compare(config, ["ew", "pcgrad"], [0], tmp_path / "one", log=lambda _: None)
    two = compare(config, ["ew", "pcgrad"], [0], tmp_path / "two", log=lines.append, jobs=2)
    assert sorted(p.name for p in (tmp_path / "two" / "logs").iterdir()) == [
        "ew-seed0.log", "pcgrad-seed0.log", "single-task__alpha-seed0.log", "single-task__mu-seed0.log"]
    assert sum("done in" in line for line in lines) == 4
    for name in ("ew", "pcgrad"):
        assert two["balancers"][name]["delta_m"]["mean"] == pytest.approx(one["balancers"][name]["delta_m"]["mean"],
                                                                          rel=1e-5, abs=1e-8)
    assert two["baselines"] == pytest.approx(one["baselines"], rel=1e-5)
    again = compare(load_config(None, TINY), ["ew", "pcgrad"], [0], tmp_path / "two", log=lines.append)
    assert again["balancers"]["ew"] == two["balancers"]["ew"]  # --jobs set train.threads; the runs are reused


def test_grad_mode_goes_to_the_methods_that_take_it(tmp_path):
    """train.grad_mode rep: pcgrad runs in rep; ew (a loss weighting) and dbmtl (per-parameter state) keep theirs."""
    config = load_config(None, [*TINY, "train.grad_mode=rep"])
    runs = run_configs(make_plan(config, ["ew", "pcgrad", "dbmtl"], [0], tmp_path))
    assert {name: cfg.train.grad_mode for (name, _), (_, cfg) in runs.items()} == {
        "single-task/mu": None, "single-task/alpha": None, "ew": None, "pcgrad": "rep", "dbmtl": None}


@pytest.mark.parametrize("args, message", [
    (["--balancers", "ew,nope"], "--balancers"),
    (["--balancers", "ew", "--jobs", "0"], "--jobs"),
    (["--balancers", "ew", "--main-task", "nope"], "--main-task"),
    (["--balancers", "ew", "--baselines", "missing.json"], "--baselines"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, args, message):
    code = main(["compare", *[a for s in TINY for a in ("--set", s)], *args, "--out", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
