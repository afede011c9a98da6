"""PPI (protein-protein interaction graphs of human tissues) as an inductive multi-task node dataset.

Through PyG's ``torch_geometric.datasets.PPI``: 24 graphs, one per tissue (20 train / 2 valid / 2 test, about
2,200-2,400 nodes each), 50 float node features (positional, motif and immunological gene sets), 121 binary
labels per node (gene ontology sets), no edge features, every label known. The splits hold different graphs
(as the molecule datasets do), so no ``node_mask`` is needed: a node task on a graph without one scores every
node.

Labels are ``y_node`` ``[n, 121]`` float (``NaN`` would mark a missing label; PPI has none). Two views of the
121 columns (``data.task_view``), as for the OGB datasets:

* ``columns``: 121 binary tasks ``label_000`` ... ``label_120`` (the multi-task view);
* ``multilabel``: one task ``ppi`` with 121 outputs and one flat BCE loss (the usual baseline).

Metric: ROC-AUC per column (mean over columns). The literature reports **micro-F1** on PPI (one F1 over the
flattened ``[n, 121]`` labels at probability 0.5); graph_mtl's ``f1`` for binary/multilabel tasks is per
column and then averaged (macro), so it is not used as the task metric. :func:`ppi_summary` computes the
micro-F1 as a whole-dataset summary (``ppi/micro_f1``) next to the per-task scores.

``limit``: the first ``limit`` graphs of each split.

Offline: ``root`` (``data.root``, else ``$GRAPH_MTL_DATA``, else ``~/.cache/graph_mtl/datasets``) holds
``PPI/raw/{train,valid,test}_{graph.json,feats.npy,graph_id.npy,labels.npy}`` (the unpacked ``ppi.zip``);
PyG writes ``PPI/processed/`` next to it. Online, PyG downloads it there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.data.ogb_mol import DATA_ENV, default_root
from graph_mtl.tasks import Task

NAME = "ppi"
NUM_LABELS = 121
#: our split names -> PyG's ``PPI(split=...)`` (its raw files say ``valid``, its argument ``val``)
PYG_SPLITS = {"train": "train", "valid": "val", "test": "test"}


def label_names(num_labels: int) -> list[str]:
    """``label_000``, ``label_001``, ...: the column names (PPI's and ogbn-proteins' labels are unnamed)."""
    return [f"label_{i:03d}" for i in range(num_labels)]


def label_tasks(short: str, num_labels: int, view: str) -> list[Task]:
    """Binary node tasks, one per column of ``y_node`` (``columns``), or one multilabel task (``multilabel``)."""
    if view not in ("columns", "multilabel"):
        raise ValueError(f"data.task_view: expected 'columns' or 'multilabel', got {view!r}")
    names = label_names(num_labels)
    if view == "multilabel":
        return [Task(short, "node", "multilabel", num_outputs=num_labels, target="y_node", metric="rocauc",
                     extra={"columns": names})]
    return [Task(name, "node", "binary", target="y_node", columns=(i,), metric="rocauc")
            for i, name in enumerate(names)]


def load_ppi(root: str | Path | None = None, task_view: str = "columns", limit: int | None = None) -> MultiTaskDataset:
    """PPI on its 20/2/2-graph split: ``x`` ``[n, 50]`` float, ``y_node`` ``[n, 121]`` float, 121 tasks (``columns``)
    or one (``multilabel``); ``limit`` keeps the first ``limit`` graphs of each split."""
    from torch_geometric.datasets import PPI

    tasks = label_tasks(NAME, NUM_LABELS, task_view)
    root = Path(root) if root is not None else default_root()
    folder = root / "PPI"
    splits: dict[str, list[Data]] = {}
    for split, pyg_split in PYG_SPLITS.items():
        try:
            graphs = PPI(str(folder), split=pyg_split)
        except (OSError, RuntimeError) as err:  # offline download (URLError is an OSError), unreadable files
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"data.root: PPI is neither under {folder / 'raw'} nor downloadable ({first}); put the "
                             f"unpacked ppi.zip there or set data.root / ${DATA_ENV}") from None
        chosen = graphs if limit is None else graphs[:limit]
        splits[split] = [Data(x=g.x.float(), edge_index=g.edge_index, y_node=g.y.float(), num_nodes=g.num_nodes)
                         for g in chosen]
    ys = [g.y_node for graphs in splits.values() for g in graphs]
    labels = torch.cat(ys) if ys else torch.empty(0)
    info = {"source": "torch_geometric.datasets.PPI", "root": str(folder), "view": task_view,
            "graphs": {s: len(g) for s, g in splits.items()},
            "nodes": {s: sum(int(g.num_nodes) for g in gs) for s, gs in splits.items()},
            "positive_rate": float(labels.nanmean()) if labels.numel() else float("nan")}
    return MultiTaskDataset(NAME, tasks, splits, node_features="float", info=info)


def label_matrix(tasks: list[Task], values: dict[str, np.ndarray]) -> np.ndarray:
    """The ``[n, C]`` matrix of the tasks' columns side by side (either view), as float64."""
    return np.concatenate([np.asarray(values[t.name], dtype=np.float64).reshape(len(values[t.name]), -1)
                           for t in tasks], axis=1)


def micro_f1(y_true: np.ndarray, logits: np.ndarray) -> float:
    """One F1 ``2 TP / (2 TP + FP + FN)`` over every labelled entry of ``[n, C]``, positive at ``logit > 0``."""
    labelled = ~np.isnan(y_true)
    truth, guess = y_true[labelled] == 1, logits[labelled] > 0
    tp = int(np.sum(truth & guess))
    denom = 2 * tp + int(np.sum(~truth & guess)) + int(np.sum(truth & ~guess))
    return 2 * tp / denom if denom else 0.0


def ppi_summary(tasks: list[Task], y_true: dict[str, np.ndarray], y_pred: dict[str, np.ndarray]) -> dict[str, float]:
    """``{"ppi/micro_f1": value}`` over the tasks' columns (all 121 unless ``data.tasks`` keeps fewer)."""
    return {"ppi/micro_f1": micro_f1(label_matrix(tasks, y_true), label_matrix(tasks, y_pred))}
