"""Parameter count and step time of every sharing architecture (``model.arch``) relative to hard sharing.

Every architecture is built from the same model config (the ``graph-mtl train`` defaults unless overridden) for the
embedded dataset's tasks, and trained with equal weighting (``ew``) by the :class:`~graph_mtl.engine.trainer.Trainer`'s
own step (forward, task losses, the step engine's backward, soft sharing's penalty, gradient clipping, Adam) on the
same fixed batch. After ``--warmup`` untimed steps the architectures take their timed steps in turns (one step each
per round, so a load change of a shared machine hits all of them alike); the table gives the median over
``--steps`` steps and its ratio to ``hard``'s.

    python benchmarks/architectures.py --out benchmarks/results/architectures.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import platform
import statistics
import time
from pathlib import Path

import torch
from reporting import emit
from torch_geometric.data import Batch

from graph_mtl.config import DataConfig, TrainConfig, load_config
from graph_mtl.data.registry import load_dataset
from graph_mtl.engine.trainer import Trainer
from graph_mtl.models.sharing import ARCHS
from graph_mtl.run import build_balancer, build_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architectures (hard is added)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per architecture")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per architecture first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=512, help="molecules of the embedded dataset to load")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a ModelConfig field, e.g. --set hidden=64 --set experts=2")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    archs = ["hard", *[a for a in args.archs.split(",") if a and a != "hard"]]
    model_cfg = load_config(overrides=[f"model.{item}" for item in args.set]).model  # validated as a run's

    with contextlib.redirect_stdout(io.StringIO()):
        dataset = load_dataset(DataConfig(name="embedded", limit=args.limit))
    batch = Batch.from_data_list(dataset.splits["train"][:args.batch_size])
    cfg = TrainConfig(balancer="ew", progress=False)
    trainers, params = {}, {}
    for arch in archs:
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(model_cfg, arch=arch), dataset)
        params[arch] = sum(p.numel() for p in model.parameters())
        trainers[arch] = Trainer(model, build_balancer(cfg, [t.name for t in dataset.tasks]), cfg,
                                 dataset.splits["train"], log=lambda _: None)
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.train_step(batch)
    times: dict[str, list[float]] = {arch: [] for arch in archs}
    for _ in range(args.steps):
        for arch, trainer in trainers.items():
            started = time.perf_counter()
            trainer.train_step(batch)
            times[arch].append(time.perf_counter() - started)

    median = {arch: statistics.median(t) for arch, t in times.items()}
    lines = [
        f"Sharing architectures on `embedded` ({len(dataset.tasks)} tasks: "
        f"{sum(t.level == 'graph' for t in dataset.tasks)} graph, {sum(t.level == 'node' for t in dataset.tasks)} "
        f"node), one batch of {batch.num_graphs} molecules, balancer ew; hidden {model_cfg.hidden}, "
        f"{model_cfg.num_layers} layers, experts {model_cfg.experts}, task_experts {model_cfg.task_experts}, "
        f"ple_levels {model_cfg.ple_levels}; median of {args.steps} steps after {args.warmup} warm-up steps; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
        "threads.",
        "",
        "| arch | parameters | x hard | step ms (median) | x hard |",
        "|---|---:|---:|---:|---:|",
    ]
    for arch in archs:
        lines.append(f"| {arch} | {params[arch]:,} | {params[arch] / params['hard']:.2f} | "
                     f"{1000 * median[arch]:.1f} | {median[arch] / median['hard']:.2f} |")
    table = "\n".join(lines)
    emit(table, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
