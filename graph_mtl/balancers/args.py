"""Validation of method hyperparameters, in one place.

Every constructor argument of a method is checked by one of these helpers, which raise
:class:`ArgumentError` naming the argument. The config layer adds the config path
(under ``train``); a library user sees the argument name alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class ArgumentError(ValueError):
    """A bad method or engine argument: ``"<argument>: <what is expected>, got <value>"``."""

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(f"{argument}: {detail}")
        self.argument = argument
        self.detail = detail


def number(argument: str, value: object, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None) -> float:
    """``value`` as a finite float within the bounds (``minimum``/``maximum`` inclusive, ``above``/``below``
    strict)."""
    bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {maximum:g}" if maximum is not None else "", f"< {below:g}" if below is not None else ""]
    wanted = "a number " + " and ".join(b for b in bounds if b) if any(bounds) else "a number"
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
          and (above is None or value > above) and (below is None or value < below))
    if not ok:
        raise ArgumentError(argument, f"expected {wanted.strip()}, got {value!r}")
    return float(value)


def integer(argument: str, value: object, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an int ``>= minimum`` (or ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        wanted = f"an int >= {minimum}" if minimum is not None else "an int"
        raise ArgumentError(argument, f"expected {wanted}{' or None' if allow_none else ''}, got {value!r}")
    return value


def choice(argument: str, value: object, choices: Sequence) -> object:
    """``value`` if it is one of ``choices``."""
    if isinstance(value, bool) or value not in choices:
        raise ArgumentError(argument, f"expected one of {list(choices)}, got {value!r}")
    return value
