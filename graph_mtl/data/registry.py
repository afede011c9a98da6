"""Datasets by name, so a config can say ``data.name: embedded``."""

from __future__ import annotations

from collections.abc import Callable

from graph_mtl.config import DataConfig
from graph_mtl.data.base import MultiTaskDataset


def _embedded(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.molecules import load_embedded

    return load_embedded(cache_dir=cfg.root, limit=cfg.limit)


def _sbm(cfg: DataConfig) -> MultiTaskDataset:
    from graph_mtl.data.synthetic import load_sbm

    return load_sbm() if cfg.limit is None else load_sbm(num_nodes=cfg.limit)


#: name -> (loader, one-line description)
DATASETS: dict[str, tuple[Callable[[DataConfig], MultiTaskDataset], str]] = {
    "embedded": (_embedded, "~5k NCI molecules shipped with RDKit; RDKit-computed graph and atom labels"),
    "sbm": (_sbm, "generated stochastic block model graph with several node labels"),
}


def load_dataset(cfg: DataConfig) -> MultiTaskDataset:
    """Load the dataset named in ``cfg`` and keep only ``cfg.tasks`` when given."""
    if cfg.name not in DATASETS:
        raise ValueError(f"data.name: unknown dataset {cfg.name!r}; choose one of {sorted(DATASETS)}")
    dataset = DATASETS[cfg.name][0](cfg)
    if cfg.tasks:
        known = [t.name for t in dataset.tasks]
        unknown = [n for n in cfg.tasks if n not in known]
        if unknown:
            raise ValueError(f"data.tasks: {unknown} not in dataset {cfg.name!r}; its tasks: {known}")
        dataset.tasks = [t for t in dataset.tasks if t.name in cfg.tasks]
    return dataset
