"""The ``metadata`` entry of every checkpoint: what a saved model needs to be used without its training data.

It holds the run's config, its task specifications, the values the model was built from (feature widths,
PNA's degree histogram...), the featuriser of its SMILES (``data/featurise.py``; ``None`` for datasets not
built from SMILES), each task's trivial baseline row (for the ``baseline`` and ``gain`` of an evaluation), the
graph_mtl version and :data:`METADATA_FORMAT`. The target scalers are the checkpoint's own ``scalers`` entry.
Everything is plain Python values and tensors, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graph_mtl.tasks import Task

#: Bump when the layout of the metadata entry changes; a checkpoint of another format is refused.
METADATA_FORMAT = 1


def task_to_dict(task: Task) -> dict[str, Any]:
    """A task as plain values (``columns`` as a list)."""
    spec = dataclasses.asdict(task)
    spec["columns"] = None if task.columns is None else list(task.columns)
    return spec


def task_from_dict(spec: dict[str, Any]) -> Task:
    """The inverse of :func:`task_to_dict`."""
    columns = spec.get("columns")
    return Task(**{**spec, "columns": None if columns is None else tuple(columns)})


def run_metadata(config: dict[str, Any], tasks: list[Task], inputs: dict[str, Any],
                 featuriser: dict[str, Any] | None, baselines: dict[str, np.ndarray]) -> dict[str, Any]:
    """The metadata entry (module docstring) of a run with the plain ``config`` dict and :func:`model_inputs`."""
    from graph_mtl import __version__

    return {
        "format": METADATA_FORMAT,
        "graph_mtl_version": __version__,
        "config": config,
        "tasks": [task_to_dict(t) for t in tasks],
        "model_inputs": dict(inputs),
        "featuriser": featuriser,
        "baselines": {name: torch.as_tensor(np.asarray(row, dtype=np.float64)) for name, row in baselines.items()},
    }


def check_metadata(state: Any, path: str | Path) -> dict[str, Any]:
    """The metadata of a loaded checkpoint, or a one-line ``ValueError`` saying why it cannot be used."""
    from graph_mtl import __version__

    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"RUN: {path} is not a graph_mtl checkpoint (no model weights); give a run folder or its "
                         "best.pt / last.pt")
    meta = state.get("metadata")
    if meta is None:
        raise ValueError(f"RUN: {path} has no run metadata (written by a graph_mtl before predict existed); "
                         "retrain the run with this version to use it for predictions")
    written = meta.get("graph_mtl_version", "?")
    if meta.get("format") != METADATA_FORMAT:
        raise ValueError(f"RUN: {path} has checkpoint metadata format {meta.get('format')} (graph_mtl {written}); "
                         f"graph_mtl {__version__} reads format {METADATA_FORMAT}; use graph_mtl {written}")
    return meta
