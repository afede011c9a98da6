"""``load_csv``: a user CSV of SMILES and mixed regression / classification columns as a multi-task dataset."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import pytest
import torch

from graph_mtl.config import DataConfig, ModelConfig, TrainConfig
from graph_mtl.data.csv_dataset import load_csv
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_balancer, build_loaders, build_model

#: small molecules over several Bemis-Murcko scaffolds (acyclic, benzene, cyclohexane, pyridine, ...)
SMILES = [
    "C", "CC", "CCC", "CCCC", "CCCCC", "CCO", "CCN", "CC(=O)O", "OCCO", "CCCl",
    "c1ccccc1", "Cc1ccccc1", "Oc1ccccc1", "Nc1ccccc1", "Clc1ccccc1", "CCc1ccccc1", "OC(=O)c1ccccc1",
    "C1CCCCC1", "CC1CCCCC1", "OC1CCCCC1", "NC1CCCCC1",
    "c1ccncc1", "Cc1ccncc1", "Oc1ccncc1",
    "c1ccc2ccccc2c1", "Cc1ccc2ccccc2c1",
    "c1ccoc1", "Cc1ccoc1", "c1ccsc1",
    "C1CCNCC1", "CC1CCNCC1", "C1CCOC1", "C1CC1", "CC1CC1", "C1CCC1",
    "c1ccc(cc1)-c1ccccc1", "c1ccc(cc1)Cc1ccccc1", "O=C1CCCC1", "C1COCCN1", "c1cnc[nH]1",
]


def _write(tmp_path, text: str, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _mixed_csv(tmp_path, smiles=SMILES):
    """smiles, a regression column, a binary column with gaps, a 3-class column, a gappy regression column."""
    lines = ["smiles,logp,active,family,extra"]
    for i, s in enumerate(smiles):
        active = "" if i % 7 == 3 else str(i % 2)
        extra = "nan" if i % 4 == 0 else f"{-i / 3:.3f}"
        lines.append(f"{s},{0.1 * i - 1.5:.2f},{active},{i % 3},{extra}")
    return _write(tmp_path, "\n".join(lines) + "\n")


def _one_line_error(cfg: DataConfig, match: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match) as info:
            load_csv(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mixed_columns_load_with_kinds_nan_and_complete_splits(tmp_path):
    path = _mixed_csv(tmp_path)
    cfg = DataConfig(name="csv", csv=str(path), label_kinds={"family": "multiclass"})
    dataset = load_csv(cfg)

    assert dataset.node_features == "ogb"
    tasks = {t.name: t for t in dataset.tasks}
    assert [t.name for t in dataset.tasks] == ["logp", "active", "family", "extra"]
    assert {n: t.kind for n, t in tasks.items()} == {
        "logp": "regression", "active": "binary", "family": "multiclass", "extra": "regression"}
    assert {n: t.metric for n, t in tasks.items()} == {
        "logp": "rmse", "active": "rocauc", "family": "accuracy", "extra": "rmse"}
    assert tasks["family"].num_outputs == 3
    assert all(t.level == "graph" and t.target == "y_graph" for t in dataset.tasks)
    assert [t.columns for t in dataset.tasks] == [(0,), (1,), (2,), (3,)]

    graphs = [g for split in ("train", "valid", "test") for g in dataset.splits[split]]
    assert Counter(g.smiles for g in graphs) == Counter(SMILES)  # every valid row in exactly one split
    assert all(len(dataset.splits[s]) > 0 for s in ("train", "valid", "test"))
    by_smiles = {g.smiles: g for g in graphs}
    for i, s in enumerate(SMILES):
        g = by_smiles[s]
        assert g.y_graph.dtype == torch.float32 and g.y_graph.shape == (1, 4)
        assert g.x.dtype == torch.long and g.x.shape[1] == 9 and g.edge_attr.shape[1] == 3
        y = g.y_graph[0].tolist()
        assert y[0] == pytest.approx(0.1 * i - 1.5, abs=1e-5)
        assert math.isnan(y[1]) == (i % 7 == 3)
        assert y[2] == i % 3
        assert math.isnan(y[3]) == (i % 4 == 0)

    info = dataset.info
    assert info["source"] == str(path)
    assert (info["rows_read"], info["rows_kept"], info["rows_skipped"]) == (len(SMILES), len(SMILES), 0)
    assert info["columns"]["active"] == {"kind": "binary", "kind_from": "inferred",
                                         "labelled": sum(i % 7 != 3 for i in range(len(SMILES))),
                                         "missing": sum(i % 7 == 3 for i in range(len(SMILES)))}
    assert info["columns"]["family"]["kind_from"] == "label_kinds"


def test_label_columns_pick_and_label_kinds_override(tmp_path):
    path = _mixed_csv(tmp_path)
    cfg = DataConfig(name="csv", csv=str(path), label_columns=["active", "logp"],
                     label_kinds={"active": "regression"}, split="random", split_seed=3, limit=20)
    dataset = load_csv(cfg)
    assert [(t.name, t.kind) for t in dataset.tasks] == [("active", "regression"), ("logp", "regression")]
    graphs = [g for split in ("train", "valid", "test") for g in dataset.splits[split]]
    assert sorted(g.smiles for g in graphs) == sorted(SMILES[:20])  # limit: the first 20 valid rows
    assert [len(dataset.splits[s]) for s in ("train", "valid", "test")] == [16, 2, 2]
    again = load_csv(cfg)
    assert [g.smiles for g in again.splits["test"]] == [g.smiles for g in dataset.splits["test"]]


def test_invalid_smiles_rows_are_skipped_with_one_warning(tmp_path):
    text = "\n".join([
        "smiles,y",
        "CCO,1.0",
        "not_a_smiles,2.0",  # line 3
        "c1ccccc1,3.0",
        "C1CC,4.0",  # line 5: unclosed ring
        ",5.0",  # line 6: no SMILES
        "CCN,",
        "[Xx],6.0",  # line 8: unknown element
    ]) + "\n"
    path = _write(tmp_path, text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_csv(DataConfig(name="csv", csv=str(path), split="random"))
    messages = [str(w.message) for w in caught if "data.csv" in str(w.message)]
    assert len(messages) == 1
    assert "skipped 4 row(s)" in messages[0] and "lines 3, 5, 6, 8" in messages[0]
    assert (dataset.info["rows_read"], dataset.info["rows_kept"], dataset.info["rows_skipped"]) == (7, 3, 4)
    assert dataset.info["skipped_lines"] == [3, 5, 6, 8]
    kept = sorted(g.smiles for s in ("train", "valid", "test") for g in dataset.splits[s])
    assert kept == ["CCN", "CCO", "c1ccccc1"]


@pytest.mark.parametrize(
    "text, options, match",
    [
        (None, {}, r"^data\.csv: file '.*' does not exist"),
        ("", {}, r"^data\.csv: file '.*' is empty"),
        ("mol,y\nCCO,1\n", {}, r"^data\.smiles_column: column 'smiles' is not in .*\['mol', 'y'\]"),
        ("smiles,y\nCCO,1\n", {"label_columns": ["y", "z"]}, r"^data\.label_columns: \['z'\] not in"),
        ("smiles,y\nCCO,1\n", {"label_columns": ["smiles", "y"]}, r"^data\.label_columns: 'smiles' is the SMILES"),
        ("smiles\nCCO\n", {}, r"^data\.label_columns: .* has no column besides the SMILES column"),
        ("smiles,y\nCCO,1\n", {"label_kinds": {"z": "binary"}}, r"^data\.label_kinds: 'z' is not a label column"),
        ("smiles,y\nCCO,1\n", {"label_kinds": {"y": "ordinal"}}, r"^data\.label_kinds: kind 'ordinal' .* unknown"),
        ("smiles,y\nxyz,1\nC1CC,2\n", {}, r"^data\.csv: no valid row in .* \(2 read, 2 with invalid SMILES\)"),
        ("smiles,y\n", {}, r"^data\.csv: no valid row"),
        ("smiles,y,z\nCCO,1,\nCCN,2,nan\n", {}, r"^data\.label_columns: column 'z' has no value in any valid row"),
        ("smiles,y\nCCO,1\nCCN,abc\n", {}, r"^data\.label_columns: column 'y', line 3: 'abc' is not a finite"),
        ("smiles,y\nCCO,inf\n", {}, r"^data\.label_columns: column 'y', line 2: 'inf' is not a finite"),
        ("smiles,y\nCCO,1\nCCN,2\n", {"label_kinds": {"y": "binary"}}, r"^data\.label_kinds: .*'y' is binary"),
        ("smiles,y\nCCO,1\nCCN,1.5\n", {"label_kinds": {"y": "multiclass"}},
         r"^data\.label_kinds: .*'y' is multiclass but line 3 has 1\.5"),
        ("smiles,y\nCCO,1,2\n", {}, r"^data\.csv: line 2 .* has 3 fields but the header has 2"),
        ("smiles,y\nCCO,1\n", {"split": "stratified"}, r"^data\.split: unknown value 'stratified'"),
        ("smiles,y\nCCO,1\n", {"limit": 0}, r"^data\.limit: expected null or an int >= 1"),
    ],
    ids=["file-missing", "file-empty", "smiles-column-missing", "label-column-missing", "smiles-as-label",
         "no-label-column", "label-kinds-unknown-column", "label-kinds-bad-kind", "no-valid-row", "no-data-row",
         "column-without-values", "non-numeric-value", "infinite-value", "binary-with-2", "multiclass-with-1.5",
         "too-many-fields", "bad-split", "bad-limit"],
)
def test_bad_input_raises_one_line_error_naming_the_key(tmp_path, text, options, match):
    path = tmp_path / "data.csv" if text is None else _write(tmp_path, text)
    _one_line_error(DataConfig(name="csv", csv=str(path), **options), match)


def test_mixed_csv_trains_one_epoch_end_to_end(tmp_path):
    path = _mixed_csv(tmp_path)
    cfg = DataConfig(name="csv", csv=str(path), label_kinds={"family": "multiclass"}, batch_size=8)
    dataset = load_csv(cfg)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=16, num_layers=2), dataset)
    train_cfg = TrainConfig(epochs=1, progress=False)
    balancer = build_balancer(train_cfg, [t.name for t in dataset.tasks])
    loaders = build_loaders(dataset, batch_size=cfg.batch_size, seed=0)
    trainer = Trainer(model, balancer, train_cfg, dataset.splits["train"], out_dir=tmp_path / "run", seed=0,
                      log=lambda _: None)
    trainer.fit(loaders["train"], loaders["valid"])
    assert trainer.epoch == 1
    assert all(math.isfinite(row["train_loss"]) for row in trainer.history)
    result = trainer.test({"test": loaders["test"]})["test"]
    assert set(result["per_task"]) == {"logp", "active", "family", "extra"}
