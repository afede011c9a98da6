"""ogbn-proteins (OGB's protein association graph) as a single-graph multi-task node dataset.

Through ogb's ``PygNodePropPredDataset``: one graph of 132,534 proteins from 8 species, 39,561,252 directed
edges (each undirected association stored once in the raw files; ogb adds the inverse), 8 edge features
(association confidences in ``(0, 1]``, one per evidence channel), **no node features**, 112 binary labels
per node (protein functions), every label known. The split is OGB's ``species`` split (``get_idx_split``):
86,619 train / 21,236 valid / 24,679 test proteins, each split whole species. The metric is ROC-AUC averaged
over the 112 columns; :func:`proteins_summary` scores with OGB's ``Evaluator("ogbn-proteins")``.

As for Planetoid, the same graph is in every split, each copy with a boolean ``node_mask`` of the split's
nodes; the copies share ``x``, ``edge_index``, ``edge_attr`` and ``y_node`` (no tensor is copied).

* ``x`` ``[N, 8]``: the **mean** of the features of each node's incoming edges (0 for an isolated node), as
  OGB's reference examples for this dataset do ("average incoming edge features"). The mean stays in the
  range of the edge features whatever the degree (about 300 on average, thousands at the hubs), so the
  inputs need no rescaling; the sum would grow with the degree and make the hubs' inputs hundreds of times
  larger than the rest.
* ``edge_attr`` ``[E, 8]`` float, kept for edge-aware convolutions (``model.conv: gine``).
* ``y_node`` ``[N, 112]`` float. Views (``data.task_view``): ``columns`` = 112 binary tasks
  ``label_000`` ... ``label_111``; ``multilabel`` = one task ``proteins`` with 112 outputs.

``limit``: the first ``limit`` nodes of each OGB split and the subgraph they induce (features are computed on
the whole graph first), for quick runs; the real graph needs ``data.loader: neighbor`` (full-batch training
on 39.5M edges does not fit a GPU at useful widths).

Offline: ``root`` (``data.root``, else ``$GRAPH_MTL_DATA``, else ``~/.cache/graph_mtl/datasets``) holds the
unpacked ``proteins.zip`` as ``ogbn_proteins/``: ``RELEASE_v1.txt``, ``raw/{edge, edge-feat, node-label,
node_species, num-node-list, num-edge-list}.csv.gz`` and ``split/species/{train,valid,test}.csv.gz``; ogb
writes ``processed/`` next to them. A folder without ``RELEASE_v1.txt`` is refused here: ogb would ask on
stdin whether to delete it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import subgraph

from graph_mtl.data.base import SPLITS, MultiTaskDataset
from graph_mtl.data.ogb_mol import DATA_ENV, default_root, pyg_safe_globals
from graph_mtl.data.ppi import label_matrix, label_tasks
from graph_mtl.tasks import Task

NAME = "ogbn-proteins"
NUM_TASKS = 112


def release_marker() -> str:
    """The version file ogb expects in the dataset folder (``RELEASE_v1.txt`` for ogb 1.3.x)."""
    import ogb.nodeproppred
    import pandas as pd

    master = pd.read_csv(Path(ogb.nodeproppred.__file__).parent / "master.csv", index_col=0, keep_default_na=False)
    return f"RELEASE_v{master[NAME]['version']}.txt"


def open_proteins(root: str | Path | None = None):
    """ogb's ``PygNodePropPredDataset`` for ogbn-proteins under ``root``, with a one-line error when it cannot be
    had (and never ogb's stdin prompt)."""
    from ogb.nodeproppred import PygNodePropPredDataset

    root = Path(root) if root is not None else default_root()
    folder = root / "ogbn_proteins_pyg"  # ogb prefers this name when it exists
    folder = folder if folder.exists() else root / "ogbn_proteins"
    marker = release_marker()
    if folder.is_dir() and not (folder / marker).is_file():
        raise ValueError(f"data.root: {folder} has no {marker} (an incomplete or outdated copy, and ogb would ask on "
                         f"stdin to delete it); unpack the whole proteins.zip there, delete the folder to download "
                         f"again, or set data.root / ${DATA_ENV}")
    try:
        with pyg_safe_globals():
            return PygNodePropPredDataset(name=NAME, root=str(root))
    except (OSError, RuntimeError, KeyError) as err:  # offline download (URLError), missing raw files
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"data.root: {NAME} is neither under {folder} nor downloadable ({first}); put the unpacked "
                         f"proteins.zip there as {folder.name}/ or set data.root / ${DATA_ENV}") from None


def mean_edge_features(edge_index: Tensor, edge_attr: Tensor, num_nodes: int) -> Tensor:
    """``[N, F]``: per node the mean of ``edge_attr`` over its incoming edges (0 without any)."""
    total = torch.zeros(num_nodes, edge_attr.size(1), dtype=edge_attr.dtype).index_add_(0, edge_index[1], edge_attr)
    count = torch.bincount(edge_index[1], minlength=num_nodes).clamp(min=1)
    return total / count.unsqueeze(1).to(total.dtype)


def load_ogbn_proteins(root: str | Path | None = None, task_view: str = "columns",
                       limit: int | None = None) -> MultiTaskDataset:
    """ogbn-proteins on OGB's species split: ``x`` ``[N, 8]`` (mean incident edge features), ``edge_attr``
    ``[E, 8]``, ``y_node`` ``[N, 112]``, one ``node_mask`` per split; 112 tasks (``columns``) or one
    (``multilabel``). ``limit``: the first ``limit`` nodes of each split and their induced subgraph."""
    tasks = label_tasks("proteins", NUM_TASKS, task_view)
    dataset = open_proteins(root)
    graph = dataset[0]
    n = int(graph.num_nodes)
    edge_index, edge_attr = graph.edge_index, graph.edge_attr.float()
    x = mean_edge_features(edge_index, edge_attr, n)
    y = graph.y.float().view(n, -1)
    species = graph.node_species.view(-1)
    index = dataset.get_idx_split()
    masks = {}
    for split in SPLITS:
        masks[split] = torch.zeros(n, dtype=torch.bool)
        masks[split][index[split]] = True
    if limit is not None:
        keep = torch.cat([index[s][:limit] for s in SPLITS]).unique()
        edge_index, edge_attr = subgraph(keep, edge_index, edge_attr, relabel_nodes=True, num_nodes=n)
        x, y, species = x[keep], y[keep], species[keep]
        masks = {s: m[keep] for s, m in masks.items()}
    splits = {s: [Data(x=x, edge_index=edge_index, edge_attr=edge_attr, y_node=y, node_mask=masks[s])]
              for s in SPLITS}
    info = {"source": f"ogb {NAME}", "root": str(dataset.root), "view": task_view, "num_nodes": int(x.size(0)),
            "num_edges": int(edge_index.size(1)), "node_features": "mean of incident edge features",
            "split_sizes": {s: int(m.sum()) for s, m in masks.items()},
            "species": {s: sorted(int(v) for v in species[m].unique()) for s, m in masks.items()},
            "positive_rate": float(y.nanmean())}
    return MultiTaskDataset(NAME, tasks, splits, node_features="float", info=info)


def proteins_summary(tasks: list[Task], y_true: dict[str, np.ndarray],
                     y_pred: dict[str, np.ndarray]) -> dict[str, float | list[int]]:
    """OGB's ``Evaluator("ogbn-proteins")`` on the ``[n, 112]`` labels and logits rebuilt from the tasks (either
    view): ``{"ogb/rocauc": mean over scored columns, "ogb/skipped_columns": columns without both classes}``.
    Empty when ``data.tasks`` keeps fewer than the 112 columns (OGB's Evaluator scores all of them only)."""
    from ogb.nodeproppred import Evaluator

    true, pred = label_matrix(tasks, y_true), label_matrix(tasks, y_pred)
    if true.shape[1] != NUM_TASKS:
        return {}
    skipped = [c for c in range(NUM_TASKS) if not (np.any(true[:, c] == 1) and np.any(true[:, c] == 0))]
    try:
        value = float(Evaluator(NAME).eval({"y_true": true, "y_pred": pred})["rocauc"])
    except RuntimeError:  # OGB raises when no column can be scored
        value = float("nan")
    return {"ogb/rocauc": value, "ogb/skipped_columns": skipped}
