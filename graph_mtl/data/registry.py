"""Datasets by name, so a config can say ``data.name: embedded``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from graph_mtl.config import DataConfig
from graph_mtl.data.base import MultiTaskDataset


def _embedded(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.molecules import load_embedded

    return load_embedded(cache_dir=cfg.root, limit=cfg.limit)


def _csv(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.csv_dataset import load_csv

    if not cfg.csv:
        raise ValueError("data.csv: name 'csv' needs the path of a CSV file (data.csv: molecules.csv)")
    return load_csv(cfg)


def _ogb_mol(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.ogb_mol import load_ogb_mol

    return load_ogb_mol(cfg.name, cfg.root, cfg.task_view, cfg.limit)


def _planetoid(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.planetoid import load_planetoid

    if cfg.limit is not None:
        raise ValueError(f"data.limit: {cfg.name} is one graph on a fixed public split and takes no limit; set "
                         "data.limit: null")
    return load_planetoid(cfg.name, cfg.root, cfg.aux_tasks)


def _ppi(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.ppi import load_ppi

    return load_ppi(cfg.root, cfg.task_view, cfg.limit)


def _ogbn_proteins(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.ogbn_proteins import load_ogbn_proteins

    return load_ogbn_proteins(cfg.root, cfg.task_view, cfg.limit)


def _qm9(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.qm9 import load_qm9

    return load_qm9(cfg)


def _sbm(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.synthetic import load_sbm

    return load_sbm() if cfg.limit is None else load_sbm(num_nodes=cfg.limit)


#: name -> (loader, one-line description)
DATASETS: dict[str, tuple[Callable[[DataConfig], MultiTaskDataset], str]] = {
    "embedded": (_embedded, "~5k NCI molecules shipped with RDKit; RDKit-computed graph and atom labels"),
    "sbm": (_sbm, "generated stochastic block model graph with several node labels"),
    "csv": (_csv, "your CSV of SMILES and label columns (data.csv, data.smiles_column, data.label_columns)"),
    "cora": (_planetoid, "Planetoid Cora: class on the public split + degree/clustering/pagerank node tasks"),
    "citeseer": (_planetoid, "Planetoid CiteSeer, same tasks as cora (data.aux_tasks picks the auxiliary ones)"),
    "pubmed": (_planetoid, "Planetoid PubMed, same tasks as cora"),
    "ogbg-mol*": (_ogb_mol, "any OGB molecular dataset, e.g. ogbg-moltox21 (data.root, data.task_view)"),
    "qm9": (_qm9, "QM9: 11 regression targets (MAE), complete graph with distances or bonds (data.graph); PyG or "
                  "offline qm9pack (data.source); data.limit = training-set size"),
    "ppi": (_ppi, "PPI tissue graphs (PyG): 20/2/2 graphs, 50 features, 121 binary node labels (data.task_view)"),
    "ogbn-proteins": (_ogbn_proteins, "OGB protein graph: 132k nodes, 39.5M edges, 112 binary node tasks, species "
                                      "split (data.loader: neighbor or partition)"),
}


def registry_key(name: str) -> str:
    """The :data:`DATASETS` entry of a dataset name (every ``ogbg-mol...`` shares one)."""
    return "ogbg-mol*" if name.startswith("ogbg-mol") else name


def summary_for(dataset: MultiTaskDataset) -> Callable[[dict, dict], dict[str, Any]] | None:
    """The whole-dataset score of a dataset that has an official one, as ``summary(y_true, y_pred)`` for the
    Trainer: OGB's Evaluator for ``ogbg-mol*`` and ogbn-proteins (``ogb/<metric>``), PPI's micro-F1
    (``ppi/micro_f1``); else ``None``."""
    tasks = list(dataset.tasks)
    if registry_key(dataset.name) == "ogbg-mol*":
        from graph_mtl.data.ogb_mol import ogb_summary

        return lambda y_true, y_pred: ogb_summary(dataset.name, tasks, y_true, y_pred)
    if dataset.name == "ppi":
        from graph_mtl.data.ppi import ppi_summary

        return lambda y_true, y_pred: ppi_summary(tasks, y_true, y_pred)
    if dataset.name == "ogbn-proteins":
        from graph_mtl.data.ogbn_proteins import proteins_summary

        return lambda y_true, y_pred: proteins_summary(tasks, y_true, y_pred)
    return None


def featuriser_for(dataset: MultiTaskDataset) -> dict[str, Any] | None:
    """How ``dataset`` turns a SMILES into a graph (``data/featurise.py``), for predictions on new molecules;
    ``None`` for datasets not built from SMILES."""
    from graph_mtl.data.featurise import ogb_featuriser

    key = registry_key(dataset.name)
    if key == "embedded":
        from graph_mtl.data.molecules import ORGANIC_ELEMENTS

        spec = ogb_featuriser(ORGANIC_ELEMENTS, min_bonds=1)  # the molecules parse_molecule keeps
    elif key in ("csv", "ogbg-mol*"):
        spec = ogb_featuriser()
    else:
        return None
    features = dataset.info.get("graph_features")
    return spec if features is None else {**spec, "graph_features": features["spec"]}


def load_dataset(cfg: DataConfig) -> MultiTaskDataset:
    """Load the dataset named in ``cfg``, keep only ``cfg.tasks`` when given, and attach the molecule-level
    features of ``cfg.graph_features`` (``data/graph_features.py``; cached in ``cfg.root`` or the default cache)."""
    key = registry_key(cfg.name)
    if key not in DATASETS:
        raise ValueError(f"data.name: unknown dataset {cfg.name!r}; choose one of {sorted(DATASETS)}")
    dataset = DATASETS[key][0](cfg)
    if cfg.tasks:
        known = [t.name for t in dataset.tasks]
        unknown = [n for n in cfg.tasks if n not in known]
        if unknown:
            raise ValueError(f"data.tasks: {unknown} not in dataset {cfg.name!r}; its tasks: {known}")
        dataset.tasks = [t for t in dataset.tasks if t.name in cfg.tasks]
    if cfg.graph_features != "none":
        from graph_mtl.data.graph_features import attach_graph_features
        from graph_mtl.data.molecules import default_cache_dir

        attach_graph_features(dataset, cfg.graph_features, Path(cfg.root) if cfg.root else default_cache_dir())
    return dataset
