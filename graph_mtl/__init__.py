"""graph_mtl: multi-task learning on graphs with PyTorch Geometric.

A shared GNN encoder feeds one head per task (node or graph level); a balancer combines the tasks' gradients
on the shared parameters.

The names below are imported on first use, so that ``graph-mtl --help`` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "BALANCERS": "graph_mtl.balancers", "Method": "graph_mtl.balancers", "LossWeighting": "graph_mtl.balancers",
    "GramianWeighting": "graph_mtl.balancers", "Aggregator": "graph_mtl.balancers", "create": "graph_mtl.balancers",
    "PCGrad": "graph_mtl.dropin", "StepEngine": "graph_mtl.engine.step",
    "GNNEncoder": "graph_mtl.models", "GraphHead": "graph_mtl.models", "MultiTaskGNN": "graph_mtl.models",
    "NodeHead": "graph_mtl.models",
    "Task": "graph_mtl.tasks", "task_losses": "graph_mtl.tasks",
    "load_run": "graph_mtl.inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graph_mtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
