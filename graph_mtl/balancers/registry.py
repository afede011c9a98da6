"""Methods by name: ``register`` a class, ``create`` one from a name and keyword arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from graph_mtl.balancers.args import ArgumentError
from graph_mtl.balancers.base import Method

BALANCERS: dict[str, type[Method]] = {}


def register(name: str, paper: str = "") -> Callable[[type[Method]], type[Method]]:
    """Class decorator that makes a method available under ``name`` (``paper``: shown by ``graph-mtl list``)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in BALANCERS:
            raise ValueError(f"balancer {name!r} is registered twice")
        cls.name = name
        if paper:
            cls.paper = paper
        BALANCERS[name] = cls
        return cls

    return wrap


def accepted_arguments(name: str) -> list[str]:
    """The hyperparameters the method ``name`` takes."""
    params = inspect.signature(BALANCERS[name].__init__).parameters
    return [p for p in params if p not in ("self", "task_names")]


def check_name(name: str) -> type[Method]:
    """The class registered as ``name``, or a one-line error listing the choices."""
    if name not in BALANCERS:
        raise ValueError(f"balancer: unknown {name!r}; choose one of {sorted(BALANCERS)}")
    return BALANCERS[name]


def create(name: str, task_names: Sequence[str] | int | None = None, **kwargs) -> Method:
    """Build the method ``name``; unknown names or arguments are one-line errors naming them."""
    check_name(name)
    accepted = accepted_arguments(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ArgumentError(unknown[0], f"not an argument of {name!r}; accepted: {accepted or 'none'}")
    return BALANCERS[name](task_names, **kwargs)
