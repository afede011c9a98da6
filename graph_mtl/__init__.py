"""graph_mtl: multi-task learning on graphs with PyTorch Geometric.

A shared GNN encoder feeds one head per task (node or graph level); a balancer combines the tasks' gradients
on the shared parameters.
"""

from graph_mtl.balancers import BALANCERS, Balancer, LossWeighting, PCGrad, create
from graph_mtl.models import GNNEncoder, GraphHead, MultiTaskGNN, NodeHead
from graph_mtl.tasks import Task, task_losses

__version__ = "0.1.0"

__all__ = [
    "BALANCERS", "Balancer", "GNNEncoder", "GraphHead", "LossWeighting", "MultiTaskGNN", "NodeHead", "PCGrad", "Task",
    "create", "task_losses",
]
