"""Is training limited by the data loader or by the model step? The embedded dataset and the default model.

For each ``data.num_workers`` the loaders ``graph-mtl train`` builds (``run.make_loaders``: persistent workers,
pinned batches on CUDA) are timed over whole training epochs: (a) iterating the training loader alone, each
batch moved to the device, (b) a full training epoch (``Trainer.train_epoch``: loading, forward, backward,
optimiser). One untimed epoch of each first (worker start-up, lazy state), then the median of ``--epochs``.
``loader fraction`` is (a) / (b): near 1 the loader limits throughput (more workers, or a cheaper collate,
would help), near 0 the model step does. One thread by default (``--threads``).

    python benchmarks/loader_bound.py --out benchmarks/results/loader_cpu.md
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch_geometric

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile_time import default_trainer  # noqa: E402
from reporting import emit

from graph_mtl.config import load_config  # noqa: E402
from graph_mtl.data.registry import load_dataset  # noqa: E402
from graph_mtl.engine.trainer import Trainer, to_device  # noqa: E402
from graph_mtl.run import make_loaders  # noqa: E402


def load_epoch(loader, device: torch.device) -> None:
    """(a): every training batch loaded and moved to ``device``."""
    for batch in loader:
        to_device(batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_epoch(trainer: Trainer, loader, device: torch.device) -> None:
    """(b): a full training epoch."""
    trainer.train_epoch(loader)
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_seconds(run: Callable[[], object], epochs: int) -> float:
    """The median wall time of ``epochs`` calls of ``run`` after one untimed call."""
    run()
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workers", default="0,2", help="comma-separated data.num_workers values")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs of each kind")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--limit", type=int, default=None, help="data.limit (fewer molecules, for a smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    dataset = None
    for workers in [int(w) for w in args.workers.split(",")]:
        config = load_config(overrides=["train.progress=false", f"device={args.device}",
                                        f"data.num_workers={workers}", f"data.limit={args.limit or 'null'}"])
        dataset = dataset or load_dataset(config.data)
        loader = make_loaders(config, dataset, None, device)["train"]
        trainer = default_trainer(config, dataset)

        loading = epoch_seconds(functools.partial(load_epoch, loader, device), args.epochs)
        training = epoch_seconds(functools.partial(train_epoch, trainer, loader, device), args.epochs)
        rows.append((workers, len(loader), loading, training))
        print(f"num_workers {workers}: loader {loading:.2f} s, epoch {training:.2f} s", file=sys.stderr, flush=True)
    lines = [
        "# Loader or model step: what limits a training epoch",
        "",
        f"- device {args.device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"torch_geometric {torch_geometric.__version__}, Python {platform.python_version()}",
        f"- {dataset.name}: {len(dataset.splits['train'])} training molecules, batches of {config.data.batch_size}; "
        f"the default model ({trainer.model.encoder!r}), balancer "
        f"{config.train.balancer}, Adam",
        f"- median of {args.epochs} epochs after an untimed one; loader fraction = loader alone / full epoch",
        "",
        "| num_workers | batches | loader alone s/epoch | training s/epoch | loader fraction | limits throughput |",
        "|---|---|---|---|---|---|",
    ]
    for workers, batches, loading, training in rows:
        fraction = loading / training
        lines.append(f"| {workers} | {batches} | {loading:.2f} | {training:.2f} | {fraction:.2f} | "
                     f"{'the loader' if fraction >= 0.5 else 'the model step'} |")
    report = "\n".join(lines)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
