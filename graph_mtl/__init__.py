"""graph_mtl: multi-task learning on graphs with PyTorch Geometric.

A shared GNN encoder feeds one head per task (node or graph level); a balancer combines the tasks' gradients
on the shared parameters.
"""

from graph_mtl.balancers import BALANCERS, Balancer, LossWeighting, PCGrad, create
from graph_mtl.models import GNNEncoder, GraphHead, MultiTaskGNN, NodeHead
from graph_mtl.tasks import Task, task_losses

__version__ = "0.1.0"


def load_run(path, checkpoint: str = "best", device: str = "auto"):
    """A trained run ready to predict and embed (``graph_mtl/inference.py``): a run folder (its ``best.pt`` by
    default), a checkpoint file, or a ``--seeds`` folder (an ensemble of its seeds)."""
    from graph_mtl.inference import load_run as load

    return load(path, checkpoint, device)


__all__ = [
    "BALANCERS", "Balancer", "GNNEncoder", "GraphHead", "LossWeighting", "MultiTaskGNN", "NodeHead", "PCGrad", "Task",
    "create", "load_run", "task_losses",
]
