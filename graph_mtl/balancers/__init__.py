"""Task balancers: pure weightings over losses or per-task gradients, registered by name."""

from graph_mtl.balancers import weighting  # noqa: F401  (registers the built-in balancers)
from graph_mtl.balancers.base import Balancer, LossWeighting
from graph_mtl.balancers.registry import BALANCERS, create, register

__all__ = ["BALANCERS", "Balancer", "LossWeighting", "create", "register"]
