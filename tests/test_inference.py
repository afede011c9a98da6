"""Using a trained run: ``graph-mtl predict / evaluate / embed`` and ``graph_mtl.load_run``.

One small CSV run (two seeds) and one small block-model run are trained once for the module."""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_csv_dataset import SMILES

import graph_mtl
from graph_mtl.cli import main
from graph_mtl.config import DataConfig
from graph_mtl.data.csv_dataset import load_csv
from graph_mtl.engine.metrics import evaluate_tasks
from graph_mtl.inference import metric_inputs

SMALL = ["--set", "model.hidden=16", "--set", "model.num_layers=2", "--set", "epochs=2", "--set",
         "data.batch_size=8", "--set", "train.progress=false"]
CSV_RUN = ["--set", "dataset=csv", "--set", "data.label_kinds={family: multiclass}", *SMALL]
README = Path(__file__).resolve().parents[1] / "README.md"


def _lines() -> list[str]:
    """The mixed CSV of test_csv_dataset: regression, binary with gaps, 3 classes, gappy regression."""
    lines = ["smiles,logp,active,family,extra"]
    for i, s in enumerate(SMILES):
        active = "" if i % 7 == 3 else str(i % 2)
        extra = "nan" if i % 4 == 0 else f"{-i / 3:.3f}"
        lines.append(f"{s},{0.1 * i - 1.5:.2f},{active},{i % 3},{extra}")
    return lines


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``csv``: a two-seed CSV run folder (``seed0``, ``seed1``); ``sbm``: a block-model run."""
    root = tmp_path_factory.mktemp("runs")
    data = root / "mols.csv"
    data.write_text("\n".join(_lines()) + "\n")
    assert main(["train", *CSV_RUN, "--set", f"csv={data}", "--seeds", "0,1", "--out", str(root / "csv")]) == 0
    assert main(["train", "--set", "dataset=sbm", "--set", "data.limit=120", "--set", "conv=gin", *SMALL,
                 "--out", str(root / "sbm")]) == 0
    return {"csv": root / "csv", "sbm": root / "sbm", "data": data}


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _test_rows(runs, tmp_path) -> tuple[Path, list]:
    """The run's test split as a CSV (the original lines, in split order) and its graphs."""
    dataset = load_csv(DataConfig(name="csv", csv=str(runs["data"]), label_kinds={"family": "multiclass"}))
    test = dataset.splits["test"]
    by_smiles = {line.split(",")[0]: line for line in _lines()[1:]}
    path = tmp_path / "test.csv"
    path.write_text("\n".join([_lines()[0], *(by_smiles[g.smiles] for g in test)]) + "\n")
    return path, test


def test_predictions_reproduce_the_test_metrics_of_results_json_exactly(runs, tmp_path):
    run = runs["csv"] / "seed0"
    results = json.loads((run / "results.json").read_text())
    test_csv, graphs = _test_rows(runs, tmp_path)
    assert main(["predict", str(run), "--input", str(test_csv), "--out", str(tmp_path / "p.csv")]) == 0
    rows = _read(tmp_path / "p.csv")
    assert [r["smiles"] for r in rows] == [g.smiles for g in graphs] and not any(r["error"] for r in rows)
    tasks = graph_mtl.load_run(run).tasks
    columns = {name: np.array([float(r[name]) for r in rows]) for name in rows[0] if name not in ("smiles", "error")}
    assert set(rows[0]) == {"smiles", "logp", "active", "family", "family/0", "family/1", "family/2", "extra",
                            "error"}
    assert all(0 < p < 1 for p in columns["active"]) and np.allclose(
        columns["family/0"] + columns["family/1"] + columns["family/2"], 1.0)
    assert np.array_equal(columns["family"], np.argmax(np.stack([columns[f"family/{c}"] for c in range(3)], 1), 1))
    true = {t.name: torch.cat([g.y_graph[:, t.columns] for g in graphs]).numpy() for t in tasks}
    scored = evaluate_tasks(tasks, true, {t.name: metric_inputs(t, columns) for t in tasks})
    assert scored["per_task"] == results["test"]["per_task"]  # exactly, not approximately

    assert main(["evaluate", str(run), "--split", "test", "--out", str(tmp_path / "split.json")]) == 0
    assert json.loads((tmp_path / "split.json").read_text()) == results["test"]
    assert main(["evaluate", str(run), "--input", str(test_csv), "--out", str(tmp_path / "file.json")]) == 0
    from_file = json.loads((tmp_path / "file.json").read_text())
    for key in ("per_task", "baseline", "gain", "loss", "mean_by_metric"):
        assert from_file[key] == results["test"][key], key


def test_a_seeds_folder_predicts_the_mean_and_std_of_its_seeds(runs, tmp_path):
    assert main(["predict", str(runs["csv"]), "--input", str(runs["data"]), "--out", str(tmp_path / "e.csv")]) == 0
    ensemble = _read(tmp_path / "e.csv")
    seeds = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}.csv"
        assert main(["predict", str(runs["csv"] / f"seed{seed}"), "--input", str(runs["data"]), "--out", str(out)]) == 0
        seeds.append(_read(out))
    assert len(ensemble) == len(SMILES)
    for name in ("logp", "active", "family/0", "family/1", "family/2", "extra"):
        values = np.array([[float(r[name]) for r in s] for s in seeds])
        assert np.allclose([float(r[name]) for r in ensemble], values.mean(0), rtol=1e-12, atol=0)
        assert np.allclose([float(r[f"{name}/std"]) for r in ensemble], values.std(0, ddof=1), rtol=1e-9, atol=1e-15)
    assert not np.allclose([float(r["logp/std"]) for r in ensemble], 0.0)  # the seeds do differ
    mean = np.array([[float(r[f"family/{c}"]) for c in range(3)] for r in ensemble])
    assert [int(r["family"]) for r in ensemble] == mean.argmax(1).tolist()


def test_unusable_smiles_get_an_error_in_their_row_and_nothing_shifts(runs, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,smiles\na,CCO\nb,not_a_smiles\nc,\nd,c1ccccc1\n")
    assert main(["predict", str(runs["csv"] / "seed0"), "--input", str(path), "--out", str(tmp_path / "p.csv")]) == 0
    rows = _read(tmp_path / "p.csv")
    assert [r["smiles"] for r in rows] == ["CCO", "not_a_smiles", "", "c1ccccc1"]
    assert [bool(r["error"]) for r in rows] == [False, True, True, False]
    assert "RDKit cannot parse" in rows[1]["error"] and rows[1]["logp"] == "" and rows[3]["logp"] != ""
    run = graph_mtl.load_run(runs["csv"] / "seed0")
    alone = run.predict(["c1ccccc1"]).graph["logp"][0]
    assert float(rows[3]["logp"]) == pytest.approx(alone, rel=1e-6)  # a row's value does not depend on the others


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"not a checkpoint at all")
    return path


def _edit(source: Path, target: Path, change) -> Path:
    state = torch.load(source, weights_only=False)
    change(state)
    torch.save(state, target)
    return target


@pytest.mark.parametrize("case, message", [
    ("invalid-smiles", "--input: none of the 2 SMILES"),
    ("empty-file", "--input: file .* is empty"),
    ("header-only", "has a header but no data row"),
    ("missing-column", "--smiles-column: column 'mol' is not in"),
    ("missing-file", "--input: file .* does not exist"),
    ("corrupted", "cannot be read as a checkpoint"),
    ("no-metadata", "has no run metadata"),
    ("other-format", "metadata format 99 .* reads format 1"),
    ("other-weights", "weights in .* do not fit the model"),
    ("seeds-of-other-datasets", "differ in their tasks"),
    ("node-run-with-smiles", "trained on 'sbm', which is not built from SMILES"),
    ("no-input", "predict: give --input FILE.csv or --split NAME"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(runs, tmp_path, capsys, case, message):
    good = tmp_path / "good.csv"
    good.write_text("smiles\nCCO\nc1ccccc1\n")
    best = runs["csv"] / "seed0" / "best.pt"
    run, args = str(best), ["--input", str(good)]
    if case == "invalid-smiles":
        (tmp_path / "bad.csv").write_text("smiles\nxyz\nC1CC\n")
        args = ["--input", str(tmp_path / "bad.csv")]
    elif case == "empty-file":
        (tmp_path / "bad.csv").write_text("")
        args = ["--input", str(tmp_path / "bad.csv")]
    elif case == "header-only":
        (tmp_path / "bad.csv").write_text("smiles\n")
        args = ["--input", str(tmp_path / "bad.csv")]
    elif case == "missing-column":
        args += ["--smiles-column", "mol"]
    elif case == "missing-file":
        args = ["--input", str(tmp_path / "nope.csv")]
    elif case == "corrupted":
        run = str(_corrupt(tmp_path / "x.pt"))
    elif case == "no-metadata":
        run = str(_edit(best, tmp_path / "x.pt", lambda s: s.pop("metadata")))
    elif case == "other-format":
        run = str(_edit(best, tmp_path / "x.pt", lambda s: s["metadata"].update(format=99)))
    elif case == "other-weights":
        run = str(_edit(best, tmp_path / "x.pt", lambda s: s["model"].pop(next(iter(s["model"])))))
    elif case == "seeds-of-other-datasets":
        for seed, source in ((0, best), (1, runs["sbm"] / "best.pt")):
            (tmp_path / "mixed" / f"seed{seed}").mkdir(parents=True)
            shutil.copy(source, tmp_path / "mixed" / f"seed{seed}" / "best.pt")
        run = str(tmp_path / "mixed")
    elif case == "node-run-with-smiles":
        run = str(runs["sbm"])
    elif case == "no-input":
        args = []
    out = tmp_path / "out.csv"
    assert main(["predict", run, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


@pytest.mark.parametrize("text, message", [
    ("smiles,logp\nCCO,1\n", r"lacks the label column\(s\) \['active', 'family', 'extra'\]"),
    ("smiles,logp,active,family,extra\nCCO,1,0,1,2\nxyz,1,0,1,2\n", "1 row.* have a SMILES the run cannot use .*line"
                                                                    "s 3"),
])
def test_evaluate_refuses_files_without_labels_or_with_invalid_smiles(runs, tmp_path, capsys, text, message):
    (tmp_path / "in.csv").write_text(text)
    out = tmp_path / "m.json"
    assert main(["evaluate", str(runs["csv"] / "seed0"), "--input", str(tmp_path / "in.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_embed_writes_one_row_per_input_and_atoms_on_request(runs, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("smiles\nCCO\nnot_a_smiles\nc1ccccc1\n")
    run = runs["csv"] / "seed0"
    assert main(["embed", str(run), "--input", str(path), "--out", str(tmp_path / "e.npy")]) == 0
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (3, 16) and np.isnan(emb[1]).all() and np.isfinite(emb[[0, 2]]).all()
    assert main(["embed", str(run), "--input", str(path), "--out", str(tmp_path / "e.npz"), "--nodes"]) == 0
    arrays = np.load(tmp_path / "e.npz")
    assert arrays["nodes"].shape == (3 + 6, 16)
    assert arrays["row"].tolist() == [0] * 3 + [2] * 6 and arrays["atom"].tolist() == [0, 1, 2, *range(6)]
    assert np.allclose(arrays["nodes"][:3].mean(0), emb[0], atol=1e-6)  # mean pooling of the atoms
    assert main(["embed", str(runs["csv"]), "--input", str(path), "--out", str(tmp_path / "x.npy")]) == 2


def test_node_dataset_predicts_a_split_and_evaluates_it_as_results_json(runs, tmp_path):
    results = json.loads((runs["sbm"] / "results.json").read_text())
    out = tmp_path / "nodes.csv"
    assert main(["predict", str(runs["sbm"]), "--split", "test", "--out", str(out)]) == 0
    rows = _read(out)
    assert len(rows) == 24 and {r["split"] for r in rows} == {"test"}  # 20% of 120 nodes
    assert {"node", "block", "cross_degree", "neighbour_mean"} <= set(rows[0])
    assert main(["predict", str(runs["sbm"]), "--split", "all", "--out", str(out)]) == 0
    assert [int(r["node"]) for r in _read(out)] == list(range(120))
    assert main(["evaluate", str(runs["sbm"]), "--split", "test", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["per_task"] == results["test"]["per_task"]


def test_checkpoint_metadata_is_plain_and_loads_with_weights_only(runs, tmp_path):
    state = torch.load(runs["csv"] / "seed0" / "best.pt", weights_only=False)
    kept = {key: state[key] for key in ("model", "scalers", "metadata")}
    torch.save(kept, tmp_path / "plain.pt")
    meta = torch.load(tmp_path / "plain.pt", weights_only=True)["metadata"]
    assert meta["graph_mtl_version"] == graph_mtl.__version__ and meta["featuriser"]["name"] == "ogb_smiles2graph"
    assert [t["name"] for t in meta["tasks"]] == ["logp", "active", "family", "extra"]
    loaded = graph_mtl.load_run(tmp_path / "plain.pt")
    assert loaded.predict(["CCO"]).graph["logp"].shape == (1,)


def _readme_block(tag: str) -> str:
    """The fenced block after ``<!-- tag -->`` in the README."""
    text = README.read_text()
    start = text.index(f"<!-- {tag} -->")
    return text[start:].split("```")[1].split("\n", 1)[1]


def test_readme_round_trip_runs_as_written(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(runs["data"], "molecules.csv")
    Path("new.csv").write_text("smiles\nCCO\nc1ccccc1O\n")
    for line in _readme_block("predict-round-trip").splitlines():
        if line.strip() and not line.startswith("#"):
            words = shlex.split(line.split(" #")[0])
            assert words[0] == "graph-mtl" and main(words[1:]) == 0, line
    namespace: dict = {}
    exec(_readme_block("predict-python"), namespace)  # noqa: S102 - the README's own example
    assert math.isfinite(namespace["preds"].graph["logp"][0]) and namespace["preds"].errors[2]


def test_atom_tasks_are_lists_per_row_or_one_row_per_atom(tmp_path):
    run = tmp_path / "emb"
    assert main(["train", "--set", "data.limit=60", "--set", f"data.root={tmp_path}", *SMALL, "--set", "epochs=1",
                 "--out", str(run)]) == 0
    path = tmp_path / "in.csv"
    path.write_text("smiles\nCCO\n[Cu+2]\nOc1ccccc1\n")
    assert main(["predict", str(run), "--input", str(path), "--out", str(tmp_path / "wide.csv")]) == 0
    wide = _read(tmp_path / "wide.csv")
    assert [len(json.loads(r["gasteiger"])) if r["gasteiger"] else 0 for r in wide] == [3, 0, 7]
    assert "outside the run's training elements" in wide[1]["error"] or "bond" in wide[1]["error"]
    assert set(json.loads(wide[2]["pharmacophore"])) <= {0, 1, 2, 3}
    out, atoms = tmp_path / "graphs.csv", tmp_path / "atoms.csv"
    assert main(["predict", str(run), "--input", str(path), "--out", str(out), "--node-out", str(atoms)]) == 0
    assert "gasteiger" not in _read(out)[0] and "logp" in _read(out)[0]
    long = _read(atoms)
    assert [(int(r["row"]), int(r["atom"])) for r in long] == [(0, a) for a in range(3)] + [(2, a) for a in range(7)]
    assert [float(r["gasteiger"]) for r in long[3:]] == json.loads(wide[2]["gasteiger"])
