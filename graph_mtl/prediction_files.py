"""Files of ``graph-mtl predict`` / ``evaluate`` / ``embed``: the input CSV of SMILES (and labels), and outputs
written atomically (a temporary file renamed into place), so an error never leaves half a file."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from graph_mtl.data.csv_dataset import parse_label, read_rows
from graph_mtl.engine.checkpoint import atomic_write, atomic_write_text
from graph_mtl.tasks import Task


def read_smiles(path: str | Path, smiles_column: str) -> tuple[list[str], list[tuple[int, list[str]]], list[str]]:
    """The header, ``(line, cells)`` rows and SMILES of every non-blank data row of the ``--input`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--input: file {str(path)!r} does not exist; give the path of a CSV file with a header row")
    header, rows = read_rows(path, "--input")
    if smiles_column not in header:
        raise ValueError(f"--smiles-column: column {smiles_column!r} is not in {str(path)!r}; its columns: "
                         f"{header}; name the column that holds the SMILES")
    if not rows:
        raise ValueError(f"--input: {str(path)!r} has a header but no data row; add a molecule per row")
    at = header.index(smiles_column)
    return header, rows, [cells[at].strip() if at < len(cells) else "" for _, cells in rows]


def label_columns(task: Task) -> list[str]:
    """The CSV columns holding a graph task's labels: its OGB column names (one task of several columns) or its
    own name."""
    names = task.extra.get("columns")
    return [str(n) for n in names] if names is not None and task.num_outputs > 1 else [task.name]


def add_labels(tasks: Sequence[Task], header: list[str], rows: list[tuple[int, list[str]]], graphs: list[Data],
               path: str | Path) -> None:
    """Fill each graph's graph-level targets (blank, ``inference.blank_labels``) from the label columns of the
    ``--input`` file; node-level tasks stay unlabelled (scored as skipped)."""
    graph_tasks = [t for t in tasks if t.level == "graph"]
    missing = [c for t in graph_tasks for c in label_columns(t) if c not in header]
    if missing:
        raise ValueError(f"--input: {str(path)!r} lacks the label column(s) {missing} of the run's tasks; its "
                         f"columns: {header}")
    for graph, (line, cells) in zip(graphs, rows):
        for task in graph_tasks:
            y = getattr(graph, task.target)
            for j, column in enumerate(label_columns(task)):
                at = header.index(column)
                value = parse_label(cells[at] if at < len(cells) else "", column, line, "--input",
                                    "fix the cell (leave it empty for a missing label)", float32=False)
                y[0, task.columns[j] if task.columns else j] = value


def write_table(table: dict[str, list], path: str | Path) -> None:
    """A CSV of equally long ``table`` columns, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(table))
    writer.writerows(zip(*table.values()))
    atomic_write_text(buffer.getvalue(), path)


def write_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """One array as ``.npy`` or several as ``.npz``, written atomically."""
    if len(arrays) == 1:
        atomic_write(path, lambda handle: np.save(handle, next(iter(arrays.values()))), binary=True)
    else:
        atomic_write(path, lambda handle: np.savez(handle, **arrays), binary=True)
