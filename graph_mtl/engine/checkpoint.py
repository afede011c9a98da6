"""Atomic run files and checkpoints, and the random-number state that makes a resumed run continue exactly."""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

#: name pattern of the temporary file of an atomic write of ``NAME``: ``.NAME.<random>.tmp``
TEMP_SUFFIX = ".tmp"

#: what a checkpoint written by graph_mtl holds besides tensors, dicts, lists and numbers: NumPy's RNG state
#: (an array) and NumPy scalars; ``torch.load(weights_only=True)`` accepts these and nothing else
SAFE_GLOBALS: list[Any] = [
    np.ndarray, np.dtype, np._core.multiarray._reconstruct, np._core.multiarray.scalar,
    *(type(np.dtype(t)) for t in (np.uint32, np.int64, np.int32, np.float64, np.float32, np.bool_)),
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; ``str(error)`` is one line saying what is wrong."""


def _current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, then rename it onto ``path``: a crash never
    leaves half a file (at most a ``.NAME.*.tmp`` file, removed by :func:`remove_temp_files`). The file gets the
    usual permissions (``0666`` less the umask), like any other file the run writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: torch.save(obj, handle), binary=True)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text))


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stray = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file() and p.name.count(".") >= 3]
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = ("model", "optimizer", "epoch", "step"),
                    key: str = "--resume") -> dict[str, Any]:
    """Read a checkpoint written by the trainer with ``weights_only=True`` (tensors, containers, numbers and the
    :data:`SAFE_GLOBALS` only: a checkpoint cannot run code); a missing, truncated, foreign or unsafe file is a
    one-line :class:`CheckpointError`. ``required``: the entries it must hold (a model-only file for inference
    needs ``("model",)``); ``key``: the flag or config key the error messages name."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{key}: {str(path)!r} is a folder; give a .pt file written by a run (e.g. "
                              f"{str(path / 'last.pt')!r})")
    if not path.is_file():
        raise FileNotFoundError(f"{key}: no checkpoint at {str(path)!r}; give a .pt file written by a run")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        text = str(error)
        match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if match:
            why = (f"it holds a {match.group(1)} object, which a graph_mtl checkpoint never does (loading it could "
                   "run code)")
        else:
            why = "it is truncated, damaged or not a PyTorch checkpoint"
        raise CheckpointError(f"{key}: cannot read {str(path)!r}: {why}; give a last.pt or best.pt written "
                              "by graph-mtl train") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{key}: {str(path)!r} is not a graph_mtl training checkpoint (no {missing}); "
                              "give a last.pt or best.pt written by graph-mtl train")
    return state


def rng_state() -> dict[str, Any]:
    """The state of every random generator training draws from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
