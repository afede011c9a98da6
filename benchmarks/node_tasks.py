"""Node-level multi-task benchmark: Planetoid with auxiliary tasks vs the single-task model, and the time of
one epoch of neighbour-sampled training on a generated graph of one million edges.

``python benchmarks/node_tasks.py`` runs the plan ``configs/planetoid.yaml`` (see ``plan_runner.py``: Cora and
CiteSeer, single-task and multi-task rows, 5 seeds, class accuracy on the test nodes at the best validation
epoch). ``--neighbor-timing`` instead builds a block-model graph of ~1M directed edges and times one training
epoch of a 2-layer SAGE encoder with ``NeighborLoader``-style sampling (fan-out 10, 5; batches of 1,024 seed
nodes; losses on the seeds only) under equal weighting and PCGrad.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_runner import run_plan  # noqa: E402

from graph_mtl.config import ModelConfig, TrainConfig  # noqa: E402
from graph_mtl.data.neighbor import neighbor_loaders  # noqa: E402
from graph_mtl.data.synthetic import load_sbm  # noqa: E402
from graph_mtl.engine.trainer import Trainer  # noqa: E402
from graph_mtl.run import build_balancer, build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def neighbor_timing(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    data = load_sbm(num_nodes=args.nodes, avg_degree=args.degree, num_features=32)
    built = time.perf_counter() - started
    train_nodes = int(data.splits["train"][0].node_mask.sum())
    lines = [f"graph: {data.info['num_nodes']:,} nodes, {data.info['num_edges']:,} directed edges (built in "
             f"{built:.1f}s); {train_nodes:,} training seed nodes, batches of {args.batch_size}, fan-out "
             f"{args.fanout}, 2-layer SAGE 64 wide, 3 node tasks, torch threads {torch.get_num_threads()}", "",
             "| balancer | sampler | batches | epoch seconds | seed nodes / s |", "|---|---|---|---|---|"]
    for balancer in ("ew", "pcgrad"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(conv="sage", hidden=64, num_layers=2, virtual_node=False), data)
        cfg = TrainConfig(epochs=1, balancer=balancer, progress=False)
        trainer = Trainer(model, build_balancer(cfg, model.task_names), cfg, data.splits["train"],
                          log=lambda _: None)
        loaders = neighbor_loaders(data, args.fanout, args.batch_size, seed=0)
        sampler = type(loaders["train"]).__name__
        started = time.perf_counter()
        trainer.train_epoch(loaders["train"])
        seconds = time.perf_counter() - started
        lines.append(f"| {balancer} | {sampler} | {len(loaders['train'])} | {seconds:.1f} | "
                     f"{train_nodes / seconds:,.0f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default=str(REPO / "benchmarks" / "configs" / "planetoid.yaml"))
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--scratch", default=None)
    parser.add_argument("--runs", default="runs/node_tasks")
    parser.add_argument("--seeds", default=None, help="override the plan's seeds, e.g. 0,1,2")
    parser.add_argument("--rows", default=None, help="only these row labels, separated by ';'")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--neighbor-timing", action="store_true", help="time neighbour-sampled training instead")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--degree", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--fanout", type=lambda s: [int(x) for x in s.split(",")], default=[10, 5])
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.neighbor_timing:
        return neighbor_timing(args)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="node_tasks_"))
    rows = args.rows.split(";") if args.rows else None
    print(run_plan(args.plan, Path(args.data_dir), scratch, Path(args.runs), args.out, seeds, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
