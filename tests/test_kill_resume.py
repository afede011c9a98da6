"""A run killed with SIGKILL at chosen points of its writes, then resumed with ``--resume``, leaves the same files as
an unbroken run (timing values aside): logs cut back to the checkpoint, best.pt and last.pt in agreement, no stray
temporary files.

The killed runs are real processes: a small launcher wraps one of the package's write functions so that the
process sends itself SIGKILL at the n-th call (before it, after it, or half-way through a checkpoint's bytes).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graph_mtl.cli import main
from graph_mtl.engine.checkpoint import load_checkpoint

SMILES = [
    "CCO", "CCN", "CCCl", "c1ccccc1", "c1ccccc1O", "CC(=O)O", "CC(=O)N", "CCOC", "C1CCCCC1", "c1ccncc1",
    "CC(C)O", "OCCO", "CCCC", "CCC(=O)O", "c1ccc(Cl)cc1", "NCCN", "CC#N", "C=CC", "COC(=O)C", "c1ccoc1",
    "CCS", "CSC", "CCBr", "FC(F)F", "c1ccc2ccccc2c1", "CC(N)C(=O)O", "OC1CCCCC1", "CCCCCO", "CNC", "ClCCl",
]

# the launcher: ``python -c LAUNCHER POINT N ARGS...`` dies at the N-th call of the write named by POINT
LAUNCHER = r"""
import os, signal, sys
import graph_mtl.engine.checkpoint as checkpoint
import graph_mtl.engine.monitor as monitor
import graph_mtl.engine.trainer as trainer
import graph_mtl.run as run
from graph_mtl.cli import main

point, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def wrap(owner, name, when):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and when == "before":
            die()
        result = original(*args, **kwargs)
        if calls[0] == n and when == "after":
            die()
        return result
    setattr(owner, name, wrapper)

if point == "half-checkpoint":  # the n-th torch.save of a checkpoint: a few bytes in its temporary file, then death
    original_save = checkpoint.torch.save
    def save(obj, handle, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            handle.write(b"PK\x03\x04 half a checkpoint")
            handle.flush()
            die()
        return original_save(obj, handle, *args, **kwargs)
    checkpoint.torch.save = save
elif point == "steps-written":
    wrap(trainer.Trainer, "_write_steps", "after")
elif point == "checkpoint":  # before the n-th of best.pt / last.pt (best.pt first in an improving epoch)
    wrap(trainer, "atomic_save", "before")
elif point == "metrics":
    wrap(trainer, "atomic_write_text", "before")
elif point == "conflicts":
    wrap(monitor.ConflictMonitor, "flush", "after")
elif point == "results":
    wrap(run, "write_json", "before")
sys.exit(main(argv))
"""

# (point, n): where the run dies
KILL_POINTS = [
    ("steps-written", 3),  # epoch 3's step rows appended, its checkpoint not yet written
    ("checkpoint", 4),  # between best.pt and last.pt of epoch 2 (epochs 1, 2 improve): best.pt ahead of last.pt
    ("half-checkpoint", 3),  # half-way through a checkpoint's bytes: a stray temporary file
    ("metrics", 2),  # after last.pt of epoch 2, before its metrics.csv row
    ("conflicts", 5),  # mid-epoch, after a conflicts.jsonl record
    ("results", 1),  # after the last epoch, before results.json
]


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    path.write_text("smiles,size,ring\n" + "".join(f"{s},{len(s)},{int('1' in s)}\n" for s in SMILES))
    return path


def _args(csv_path: Path, out: Path) -> list[str]:
    sets = ["dataset=csv", f"csv={csv_path}", "data.split=random", "epochs=4", "model.hidden=16",
            "model.num_layers=2", "data.batch_size=4", "train.monitor_every=3", "train.progress=false"]
    return ["train", *[a for s in sets for a in ("--set", s)], "--out", str(out)]


@pytest.fixture(scope="module")
def unbroken(tiny_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    assert main(_args(tiny_csv, out)) == 0
    return out


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def _table(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(path.open())]


def _checkpoint(path: Path) -> dict:
    state = load_checkpoint(path)
    return {"model": state["model"], "history": _without_seconds(state["history"]),
            **{k: state[k] for k in ("epoch", "step", "best_epoch", "best_score", "bad_epochs")}}


def _assert_same_run(run: Path, reference: Path) -> None:
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert (run / "steps.csv").read_text() == (reference / "steps.csv").read_text()
    assert _table(run / "metrics.csv") == _table(reference / "metrics.csv")
    got, want = ([_without_seconds(json.loads(x)) for x in (r / "conflicts.jsonl").read_text().splitlines()]
                 for r in (run, reference))
    assert got == want
    assert _without_seconds(json.loads((run / "results.json").read_text())) == \
        _without_seconds(json.loads((reference / "results.json").read_text()))
    for name in ("best.pt", "last.pt"):
        got, want = _checkpoint(run / name), _checkpoint(reference / name)
        for key in want["model"]:
            assert torch.equal(got["model"][key], want["model"][key]), (name, key)
        assert {k: v for k, v in got.items() if k != "model"} == {k: v for k, v in want.items() if k != "model"}, name
    assert _checkpoint(run / "best.pt")["epoch"] == _checkpoint(run / "last.pt")["best_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("point, n", KILL_POINTS, ids=[f"{p}-{n}" for p, n in KILL_POINTS])
def test_killed_and_resumed_run_equals_an_unbroken_one(point, n, tiny_csv, unbroken, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, point, str(n), *_args(tiny_csv, out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])  # died by SIGKILL where asked
    if point == "half-checkpoint":
        assert any(p.name.endswith(".tmp") for p in out.iterdir())
    assert main([*_args(tiny_csv, out), "--resume"]) == 0
    _assert_same_run(out, unbroken)
