"""OGB molecular property datasets (``ogbg-mol*``) through ogb's PyG dataset class, as multi-task datasets.

Two views of the label columns (``data.task_view``):

* ``columns``: each column is one task named after it (the multi-task view; balancers see every column);
* ``multilabel``: all columns form one task (OGB's baseline view: one head with ``C`` outputs, one loss).

The metric of every task is OGB's (``eval_metric`` of the dataset's metadata: ROC-AUC, AP or RMSE), the split
is OGB's own (``get_idx_split``), and :func:`ogb_summary` scores predictions with OGB's ``Evaluator`` as the
leaderboard does.

Offline use: the dataset is read from ``root`` (``data.root``, else ``$GRAPH_MTL_DATA``, else
``~/.cache/graph_mtl/datasets``); ogb downloads it there when it is missing and the machine is online.

ogb 1.3.6 on torch >= 2.6: ``PygGraphPropPredDataset`` reads its processed file with ``torch.load``, whose
default became ``weights_only=True``, and the PyG classes in that file are not on torch's allow-list, so ogb
fails on its own cache (``Unsupported global: ...DataEdgeAttr``). :func:`pyg_safe_globals` allow-lists exactly
those PyG classes for the duration of the load (a context manager, so nothing is allow-listed globally).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.tasks import Task

#: the environment variable naming the folder that holds dataset folders (``ogbg_moltox21/`` ...)
DATA_ENV = "GRAPH_MTL_DATA"
#: OGB's metric names -> ours
OGB_METRICS = {"rocauc": "rocauc", "ap": "ap", "rmse": "rmse"}


def default_root() -> Path:
    """``$GRAPH_MTL_DATA``, else ``~/.cache/graph_mtl/datasets``."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path.home() / ".cache" / "graph_mtl" / "datasets"


@contextlib.contextmanager
def pyg_safe_globals() -> Iterator[None]:
    """Allow-list the PyG storage classes for ``torch.load(weights_only=True)`` inside the block."""
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import EdgeStorage, GlobalStorage, NodeStorage

    with torch.serialization.safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage, NodeStorage,
                                           EdgeStorage]):
        yield


@contextlib.contextmanager
def no_prompts(folder: Path) -> Iterator[None]:
    """ogb asks ``(y/N)`` questions on stdin (a dataset update, a download over 1 GB); inside the block such a
    question is a one-line ``ValueError`` naming ``folder`` instead, and stdin is never read."""
    import builtins
    from unittest import mock

    def refuse(prompt: str = "") -> str:
        question = " ".join(str(prompt).split())
        raise ValueError(f"data.root: ogb asked {question!r} about {folder}; graph_mtl never answers prompts: "
                         "delete the folder or put a complete copy of the dataset there")

    with mock.patch.object(builtins, "input", refuse):
        yield


def open_ogb_dataset(name: str, root: str | Path | None = None):
    """ogb's ``PygGraphPropPredDataset`` for ``name`` under ``root``, with a one-line error when it cannot be had."""
    from ogb.graphproppred import PygGraphPropPredDataset

    root = Path(root) if root is not None else default_root()
    folder = root / name.replace("-", "_")
    if folder.is_dir() and not any(folder.glob("RELEASE_v*.txt")):
        raise ValueError(f"data.root: {folder} is a half-made OGB dataset folder (no RELEASE_v*.txt: an interrupted "
                         "or failed download); delete it, or replace it with a complete copy of the dataset")
    existed = folder.exists()
    try:
        with pyg_safe_globals(), no_prompts(folder):
            return PygGraphPropPredDataset(name=name, root=str(root))
    except (OSError, ValueError, KeyError) as err:  # offline download, unknown name (ogb raises ValueError)
        if not existed:  # what the failed attempt created, so that the next run does not find a half-made folder
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, ValueError) and str(err).startswith("data.root:"):
            raise
        if isinstance(err, ValueError) and "Invalid dataset name" in str(err):
            raise ValueError(f"data.name: {name!r} is not an OGB graph dataset; ogbg-mol* names are listed by "
                             "ogb.graphproppred (e.g. ogbg-moltox21)") from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"data.root: {name} is neither under {folder} nor downloadable ({first}); put the OGB "
                         f"folder there or set data.root / ${DATA_ENV}") from None


def column_names(dataset, num_columns: int) -> list[str]:
    """The label column names from ``mapping/mol.csv.gz`` (``task0..`` when the file is not there)."""
    path = Path(dataset.root) / "mapping" / "mol.csv.gz"
    if path.is_file():
        import pandas as pd

        header = list(pd.read_csv(path, nrows=0).columns)
        names = [c for c in header if c not in ("smiles", "mol_id")][:num_columns]
        if len(names) == num_columns:
            return names
    return [f"task{i}" for i in range(num_columns)]


def ogb_smiles(dataset) -> list[str] | None:
    """Each graph's SMILES from ``mapping/mol.csv.gz`` (row ``i`` is graph ``i``); ``None`` without the file."""
    path = Path(dataset.root) / "mapping" / "mol.csv.gz"
    if not path.is_file():
        return None
    import pandas as pd

    column = pd.read_csv(path, usecols=["smiles"])["smiles"]
    return [str(s) for s in column] if len(column) == len(dataset) else None


def ogb_tasks(short: str, columns: list[str], task_type: str, metric: str, view: str) -> list[Task]:
    """The tasks of an OGB dataset in the ``columns`` or ``multilabel`` view."""
    regression = "regression" in task_type
    kind = "regression" if regression else "binary"
    if view == "multilabel" and len(columns) > 1:
        return [Task(short, "graph", "regression" if regression else "multilabel", num_outputs=len(columns),
                     target="y_graph", metric=metric, extra={"columns": columns})]
    return [Task(name, "graph", kind, target="y_graph", columns=(i,), metric=metric)
            for i, name in enumerate(columns)]


def load_ogb_mol(name: str, root: str | Path | None = None, view: str = "columns",
                 limit: int | None = None) -> MultiTaskDataset:
    """An ``ogbg-mol*`` dataset as a :class:`MultiTaskDataset` on OGB's split (``limit``: the first ``limit``
    graphs of each split only, for quick runs)."""
    if view not in ("columns", "multilabel"):
        raise ValueError(f"data.task_view: expected 'columns' or 'multilabel', got {view!r}")
    dataset = open_ogb_dataset(name, root)
    split = dataset.get_idx_split()
    y = dataset.y.float().reshape(len(dataset), -1)
    columns = column_names(dataset, y.shape[1])
    metric = OGB_METRICS.get(dataset.eval_metric)
    if metric is None:
        raise ValueError(f"data.name: {name} is scored by {dataset.eval_metric!r}, which graph_mtl does not compute")
    short = name.removeprefix("ogbg-mol")
    tasks = ogb_tasks(short, columns, dataset.task_type, metric, view)

    smiles = ogb_smiles(dataset)  # for data.graph_features and the scaffolds of new molecules

    def graph(i: int) -> Data:
        g = dataset[i]
        extra = {} if smiles is None else {"smiles": smiles[i]}
        return Data(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr, y_graph=y[i:i + 1].clone(),
                    num_nodes=g.num_nodes, **extra)

    splits = {key: [graph(int(i)) for i in split[key][:limit]] for key in ("train", "valid", "test")}
    info = {"source": f"ogb {name}", "root": str(dataset.root), "graphs": sum(map(len, splits.values())),
            "columns": columns,
            "task_type": dataset.task_type, "eval_metric": dataset.eval_metric, "view": view,
            "missing_label_fraction": float(torch.isnan(y).float().mean())}
    return MultiTaskDataset(name, tasks, splits, node_features="ogb", info=info)


def ogb_summary(name: str, tasks: list[Task], y_true: dict[str, np.ndarray],
                y_pred: dict[str, np.ndarray]) -> dict[str, float | list[int]]:
    """OGB's ``Evaluator`` on the ``[N, C]`` label and prediction matrices rebuilt from the tasks (either view).

    Returns ``{"ogb/<metric>": value}`` and ``"ogb/skipped_columns"``: the columns OGB leaves out of its mean
    (for ROC-AUC and AP, columns without both classes among the labelled rows). On a subset of the columns
    (``data.tasks``) the value is OGB's metric on those columns (not the leaderboard's number, which needs all
    of them) and ``"ogb/columns"`` says how many of the dataset's columns it covers.
    """
    from ogb.graphproppred import Evaluator

    evaluator = Evaluator(name)
    true = np.concatenate([np.asarray(y_true[t.name], dtype=np.float64).reshape(len(y_true[t.name]), -1)
                           for t in tasks], axis=1)
    pred = np.concatenate([np.asarray(y_pred[t.name], dtype=np.float64).reshape(len(y_pred[t.name]), -1)
                           for t in tasks], axis=1)
    metric = evaluator.eval_metric
    skipped: list[int] = []
    if metric in ("rocauc", "ap"):
        for c in range(true.shape[1]):
            labelled = true[:, c][~np.isnan(true[:, c])]
            if not (np.any(labelled == 1) and np.any(labelled == 0)):
                skipped.append(c)
    out: dict[str, float | list[int] | str] = {}
    if true.shape[1] != evaluator.num_tasks:
        # a column subset (data.tasks): OGB's own metric code on the selected columns; its check of the column
        # count is the only thing that refuses a subset, so it is told the subset's width
        out["ogb/columns"] = f"{true.shape[1]} of {evaluator.num_tasks} (data.tasks)"
        evaluator.num_tasks = true.shape[1]
    try:
        value = float(evaluator.eval({"y_true": true, "y_pred": pred})[metric])
    except RuntimeError:  # OGB raises when no column can be scored
        value = float("nan")
    return {f"ogb/{metric}": value, "ogb/skipped_columns": skipped, **out}
