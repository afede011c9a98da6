"""The container every dataset builder returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch_geometric.data import Data

from graph_mtl.tasks import Task

SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass
class MultiTaskDataset:
    """Graphs split for training, with the tasks defined on them.

    A graph-level dataset (many molecules) puts different graphs in each split. A single-graph node dataset
    (Planetoid, a generated block model) puts the same graph in every split, each copy carrying a boolean
    ``node_mask`` that selects the split's nodes; node-task losses and metrics honour it.

    Args:
        name: dataset name as used in configs.
        tasks: the tasks, in model order.
        splits: ``{"train": [...], "valid": [...], "test": [...]}`` lists of PyG ``Data``.
        node_features: ``"ogb"`` (9 integer OGB atom features, 3 bond features) or ``"float"``.
        info: free-form facts for logs and the README (sizes, source, recipe).
    """

    name: str
    tasks: list[Task]
    splits: dict[str, list[Data]]
    node_features: str = "float"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"dataset {self.name!r}: missing splits {missing}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset {self.name!r}: duplicate task names {names}")

    @property
    def num_node_features(self) -> int:
        return int(self.splits["train"][0].x.size(-1))

    @property
    def num_edge_features(self) -> int:
        edge_attr = getattr(self.splits["train"][0], "edge_attr", None)
        return 0 if edge_attr is None else int(edge_attr.size(-1))


def is_single_graph(dataset: MultiTaskDataset) -> bool:
    """One graph per split, selected by node masks (Planetoid, block models, ogbn-proteins)."""
    return all(len(g) == 1 and getattr(g[0], "node_mask", None) is not None for g in dataset.splits.values())


def require_single_graph(dataset: MultiTaskDataset, loader: str, what: str) -> None:
    """One-line errors naming ``data.loader`` when a mini-batch ``loader`` (which ``what``) meets graph tasks or
    a dataset with several graphs per split."""
    graph_tasks = [t.name for t in dataset.tasks if t.level == "graph"]
    if graph_tasks:
        raise ValueError(f"data.loader: '{loader}' {what} and serves node tasks only; {dataset.name} has graph "
                         f"tasks {graph_tasks}; use data.loader: full")
    for split, graphs in dataset.splits.items():
        if len(graphs) != 1 or getattr(graphs[0], "node_mask", None) is None:
            raise ValueError(f"data.loader: '{loader}' needs a single-graph node dataset with node masks; "
                             f"{dataset.name} has {len(graphs)} graphs in its {split} split; use data.loader: full")
