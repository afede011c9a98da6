"""Peak memory and step time of ``grad_mode: exact`` (``J [T, P]`` formed) against ``grad_mode: gramian``
(``G = J J^T`` built layer by layer, ``engine/gramian.py``) for UPGrad, on the model and batches of
``benchmarks/step_time.py`` (imported, not copied): GIN + virtual node, OGB atom encoder, one graph head per
task, batches of embedded molecules with ``T`` synthetic binary tasks.

Each (mode, T) runs in a fresh subprocess, so one configuration's allocations never hide another's. A step is
``zero_grad`` + forward + losses + the step engine's ``backward`` + Adam step. Peak memory is the growth over the
steps of the process's peak resident set (``resource.getrusage().ru_maxrss`` after the steps minus before them,
model and batches already built) on the CPU, and ``torch.cuda.max_memory_allocated`` minus the memory allocated
before the steps on CUDA. Step time is the median over the timed steps.

Run ``python benchmarks/gramian_memory.py --help``; ``--quick`` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import emit
from step_time import bench_tasks, fixed_batches, sync  # noqa: E402

from graph_mtl.balancers import create  # noqa: E402
from graph_mtl.config import ModelConfig  # noqa: E402
from graph_mtl.data.base import MultiTaskDataset  # noqa: E402
from graph_mtl.data.molecules import load_embedded  # noqa: E402
from graph_mtl.engine.step import StepEngine  # noqa: E402
from graph_mtl.run import build_model  # noqa: E402
from graph_mtl.tasks import task_losses  # noqa: E402

MODES = ("exact", "gramian")


def measure(mode: str, num_tasks: int, args: argparse.Namespace) -> dict:
    """One configuration in this process: ``{"peak_mb", "median_ms", "shared", "nodes"}``."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    graphs = [copy.copy(g) for g in load_embedded().splits["train"]]
    batches = fixed_batches(graphs, num_tasks, args.batch_size, args.warmup + args.steps, args.seed, device)
    bench = MultiTaskDataset("embedded-bench", bench_tasks(num_tasks), {"train": graphs, "valid": [], "test": []},
                             node_features="ogb")
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(conv="gin", hidden=args.hidden, num_layers=args.layers, virtual_node=True),
                        bench).to(device).train()
    names = model.task_names
    shared = list(model.shared_parameters())
    task_params = {n: list(model.task_parameters(n)) for n in names}
    engine = StepEngine(create(args.method, names), grad_mode=mode)
    engine.watch(model, shared)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    del graphs
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for k, batch in enumerate(batches):
        sync(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        losses = task_losses(model.tasks, model(batch).preds, batch)
        engine.backward(losses, shared_params=shared, task_params=task_params)
        optimizer.step()
        sync(device)
        if k >= args.warmup:
            times.append((time.perf_counter() - started) * 1e3)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**10
    return {"peak_mb": peak_mb, "median_ms": statistics.median(times), "shared": sum(p.numel() for p in shared),
            "nodes": statistics.fmean(b.num_nodes for b in batches)}


def run_fresh(mode: str, num_tasks: int, argv: Sequence[str]) -> dict:
    """:func:`measure` in a fresh Python process (its result is the last line of its output)."""
    command = [sys.executable, __file__, *argv, "--worker", f"{mode}:{num_tasks}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gramian_memory: {mode} T={num_tasks} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, results: dict[tuple[str, int], dict]) -> str:
    """The settings and the markdown table (time ratio to ``exact`` at the same ``T``)."""
    first = next(iter(results.values()))
    memory = "torch.cuda.max_memory_allocated growth" if args.device == "cuda" else "ru_maxrss growth (peak RSS)"
    lines = [
        f"# {args.method}: exact (J formed) vs gramian (G layer by layer)",
        "",
        f"- device: {args.device}, torch threads {args.threads}, torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        f"- model: GIN + virtual node, {args.layers} layers x {args.hidden}, {first['shared']:,} shared parameters; "
        f"batches of {args.batch_size} embedded molecules ({first['nodes']:.0f} nodes on average)",
        f"- each row a fresh process; {args.warmup} warm-up + {args.steps} timed steps; peak MB: {memory} over "
        "all its steps",
        "",
        "| mode | T | peak MB | step ms | time ratio vs exact |",
        "|---|---|---|---|---|",
    ]
    for (mode, num_tasks), r in results.items():
        base = results.get(("exact", num_tasks))
        ratio = f"{r['median_ms'] / base['median_ms']:.2f}" if base else "n/a"
        lines.append(f"| {mode} | {num_tasks} | {r['peak_mb']:.0f} | {r['median_ms']:.0f} | {ratio} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="12,128", help="comma-separated numbers of tasks T")
    parser.add_argument("--method", default="upgrad", help="a Gramian method")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.hidden, args.layers, args.batch_size, args.steps, args.warmup = "3", 16, 2, 8, 1, 0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        mode, num_tasks = args.worker.split(":")
        print(json.dumps(measure(mode, int(num_tasks), args)))
        return 0
    results = {}
    for num_tasks in [int(t) for t in args.tasks.split(",") if t.strip()]:
        for mode in MODES:
            results[(mode, num_tasks)] = r = run_fresh(mode, num_tasks, argv)
            print(f"{mode} T={num_tasks}: {r['peak_mb']:.0f} MB, {r['median_ms']:.0f} ms", file=sys.stderr, flush=True)
    text = report(args, results)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
