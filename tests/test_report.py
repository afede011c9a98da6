"""The run report: plots and report.md from the files of a real (tiny) run, and the ``report`` command."""

import json
import re
import shutil

import pytest

from graph_mtl.cli import main
from graph_mtl.config import Config, DataConfig, ModelConfig, TrainConfig
from graph_mtl.report import read_conflicts, write_report
from graph_mtl.run import train

PNG = b"\x89PNG\r\n\x1a\n"
CONFLICT_PLOTS = {"cosine_mean.png", "cosine_last_epoch.png", "conflict_rate.png"}


def _images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_report_of_a_monitored_run(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("graph_mtl.run.load_dataset", lambda cfg: tiny_dataset)
    config = Config(device="cpu", data=DataConfig(batch_size=5),
                    model=ModelConfig(conv="gine", hidden=16, num_layers=2, dropout=0.0),
                    train=TrainConfig(epochs=2, progress=False, balancer="dwa", monitor_every=1))
    run = tmp_path / "run"
    results = train(config, run, log=lambda _: None)
    assert results["conflicts"]["observations"] == 8
    assert len(read_conflicts(run / "conflicts.jsonl")) == 8
    assert json.loads((run / "results.json").read_text())["conflicts"]["mode"] == "rep"

    path = write_report(run)
    assert path == run / "report" / "report.md"
    text = path.read_text()
    linked = _images(text)
    pngs = sorted(p.name for p in (run / "report").glob("*.png"))
    assert sorted(linked) == pngs
    assert {"train_loss.png", "valid_metrics.png", "weights.png"} | CONFLICT_PLOTS <= set(pngs)
    for name in pngs:
        data = (run / "report" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, name
    assert "baseline" in text and "```text" in text  # the test table
    assert "Pairs that conflict most often" in text and " / " in text

    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(path)

    # without the monitor's file the conflict plots are skipped, with a line saying so
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("conflicts.jsonl", "report", "*.pt"))
    text = write_report(bare).read_text()
    assert "conflicts.jsonl is missing" in text
    assert not CONFLICT_PLOTS & set(_images(text))
    assert all((bare / "report" / name).is_file() for name in _images(text))


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no metrics.csv; pass a run folder written by `graph-mtl train`"):
        write_report(empty)
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "graph-mtl train" in err and str(empty) in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_quiet_turns_the_progress_bar_off(tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, out, resume=None, overwrite=False):
        seen["progress"] = config.train.progress
        raise ValueError("stop here")

    monkeypatch.setattr("graph_mtl.run.train", fake_train)
    assert main(["train", "--quiet", "--out", str(tmp_path / "r")]) == 2
    assert seen["progress"] is False
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert seen["progress"] is True
