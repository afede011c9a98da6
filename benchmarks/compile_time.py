"""``train.compile`` on this machine: compile time and step time of the compiled encoder against eager.

For each encoder (conv, hidden) the same :class:`~graph_mtl.engine.trainer.Trainer` step (forward, task losses,
step engine backward with the default balancer, gradient clipping, Adam) runs eagerly and with
``train.compile: true`` on the same fixed training batches of the embedded dataset (their sizes vary, as in
training: the compiled encoder has dynamic shapes). ``compile seconds`` is the wall time of the ``--warmup``
first compiled steps less the eager ones (tracing and code generation); the step times are the medians over the
``--steps`` next steps. One thread by default (``--threads``).

    python benchmarks/compile_time.py --out benchmarks/results/compile_cpu.md
    python benchmarks/compile_time.py --quick          # a smoke run (a tiny encoder, 2 steps)
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch_geometric
from reporting import emit

from graph_mtl.config import Config, load_config
from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.data.registry import load_dataset
from graph_mtl.engine.trainer import Trainer, resolve_device
from graph_mtl.run import build_balancer, build_model, make_loaders

#: encoders measured by default: (conv, hidden); the dataset's default model otherwise (4 layers, virtual node)
ENCODERS = (("gine", 128), ("gin", 128), ("gine", 300))


def default_trainer(config: Config, dataset: MultiTaskDataset) -> Trainer:
    """The trainer ``graph-mtl train`` builds for ``config`` on ``dataset`` (writing nothing, logging nothing)."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset)
    balancer = build_balancer(config.train, [t.name for t in dataset.tasks])
    return Trainer(model, balancer, config.train, dataset.splits["train"], device=resolve_device(config.device),
                   seed=config.seed, log=lambda _: None)


def timed_steps(trainer: Trainer, batches: list, warmup: int) -> tuple[float, list[float]]:
    """The wall time of the first ``warmup`` steps together, and each later step's."""
    trainer.model.train()
    started = time.perf_counter()
    for batch in batches[:warmup]:
        trainer.train_step(batch)
    first = time.perf_counter() - started
    times = []
    for batch in batches[warmup:]:
        started = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - started)
    return first, times


def measure(base: Config, dataset: MultiTaskDataset, batches: list, conv: str, hidden: int,
            warmup: int) -> dict[str, float | str | int]:
    """One table row: eager, then compiled, from the same initial weights on the same batches."""
    results = {}
    for compiled in (False, True):
        config = copy.deepcopy(base)
        config.model.conv, config.model.hidden, config.train.compile = conv, hidden, compiled
        torch._dynamo.reset()  # every row compiles from scratch
        results[compiled] = timed_steps(default_trainer(config, dataset), batches, warmup)
    eager = statistics.median(results[False][1])
    compiled_ms = statistics.median(results[True][1])
    return {"conv": conv, "hidden": hidden, "compile_s": results[True][0] - results[False][0],
            "eager_ms": 1e3 * eager, "compiled_ms": 1e3 * compiled_ms, "ratio": compiled_ms / eager}


def table(rows: list[dict], header: str) -> str:
    """The markdown report."""
    lines = [header, "",
             "| conv | hidden | compile s (first steps) | eager ms/step | compiled ms/step | compiled/eager |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['conv']} | {r['hidden']} | {r['compile_s']:.1f} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="first steps, whose time holds the compilation")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="smoke run: gine x 16, 2 layers, 2 + 2 steps")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = ["train.progress=false", f"device={args.device}"]
    encoders: Sequence[tuple[str, int]] = ENCODERS
    if args.quick:
        args.steps, args.warmup, encoders = 2, 2, (("gine", 16),)
        overrides += ["model.num_layers=2", "data.limit=200"]
    base = load_config(overrides=overrides)
    dataset = load_dataset(base.data)
    loader = make_loaders(base, dataset, None)["train"]
    batches = [batch.to(args.device) for batch, _ in zip(loader, range(args.warmup + args.steps))]
    if len(batches) <= args.warmup:
        raise SystemExit(f"compile_time: {len(batches)} training batches; lower --warmup below that")
    header = "\n".join([
        "# train.compile: compile time and step time against eager",
        "",
        f"- device {args.device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"torch_geometric {torch_geometric.__version__}, Python {platform.python_version()}, {platform.machine()}",
        f"- {dataset.name}: {len(dataset.tasks)} tasks, {len(batches)} fixed training batches of "
        f"{base.data.batch_size}; the default model otherwise ({base.model.num_layers} layers, virtual node), "
        f"balancer {base.train.balancer}, Adam",
        f"- compile s: the first {args.warmup} compiled steps less the eager ones; ms/step: median of the next "
        f"{args.steps} steps",
    ])
    rows = []
    for conv, hidden in encoders:
        rows.append(measure(base, dataset, batches, conv, hidden, args.warmup))
        print(f"{conv} x {hidden}: {rows[-1]}", file=sys.stderr, flush=True)
    report = table(rows, header)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
