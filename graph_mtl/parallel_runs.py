"""Several training runs at once, each in its own spawned process (``train --seeds --jobs`` and
``compare --jobs``).

Runs are independent, so their results are those of one run at a time. A run whose config leaves
``train.threads`` unset gets ``cpu_count // jobs`` torch threads, so ``jobs`` runs share the cores instead of
oversubscribing them. Each run's console goes to its own log file; this process's log gets a line when a run
ends. A failure is raised once every other run has ended, so finished runs are never lost.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from graph_mtl.config import Config


@dataclass(frozen=True)
class PendingRun:
    """One run to train: ``name`` is how the log lines call it; ``resume`` and ``overwrite`` are
    :func:`graph_mtl.run.train`'s."""

    name: str
    config: Config
    folder: Path
    log_file: Path
    resume: Path | None = None
    overwrite: bool = False


def check_jobs(jobs: int) -> int:
    """``--jobs N``: an integer >= 1 (returned), or a one-line error naming the flag."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs: must be an integer >= 1, got {jobs!r}")
    return jobs


def threads_per_run(jobs: int) -> int:
    """Torch threads of each of ``jobs`` concurrent runs: the cores shared evenly, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)


def train_in_parallel(runs: list[PendingRun], jobs: int, log: Callable[[str], None] = print) -> dict[str, float]:
    """Train ``runs``, ``jobs`` at a time; returns each run's minutes by name (module docstring)."""
    threads = threads_per_run(check_jobs(jobs))
    minutes: dict[str, float] = {}
    failures: list[Exception] = []
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for run in runs:
            config = run.config
            if config.train.threads is None:
                config = dataclasses.replace(config, train=dataclasses.replace(config.train, threads=threads))
            run.log_file.parent.mkdir(parents=True, exist_ok=True)
            futures[pool.submit(_train_logged, dataclasses.replace(run, config=config))] = run
        for future in as_completed(futures):
            run = futures[future]
            try:
                minutes[run.name] = future.result()
                log(f"[parallel] {run.name}: done in {minutes[run.name]:.1f} min")
            except Exception as error:  # noqa: BLE001 - reported with its log, raised once all have ended
                failures.append(error)
                log(f"[parallel] {run.name}: failed ({error}); its console: {run.log_file}")
    if failures:
        raise failures[0]
    return minutes


def _train_logged(run: PendingRun) -> float:
    """One run in a worker process, its console into ``run.log_file``; the minutes it took."""
    from graph_mtl.run import train

    started = time.perf_counter()
    with run.log_file.open("a") as handle:
        def log(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()

        train(run.config, run.folder, resume=run.resume, log=log, overwrite=run.overwrite)
    return (time.perf_counter() - started) / 60
