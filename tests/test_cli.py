"""The graph-mtl command: once in a subprocess, as a user runs it, the rest in-process (faster)."""

import json
import subprocess
import sys

import pytest

from graph_mtl.cli import main

TINY = ["--set", "dataset=sbm", "--set", "data.limit=120", "--set", "conv=gin", "--set", "model.hidden=16",
        "--set", "model.num_layers=2", "--set", "epochs=2", "--set", "train.progress=false"]


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "graph_mtl.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_train_writes_the_run_folder_and_prints_the_table(tmp_path):
    out = tmp_path / "run"
    proc = _run("train", *TINY, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "baseline" in proc.stdout and "block" in proc.stdout
    for name in ("config.yaml", "metrics.csv", "steps.csv", "results.json", "best.pt", "last.pt"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_run"] == 2 and set(results["test"]["per_task"]) == set(results["tasks"])


def test_resume_continues_to_more_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["train", *TINY, "--set", "epochs=3", "--out", str(out), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["epochs_run"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'"),
        (["--set", "dataset=nope"], "data.name: unknown dataset 'nope'"),
        (["--set", "balancer=nope"], "train.balancer: unknown 'nope'"),
        (["--config", "missing.yaml"], "--config: file 'missing.yaml' does not exist"),
        (["--set", "dataset=sbm", "--set", "data.limit=100", "--set", "conv=gine"], "'gine' needs edge features"),
        ([*TINY, "--set", "data.tasks=[nope]"], "data.tasks: ['nope'] not in dataset"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError):
        main(["train", "--debug", "--set", "dataset=nope", "--out", str(tmp_path / "r")])


def test_list_names_datasets_encoders_and_balancers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("embedded", "sbm", "gine", "pna", "attention", "ew"):
        assert word in out
