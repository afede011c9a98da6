"""Task balancers: pure weightings over losses or per-task gradients, registered by name.

Every module of this package is imported here, so a method is registered by its file alone: a new method is one
file with ``@register("name", "Paper et al. 2024")`` on a class of one of the kinds of :mod:`.base`.
"""

import importlib
import pkgutil

from graph_mtl.balancers.args import ArgumentError
from graph_mtl.balancers.base import Aggregator, GramianWeighting, LastLayerWeighting, LossWeighting, Method
from graph_mtl.balancers.registry import BALANCERS, create, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BALANCERS", "Aggregator", "ArgumentError", "GramianWeighting", "LastLayerWeighting", "LossWeighting",
           "Method", "create", "register"]
