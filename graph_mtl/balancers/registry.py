"""Balancers by name: ``register`` a class, ``create`` one from a name and keyword arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from graph_mtl.balancers.base import Balancer

BALANCERS: dict[str, type[Balancer]] = {}


def register(name: str) -> Callable[[type[Balancer]], type[Balancer]]:
    """Class decorator that makes a balancer available under ``name``."""

    def wrap(cls: type[Balancer]) -> type[Balancer]:
        if name in BALANCERS:
            raise ValueError(f"balancer {name!r} is registered twice")
        cls.name = name
        BALANCERS[name] = cls
        return cls

    return wrap


def create(name: str, task_names: Sequence[str], **kwargs) -> Balancer:
    """Build the balancer ``name`` for ``task_names``; unknown names or arguments are one-line errors."""
    if name not in BALANCERS:
        raise ValueError(f"balancer: unknown name {name!r}; choose one of {sorted(BALANCERS)}")
    cls = BALANCERS[name]
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "task_names")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"balancer_args: {unknown} not accepted by {name!r}; accepted: {accepted or 'none'}"
        )
    return cls(task_names, **kwargs)
