"""A user CSV of SMILES and label columns as a multi-task dataset (``data.name: csv``).

Each label column becomes one graph-level task named after the column, so regression, binary and multiclass
columns can be trained together in one model. The file is read with the stdlib ``csv`` module:

* the header names the columns; ``data.smiles_column`` holds the SMILES, ``data.label_columns`` the labels
  (default: every other column, in file order);
* an empty cell, or ``nan`` in any case, is a missing label (``NaN``); any other cell must be a finite number
  (checked on every row read, an invalid-SMILES row included); a short row's missing cells are empty;
* a column's kind is ``data.label_kinds[column]`` when given, else inferred: ``binary`` when every value is 0
  or 1, otherwise ``regression``. ``multiclass`` is never inferred; its values must be integers >= 0 and the
  task has ``max + 1`` classes (at least 2);
* rows whose SMILES RDKit cannot parse, ogb's ``smiles2graph`` cannot featurise, or that have no atom are
  skipped, with one warning that gives their count and first line numbers (1-based, the header is line 1);
* ``data.limit`` keeps the first N valid rows; the split is a Bemis-Murcko scaffold split (deterministic, it
  does not use ``data.split_seed``) or a random split seeded by ``data.split_seed``, 80/10/10.

Graphs use OGB's featurisation (9 atom, 3 bond integer features), like the embedded dataset. Every mistake in
the file or the config is a one-line ``ValueError`` that names the config key and the fix.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import torch
from rdkit import rdBase
from torch_geometric.data import Data

from graph_mtl.config import DataConfig
from graph_mtl.data.base import SPLITS, MultiTaskDataset
from graph_mtl.data.featurise import molecule_graph
from graph_mtl.data.splits import random_split, scaffold_split
from graph_mtl.tasks import FLOAT32_MAX, Task

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
#: the kinds a label column can have (``data.label_kinds`` values)
LABEL_KINDS: tuple[str, ...] = ("binary", "regression", "multiclass")
#: how many skipped line numbers the warning lists
WARN_LINES = 5


def read_rows(path: Path, key: str = "data.csv") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and ``(line number, cells)`` of every non-blank data row of a CSV file; errors name
    ``key`` (the config key or flag that gave the file)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{key}: file {str(path)!r} is empty; it needs a header row naming the columns")
            rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
    except UnicodeDecodeError:
        raise ValueError(f"{key}: file {str(path)!r} is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as error:
        raise ValueError(f"{key}: file {str(path)!r} is not valid CSV ({error}); fix the file") from None
    return [name.strip() for name in header], rows


def _label_columns(cfg: DataConfig, header: list[str]) -> list[str]:
    """The label columns named in ``cfg`` (default: every column but the SMILES column), checked."""
    if cfg.smiles_column not in header:
        raise ValueError(f"data.smiles_column: column {cfg.smiles_column!r} is not in {cfg.csv!r}; its columns: "
                         f"{header}; set data.smiles_column to the one that holds the SMILES")
    if cfg.label_columns is None:
        columns = [name for name in header if name != cfg.smiles_column]
        if not columns:
            raise ValueError(f"data.label_columns: {cfg.csv!r} has no column besides the SMILES column "
                             f"{cfg.smiles_column!r}; add label columns to the file")
        if "" in columns:
            raise ValueError(f"data.label_columns: {cfg.csv!r} has a column with an empty name (position "
                             f"{header.index('') + 1}); name it in the header or list the label columns")
    else:
        columns = list(cfg.label_columns)
        if not columns:
            raise ValueError("data.label_columns: is empty; name at least one label column, or null for all")
        missing = [name for name in columns if name not in header]
        if missing:
            raise ValueError(f"data.label_columns: {missing} not in {cfg.csv!r}; its columns: {header}")
        if cfg.smiles_column in columns:
            raise ValueError(f"data.label_columns: {cfg.smiles_column!r} is the SMILES column "
                             "(data.smiles_column); remove it from the label columns")
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise ValueError(f"data.label_columns: {repeated} named twice (in the list or the file's header); "
                         "give each label column once and a unique name")
    return columns


def _check_kinds(kinds: dict[str, str], columns: list[str]) -> None:
    """Every ``data.label_kinds`` key must be a label column and every value a known kind."""
    for name, kind in kinds.items():
        if name not in columns:
            raise ValueError(f"data.label_kinds: {name!r} is not a label column; the label columns: {columns}")
        if kind not in LABEL_KINDS:
            raise ValueError(f"data.label_kinds: kind {kind!r} of column {name!r} is unknown; "
                             f"choose one of {list(LABEL_KINDS)}")


def parse_label(text: str, column: str, line: int, field: str = "data.label_columns",
                fix: str = "fix the cell (leave it empty for a missing label) or drop the column",
                float32: bool = True) -> float:
    """A label cell as a float: ``NaN`` if empty or ``nan``, else a finite number (within float32 when
    ``float32``), or a one-line error naming ``field``, the column and the line, and saying ``fix``."""
    text = text.strip()
    if not text or text.lower() == "nan":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"{field}: column {column!r}, line {line}: {text!r} is not a finite number; "
                         f"{fix}")
    if float32 and abs(value) >= FLOAT32_MAX:
        raise ValueError(f"{field}: column {column!r}, line {line}: {text!r} is beyond the float32 range "
                         f"(|y| < {FLOAT32_MAX:.3g}) the model trains in; rescale the column")
    return value


def _column_kind(column: str, given: str | None, values: list[tuple[int, float]]) -> tuple[str, int]:
    """The kind and number of outputs of a column from its ``(line, value)`` labels, checked against ``given``."""
    if given == "multiclass":
        for line, value in values:
            if value < 0 or value != int(value):
                raise ValueError(f"data.label_kinds: column {column!r} is multiclass but line {line} has {value:g}; "
                                 "class labels must be integers >= 0 (or set its kind to regression)")
        return "multiclass", max(2, int(max(v for _, v in values)) + 1)
    if given == "binary":
        for line, value in values:
            if value not in (0.0, 1.0):
                raise ValueError(f"data.label_kinds: column {column!r} is binary but line {line} has {value:g}; "
                                 "binary labels must be 0 or 1 (or set its kind to regression or multiclass)")
        return "binary", 1
    if given == "regression":
        return "regression", 1
    return ("binary" if all(v in (0.0, 1.0) for _, v in values) else "regression"), 1


def load_csv(cfg: DataConfig) -> MultiTaskDataset:
    """The molecules of the CSV file ``cfg.csv`` with one graph-level task per label column (module docstring).

    Uses ``cfg.csv``, ``smiles_column``, ``label_columns``, ``label_kinds``, ``split``, ``split_seed`` and
    ``limit``. Raises a one-line ``ValueError`` naming the config key for every mistake in the file or config;
    invalid SMILES only skip their rows (one warning).
    """
    if not cfg.csv:
        raise ValueError("data.csv: no file given; set data.csv to the path of a CSV of SMILES and labels")
    path = Path(cfg.csv).expanduser()
    if not path.is_file():
        raise ValueError(f"data.csv: file {cfg.csv!r} does not exist; give the path of a CSV file with a header row")
    limit = cfg.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"data.limit: expected null or an int >= 1, got {limit!r}")
    if cfg.split not in ("scaffold", "random"):
        raise ValueError(f"data.split: unknown value {cfg.split!r}; choose one of ['scaffold', 'random']")

    header, rows = read_rows(path)
    columns = _label_columns(cfg, header)
    kinds = dict(cfg.label_kinds or {})
    _check_kinds(kinds, columns)
    smiles_at = header.index(cfg.smiles_column)
    label_at = [header.index(name) for name in columns]
    width = len(header)

    graphs: list[Data] = []
    lines: list[int] = []
    labels: list[list[float]] = []
    skipped: list[int] = []
    read = 0
    with rdBase.BlockLogs():
        for line, cells in rows:
            if limit is not None and len(graphs) >= limit:
                break
            if len(cells) > width:
                raise ValueError(f"data.csv: line {line} of {cfg.csv!r} has {len(cells)} fields but the header has "
                                 f"{width}; quote cells that contain commas or fix the row")
            read += 1
            cells = cells + [""] * (width - len(cells))
            y = [parse_label(cells[i], name, line) for i, name in zip(label_at, columns)]
            smiles = cells[smiles_at].strip()
            graph, _ = molecule_graph(smiles)
            if graph is None:
                skipped.append(line)
                continue
            graphs.append(Data(
                x=torch.from_numpy(graph["node_feat"]).long(),
                edge_index=torch.from_numpy(graph["edge_index"]).long(),
                edge_attr=torch.from_numpy(graph["edge_feat"]).long(),
                y_graph=torch.tensor([y], dtype=torch.float32),
                smiles=smiles,
            ))
            lines.append(line)
            labels.append(y)
    if skipped:
        shown = ", ".join(str(n) for n in skipped[:WARN_LINES]) + (", ..." if len(skipped) > WARN_LINES else "")
        warnings.warn(f"data.csv: skipped {len(skipped)} row(s) of {cfg.csv!r} whose SMILES RDKit/OGB cannot use "
                      f"(lines {shown})", stacklevel=2)
    if not graphs:
        raise ValueError(f"data.csv: no valid row in {cfg.csv!r} ({read} read, {len(skipped)} with invalid SMILES); "
                         f"check that data.smiles_column ({cfg.smiles_column!r}) holds SMILES")

    tasks: list[Task] = []
    column_info: dict[str, dict] = {}
    for j, name in enumerate(columns):
        values = [(line, y[j]) for line, y in zip(lines, labels) if not math.isnan(y[j])]
        if not values:
            raise ValueError(f"data.label_columns: column {name!r} has no value in any valid row of {cfg.csv!r}; "
                             "fill it or leave it out of data.label_columns")
        kind, outputs = _column_kind(name, kinds.get(name), values)
        tasks.append(Task(name, "graph", kind, outputs, target="y_graph", columns=(j,),
                          extra={"source": f"{path.name} column {name!r}"}))
        column_info[name] = {"kind": kind, "kind_from": "label_kinds" if name in kinds else "inferred",
                             "labelled": len(values), "missing": len(graphs) - len(values)}
        if kind == "multiclass":
            column_info[name]["classes"] = outputs

    is_random = cfg.split == "random"
    if is_random:
        split = random_split(len(graphs), SPLIT_FRACTIONS, seed=cfg.split_seed)
    else:
        split = scaffold_split([g.smiles for g in graphs], SPLIT_FRACTIONS)
    splits = {name: [graphs[i] for i in split[name]] for name in SPLITS}
    info = {
        "source": str(path),
        "smiles_column": cfg.smiles_column,
        "rows_read": read,
        "rows_kept": len(graphs),
        "rows_skipped": len(skipped),
        "skipped_lines": skipped,
        "columns": column_info,
        "split": "random" if is_random else "scaffold (Bemis-Murcko, chirality kept), greedy largest-first",
        "split_seed": cfg.split_seed if is_random else None,
        "split_fractions": list(SPLIT_FRACTIONS),
        "split_sizes": {name: len(idx) for name, idx in split.items()},
    }
    return MultiTaskDataset("csv", tasks, splits, node_features="ogb", info=info)
