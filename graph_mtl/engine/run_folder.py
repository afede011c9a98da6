"""The run folder's integrity: refuse to overwrite a run by accident, one run at a time per folder (a lock held for
the run's life), and logs cut back to the checkpoint a run resumes from, so that a killed and resumed run leaves the
same files as an unbroken one."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
from pathlib import Path
from types import TracebackType

from graph_mtl.engine.checkpoint import atomic_write_text, remove_temp_files

LOCK_NAME = ".lock"
#: what ``graph-mtl train`` writes into a run folder; ``--overwrite`` removes these and nothing else
RUN_FILES: tuple[str, ...] = ("config.yaml", "metrics.csv", "steps.csv", "conflicts.jsonl", "results.json",
                              "best.pt", "last.pt", "summary.json", "summary.md", "tb", "report")


class RunFolderError(ValueError):
    """A run folder that cannot be used; ``str(error)`` is one line naming ``--out`` and the fix."""


def check_out_dir(out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse, before anything is loaded or written, an ``--out`` that is a file, cannot be written, or already
    holds a run (unless ``resume`` continues it or ``overwrite`` replaces it)."""
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise RunFolderError("--overwrite: cannot be combined with --resume (one continues the run in --out, the "
                             "other replaces it); drop one of them")
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out: {str(out_dir)!r} is a file, not a folder; choose a folder path for the run")
    existing = next((p for p in [out_dir, *out_dir.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise RunFolderError(f"--out: {str(existing)!r} is a file, so {str(out_dir)!r} cannot be a folder; "
                             "choose another --out")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"--out: {str(existing)!r} is not writable; choose a folder you can write to")
    if not resume and not overwrite and out_dir.is_dir() and any(p.name != LOCK_NAME for p in out_dir.iterdir()):
        raise RunFolderError(f"--out: {str(out_dir)!r} already holds files (a run?); pass --resume to continue "
                             "it, --overwrite to replace it, or choose another --out")


class RunFolder:
    """The run folder, locked for the life of a ``with`` block.

    The lock is an exclusive ``fcntl.flock`` on ``OUT/.lock``: a second run into the same folder is refused while
    the first holds it, and the operating system releases it when the process ends, however it ends (so the lock
    file a killed run leaves behind blocks nothing). ``enabled=False`` (the other processes of a data-parallel
    run) does nothing.
    """

    def __init__(self, out_dir: str | Path, enabled: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._handle: io.TextIOWrapper | None = None

    def __enter__(self) -> RunFolder:
        if not self.enabled:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        handle = (self.out_dir / LOCK_NAME).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunFolderError(f"--out: another graph-mtl run is writing to {str(self.out_dir)!r} (it holds "
                                 f"{LOCK_NAME}); wait for it to finish or choose another --out") from None
        self._handle = handle
        remove_temp_files(self.out_dir)  # left by writes a killed run never finished; no one else writes here
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def clear(self) -> None:
        """Remove a previous run's files (:data:`RUN_FILES` and ``seed<N>`` folders); other files stay."""
        if not self.enabled:
            return
        for path in self.out_dir.iterdir():
            if path.name in RUN_FILES or (path.name.startswith("seed") and path.name[4:].isdigit()):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def cut_logs(self, step: int) -> None:
        """Cut ``steps.csv`` and ``conflicts.jsonl`` back to ``step`` (that of the checkpoint a run resumes from):
        rows written after it, or half-written by a killed run, go. (``metrics.csv`` is rewritten whole from the
        checkpoint's history.)"""
        if not self.enabled:
            return
        _cut_csv(self.out_dir / "steps.csv", "step", step)
        _cut_jsonl(self.out_dir / "conflicts.jsonl", step)


def _cut_csv(path: Path, column: str, last: int) -> None:
    """Keep the header and the complete rows of ``path`` whose ``column`` is at most ``last``."""
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if not lines:
        return
    header = next(csv.reader([lines[0]]))
    if column not in header:
        return
    index = header.index(column)
    kept = [lines[0]]
    for line in lines[1:]:
        if not line.endswith("\n"):
            break  # the last row of a killed write
        row = next(csv.reader([line]), [])
        if len(row) != len(header) or not row[index].isdigit() or int(row[index]) > last:
            break
        kept.append(line)
    if len(kept) < len(lines):
        atomic_write_text("".join(kept), path)


def _cut_jsonl(path: Path, last_step: int) -> None:
    """Keep the complete records of ``path`` whose ``step`` is at most ``last_step``."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > last_step:
            break
        kept.append(line)
    if len(kept) < len(lines):
        atomic_write_text("".join(kept), path)
