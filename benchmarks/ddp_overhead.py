"""What a balancer's own reduction costs in a data-parallel step (``graph_mtl/engine/distributed.py``).

Spawns ``--procs`` processes (gloo on the CPU, NCCL on CUDA with one GPU per process), each training on its
shard of the same global batches through :meth:`Trainer.train_step` - sharded losses, the balancer, the
gradient reduction after the step and the Adam step. For each balancer row the table gives, on rank 0, the
median step time, its ratio to equal weighting's data-parallel step, and the median time per step spent in
each kind of collective:

* ``losses``: the ``2T`` loss sums and counts (every method);
* ``balancer``: what the method reduces on top of that - the Jacobian ``[t, P]`` of the shared parameters
  (exact mode, GradNorm's at ``W``) or the ``[t, t]`` Gramian and its scale (rep mode) - and its share of
  the step: the overhead of making the method exact on the global batch;
* ``same all-reduce alone``: one all-reduce of as many bytes as the balancer reduces per step, timed after a
  barrier - the transfer without the wait for a slower process that the in-step times include;
* ``gradients``: the one flat all-reduce of every gradient not already summed (what DDP would do anyway).

Collective times include waiting for the slower process. Model and batches as in ``step_time.py``: a GIN with
virtual node and ``T`` synthetic binary graph tasks from the embedded molecules.

Run ``python benchmarks/ddp_overhead.py --help``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch_geometric.data import Batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import emit
from step_time import bench_tasks, fixed_batches  # noqa: E402

from graph_mtl.balancers import create  # noqa: E402
from graph_mtl.config import ModelConfig, TrainConfig  # noqa: E402
from graph_mtl.data.base import MultiTaskDataset  # noqa: E402
from graph_mtl.data.molecules import load_embedded  # noqa: E402
from graph_mtl.engine.distributed import GradientSync  # noqa: E402
from graph_mtl.engine.step import StepEngine  # noqa: E402
from graph_mtl.engine.trainer import Trainer  # noqa: E402
from graph_mtl.run import build_model  # noqa: E402

#: (label, balancer, step-engine settings)
ROWS: list[tuple[str, str, dict]] = [
    ("ew", "ew", {}),
    ("uw", "uw", {}),
    ("gradnorm", "gradnorm", {}),
    ("pcgrad exact", "pcgrad", {"grad_mode": "exact"}),
    ("pcgrad rep", "pcgrad", {"grad_mode": "rep"}),
    ("mgda rep", "mgda", {"grad_mode": "rep"}),
    ("upgrad exact", "upgrad", {"grad_mode": "exact"}),
    ("pcgrad exact, update_every 10", "pcgrad", {"grad_mode": "exact", "update_every": 10}),
]
BALANCER_KINDS = ("jacobian", "gramian", "balancer")


def worker(rank: int, world: int, args: argparse.Namespace, init: str, out: str) -> None:
    """One process: every row's timed steps on this rank's shards; rank 0 writes the rows to ``out``."""
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    tdist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init}", rank=rank,
                             world_size=world)
    try:
        graphs = [copy.copy(g) for g in load_embedded().splits["train"]]
        tasks = bench_tasks(args.tasks)
        whole = fixed_batches(graphs, args.tasks, args.batch_size, args.steps, args.seed, torch.device("cpu"))
        shards = [Batch.from_data_list(b.index_select(list(range(rank, b.num_graphs, world)))).to(device)
                  for b in whole]
        bench = MultiTaskDataset("bench", tasks, {"train": graphs, "valid": [], "test": []}, node_features="ogb")
        results = []
        for label, name, kwargs in ROWS:
            torch.manual_seed(args.seed)
            model = build_model(ModelConfig(conv="gin", hidden=args.hidden, num_layers=args.layers,
                                            virtual_node=True), bench)
            sync = GradientSync(rank, world)
            cfg = TrainConfig(lr=1e-3, grad_clip=None, progress=False, standardize_targets=False)
            engine = StepEngine(create(name, [t.name for t in tasks]), **kwargs)
            trainer = Trainer(model, engine, cfg, graphs, device=device, sync=sync)
            times, collective = [], {k: [] for k in ("losses", "balancer", "gradients")}
            for k in range(args.warmup + args.steps):
                before = {kind: v[0] for kind, v in sync.stats.items()}
                tdist.barrier()
                if cuda:
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                trainer.train_step(shards[k % len(shards)])
                if cuda:
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - started
                if k < args.warmup:
                    continue
                times.append(elapsed * 1e3)
                spent = {kind: v[0] - before.get(kind, 0.0) for kind, v in sync.stats.items()}
                collective["losses"].append(spent.get("losses", 0.0) * 1e3)
                collective["gradients"].append(spent.get("gradients", 0.0) * 1e3)
                collective["balancer"].append(sum(spent.get(kind, 0.0) for kind in BALANCER_KINDS) * 1e3)
            megabytes = sum(sync.summary().get(kind, {}).get("megabytes", 0.0) for kind in BALANCER_KINDS)
            per_step = megabytes / (args.warmup + args.steps)
            results.append({"label": label, "median": statistics.median(times),
                            **{kind: statistics.median(v) for kind, v in collective.items()},
                            "balancer_mb": per_step, "alone": reduction_alone(per_step, device)})
            if rank == 0:
                print(f"{label}: {results[-1]['median']:.1f} ms", file=sys.stderr, flush=True)
        if rank == 0:
            shared = sum(p.numel() for p in model.shared_parameters())
            torch.save({"rows": results, "shared": shared,
                        "nodes": statistics.fmean(b.num_nodes for b in whole)}, out)
    finally:
        tdist.destroy_process_group()


def reduction_alone(megabytes: float, device: torch.device, repeats: int = 5) -> float:
    """Median ms of one all-reduce of ``megabytes`` of float32 after a barrier: the transfer itself, without
    the wait for a slower process that the in-step times include."""
    if megabytes == 0:
        return 0.0
    buffer = torch.ones(max(1, int(megabytes * 2**20 / 4)), device=device)
    times = []
    for _ in range(repeats):
        tdist.barrier()
        started = time.perf_counter()
        tdist.all_reduce(buffer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def table(rows: list[dict]) -> str:
    base = next(r["median"] for r in rows if r["label"] == "ew")
    lines = ["| balancer | median step ms | ratio to DDP ew | losses ms | balancer reduction ms | "
             "balancer reduction / step | balancer MB per step | same all-reduce alone ms | gradients ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['median']:.1f} | {r['median'] / base:.2f} | {r['losses']:.2f} | "
                     f"{r['balancer']:.2f} | {100 * r['balancer'] / r['median']:.1f}% | {r['balancer_mb']:.2f} | "
                     f"{r['alone']:.2f} | {r['gradients']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--procs", type=int, default=2, help="processes (one GPU each on CUDA)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--tasks", type=int, default=12, help="number of tasks T")
    parser.add_argument("--batch-size", type=int, default=128, help="molecules per global batch")
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: hidden 64, batches of 64, 3 steps")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.batch_size, args.steps, args.warmup = 64, 64, 3, 1
    if args.procs < 2:
        parser.error("--procs: a data-parallel run needs at least 2 processes")
    if args.device == "cuda" and torch.cuda.device_count() < args.procs:
        parser.error(f"--procs: {args.procs} CUDA processes need as many GPUs; "
                     f"{torch.cuda.device_count()} visible")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_embedded()  # build the cache once, before the processes read it
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.pt")
        mp.spawn(worker, args=(args.procs, args, str(Path(tmp) / "init"), out), nprocs=args.procs, join=True)
        saved = torch.load(out)
    header = "\n".join([
        "# Data-parallel step: the balancer's reduction", "",
        f"- {args.procs} processes on {args.device} ({'NCCL' if args.device == 'cuda' else 'gloo'}), "
        f"{args.threads} torch thread(s) each, torch {torch.__version__}",
        f"- model: GIN + virtual node, {args.layers} x {args.hidden}, {saved['shared']:,} shared parameters; "
        f"T = {args.tasks} synthetic binary graph tasks",
        f"- data: global batches of {args.batch_size} embedded molecules ({saved['nodes']:.0f} nodes), "
        f"{args.batch_size // args.procs} per process; medians over {args.steps} steps after {args.warmup} "
        "warm-up steps, rank 0's clock", "",
    ])
    report = header + table(saved["rows"])
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
