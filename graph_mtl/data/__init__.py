"""Datasets: every builder returns a :class:`MultiTaskDataset`."""

from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.data.molecules import load_embedded
from graph_mtl.data.splits import random_split, scaffold_split
from graph_mtl.data.synthetic import load_sbm

__all__ = [
    "MultiTaskDataset",
    "load_embedded",
    "load_sbm",
    "random_split",
    "scaffold_split",
]
