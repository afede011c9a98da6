"""Step time of every balancer on one model and one fixed list of batches, as a ratio to equal weighting.

A step is ``zero_grad`` + forward + task losses + the step engine's ``backward`` + ``optimizer.step`` (Adam, no
gradient clipping; for FAMO by default also the re-evaluation of the batch after the step, as in the Trainer),
timed with ``time.perf_counter`` (CUDA synchronised before and after). Every row restarts from the same initial
weights with a fresh optimizer and runs ``--warmup`` untimed steps, then ``--steps`` timed steps over the same
batches; the table gives the median (and mean) over the timed steps.

The model is a GIN encoder with a virtual node (OGB atom encoder) and one graph head per task; the tasks are
``T`` synthetic binary graph tasks derived deterministically from the embedded dataset's real labels (see
:func:`synthetic_labels`). Rows: every registered balancer in its default mode, every gradient method in
``exact`` and ``rep`` mode, ``pcgrad`` with ``update_every=10``, FAMO with its same-batch re-evaluation and
with the free next-batch estimate, and ``naive``: a per-task reference loop
(:class:`NaivePCGrad`) with T backward passes and PCGrad's projection in Python loops, and ``ew`` once more at
the end (a drift check: the machine may be shared).
With ``--amp none,bf16`` all rows are measured again with the forward under bf16 autocast (``train.amp: bf16``),
labelled ``amp bf16``.

Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (absolute: model, optimizer state and
batches included) on CUDA; on the CPU it is not measured (``n/a``).

Run ``python benchmarks/step_time.py --help``; ``--quick`` is a smoke run of well under a minute.
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch_geometric
from reporting import emit
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from graph_mtl.balancers import BALANCERS, create
from graph_mtl.config import ModelConfig
from graph_mtl.data.base import MultiTaskDataset
from graph_mtl.data.molecules import load_embedded
from graph_mtl.engine.step import StepEngine
from graph_mtl.engine.trainer import amp_context, losses_after_step
from graph_mtl.models import MultiTaskGNN
from graph_mtl.run import build_model
from graph_mtl.tasks import Task, task_losses

NAIVE = "naive"


# ---------------------------------------------------------------------------------------------- data


def synthetic_labels(graphs: Sequence[Data], num_tasks: int, seed: int) -> Tensor:
    """``[n, T]`` binary labels from the real labels of ``graphs``, deterministic in ``seed``.

    Features per molecule: its 5 graph labels and the mean of each of its 4 node-label columns, standardised.
    Task ``i`` is ``1`` where a seeded Gaussian projection of the features exceeds its own quantile ``q_i``
    (``q_i`` uniform in [0.3, 0.7]), so the tasks are correlated, unequally balanced and never constant.
    """
    feats = torch.stack([torch.cat([g.y_graph.reshape(-1).float(), g.y_node.float().nanmean(dim=0)])
                         for g in graphs])
    mean, std = feats.nanmean(dim=0), feats.std(dim=0).clamp_min(1e-8)
    feats = torch.nan_to_num((feats - mean) / std)
    gen = torch.Generator().manual_seed(seed)
    scores = feats @ torch.randn(feats.shape[1], num_tasks, generator=gen)
    quantiles = 0.3 + 0.4 * torch.rand(num_tasks, generator=gen)
    thresholds = torch.stack([torch.quantile(scores[:, i], quantiles[i]) for i in range(num_tasks)])
    return (scores > thresholds).float()


def bench_tasks(num_tasks: int) -> list[Task]:
    """``T`` graph-level binary tasks reading column ``i`` of ``y_bench``."""
    return [Task(f"t{i}", "graph", "binary", target="y_bench", columns=(i,)) for i in range(num_tasks)]


def fixed_batches(graphs: list[Data], num_tasks: int, batch_size: int, count: int, seed: int,
                  device: torch.device) -> list[Batch]:
    """``count`` batches (cycling when the graphs run out) of a seeded shuffle, labelled, on ``device``."""
    labels = synthetic_labels(graphs, num_tasks, seed)
    for graph, row in zip(graphs, labels):
        graph.y_bench = row.unsqueeze(0)
    order = torch.randperm(len(graphs), generator=torch.Generator().manual_seed(seed)).tolist()
    available = max(1, len(order) // batch_size)
    batches = []
    for k in range(min(count, available)):
        chunk = [graphs[i] for i in order[k * batch_size:(k + 1) * batch_size]]
        batches.append(Batch.from_data_list(chunk).to(device))
    return [batches[k % len(batches)] for k in range(count)]


# ---------------------------------------------------------------------------------------------- naive loop


class NaivePCGrad:
    """Reference PCGrad the way per-task loops do it: the yardstick of the ``naive`` row.

    One ``autograd.grad`` with ``retain_graph=True`` per task over the shared parameters, flattened; then for
    each task a fresh random order of the other tasks and a Python loop of dot products, each compared with 0
    on the host; the sum of the projected gradients is written into ``.grad``. Heads get the plain gradient of
    their own loss by one backward of the summed losses.
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def backward(self, losses: dict[str, Tensor], *, shared_params: Sequence[nn.Parameter],
                 head_params: Sequence[nn.Parameter]) -> None:
        shared = list(shared_params)
        grads = []
        for loss in losses.values():
            parts = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                    for g, p in zip(parts, shared)]))
        projected = []
        for i, g_i in enumerate(grads):
            g = g_i.clone()
            others = [j for j in range(len(grads)) if j != i]
            self.rng.shuffle(others)
            for j in others:
                dot = torch.dot(g, grads[j])
                if dot < 0:  # a host sync per pair
                    g -= dot / grads[j].dot(grads[j]) * grads[j]
            projected.append(g)
        update = torch.stack(projected).sum(dim=0)
        for p, u in zip(shared, update.split([p.numel() for p in shared])):
            p.grad = u.view_as(p).clone() if p.grad is None else p.grad + u.view_as(p)
        head_grads = torch.autograd.grad(torch.stack(list(losses.values())).sum(), list(head_params),
                                         allow_unused=True)
        for p, g in zip(head_params, head_grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g


# ---------------------------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One measured configuration: a balancer (or the naive loop) with its arguments."""

    method: str
    mode: str
    engine: dict = field(default_factory=dict)  # StepEngine settings
    amp: str = "none"  # autocast dtype of the forward (train.amp's values)
    kwargs: dict = field(default_factory=dict)  # method arguments
    times_ms: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.times_ms) if self.times_ms else None


def plan_rows(methods: list[str] | None, modes: list[str] | None = None, amps: Sequence[str] = ("none",)
              ) -> list[Row]:
    """The rows to measure: ``ew`` first, the balancers by name, ``naive``, and ``ew`` again (drift check); then
    the same rows again for each further ``amps`` value (``bf16``: the forward under autocast, the mode
    labelled ``amp bf16``; ratios stay those to the first ``ew`` row, in full precision).

    ``modes`` keeps the rows whose mode starts with one of its words (``default``, ``exact``, ``rep``,
    ``loop``); the two ``ew`` rows are always kept.
    """
    rows = []
    for amp in amps:
        for row in _plan(methods, modes):
            if amp != "none":
                row.amp, row.mode = amp, f"{row.mode} amp {amp}"
            rows.append(row)
    return rows


def _plan(methods: list[str] | None, modes: list[str] | None) -> list[Row]:
    """:func:`plan_rows` in full precision."""
    names = sorted(BALANCERS)
    wanted = names + [NAIVE] if methods is None else methods
    unknown = [m for m in wanted if m not in BALANCERS and m != NAIVE]
    if unknown:
        raise SystemExit(f"step_time: unknown methods {unknown}; choose from {names + [NAIVE]}")
    rows = []
    for name in names:
        if name == "ew" or name not in wanted:
            continue
        if BALANCERS[name].family in ("gramian", "aggregator"):
            rows += [Row(name, "exact", engine={"grad_mode": "exact"}), Row(name, "rep", engine={"grad_mode": "rep"})]
            if name == "pcgrad":
                rows.append(Row(name, "exact every 10", engine={"grad_mode": "exact", "update_every": 10}))
        elif name == "famo":  # the paper's re-evaluation of the batch after the step, and the free estimate
            rows += [Row(name, "default (same batch)"),
                     Row(name, "default (next batch)", kwargs={"estimate": "next_batch"})]
        else:
            rows.append(Row(name, "default"))
    if NAIVE in wanted:
        rows.append(Row(NAIVE, "loop"))
    if modes is not None:
        rows = [r for r in rows if r.mode.split()[0] in modes]
    # the baseline first, and once more at the end: a drift check (the machine may be shared)
    return [Row("ew", "default"), *rows, Row("ew", "default again")]


# ---------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(row: Row, model: MultiTaskGNN, initial: dict, batches: list[Batch], warmup: int,
            device: torch.device, seed: int) -> None:
    """Fill ``row.times_ms`` (and ``row.peak_mib`` on CUDA), or ``row.error`` when the mode is rejected."""
    names = model.task_names
    torch.manual_seed(seed)
    model.load_state_dict(initial)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    shared = list(model.shared_parameters())
    task_params = {n: list(model.task_parameters(n)) for n in names}
    heads = [p for n in names for p in task_params[n]]
    last_shared = list(model.last_shared_parameters())
    try:
        balancer = (NaivePCGrad(seed) if row.method == NAIVE
                    else StepEngine(create(row.method, names, **row.kwargs), **row.engine))
    except ValueError as err:
        row.error = str(err).splitlines()[0]
        return

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        with amp_context(row.amp, device):  # the forward only, as in the Trainer
            out = model(batch)
        losses = task_losses(model.tasks, out.preds, batch)
        if isinstance(balancer, NaivePCGrad):
            balancer.backward(losses, shared_params=shared, head_params=heads)
        else:
            balancer.backward(losses, shared_params=shared, representation=out.shared_repr,
                              task_params=task_params, last_shared_params=last_shared)
        optimizer.step()
        if not isinstance(balancer, NaivePCGrad) and balancer.wants_losses_after_step:
            with amp_context(row.amp, device):
                balancer.after_step(losses_after_step(model, batch,
                                                      lambda preds, b: task_losses(model.tasks, preds, b)))

    try:
        for k in range(warmup):
            step(batches[k % len(batches)])
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for batch in batches:
            sync(device)
            started = time.perf_counter()
            step(batch)
            sync(device)
            row.times_ms.append((time.perf_counter() - started) * 1e3)
        if device.type == "cuda":
            row.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    except ValueError as err:
        row.times_ms.clear()
        row.error = str(err).splitlines()[0]
    finally:
        optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- report


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ratio(value: float | None, base: float | None) -> str:
    return "n/a" if value is None or not base else f"{value / base:.2f}"


def table(results: dict[int, list[Row]]) -> str:
    """The markdown table of all measured rows, ratios taken within each ``T``; notes for rejected rows."""
    lines = ["| method | mode | T | median ms | mean ms | ratio to ew | ratio to naive | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for num_tasks, rows in results.items():
        ew = next((r.median for r in rows if r.method == "ew"), None)
        naive = next((r.median for r in rows if r.method == NAIVE), None)
        for r in rows:
            to_naive = _ratio(r.median, naive) if r.method in ("pcgrad", NAIVE) else ""
            peak = "n/a" if r.peak_mib is None else f"{r.peak_mib:.0f}"
            lines.append(f"| {r.method} | {r.mode} | {num_tasks} | {_ms(r.median)} | {_ms(r.mean)} | "
                         f"{_ratio(r.median, ew)} | {to_naive} | {peak} |")
            if r.error:
                notes.append(f"- {r.method} ({r.mode}, T={num_tasks}) n/a: {r.error}")
    return "\n".join(lines + ([""] + notes if notes else []))


def settings_text(args: argparse.Namespace, device: torch.device, info: dict) -> str:
    """The settings printed above the table."""
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    memory = ("torch.cuda.max_memory_allocated over the timed steps (absolute)" if device.type == "cuda"
              else "not measured on the CPU (n/a)")
    return "\n".join([
        "# Balancer step time",
        "",
        f"- device: {device}{gpu}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"torch_geometric {torch_geometric.__version__}, Python {platform.python_version()}",
        f"- model: GIN + virtual node, {args.layers} layers x {args.hidden}, OGB atom encoder, one 2-layer graph "
        f"head per task; {info['shared']:,} shared parameters",
        f"- data: {args.steps} fixed batches of {args.batch_size} embedded molecules "
        f"({info['nodes']:.0f} nodes per batch on average), synthetic binary tasks, seed {args.seed}",
        f"- step: zero_grad + forward + losses + step engine backward (+ FAMO re-evaluation) + Adam step; "
        f"{args.warmup} warm-up steps, "
        f"then the median / mean over {args.steps} timed steps",
        f"- peak memory: {memory}",
        "",
    ])


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", default="12,128", help="comma-separated numbers of tasks T")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (one fixed batch each)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing each row")
    parser.add_argument("--batch-size", type=int, default=128, help="molecules per batch")
    parser.add_argument("--hidden", type=int, default=300, help="encoder width")
    parser.add_argument("--layers", type=int, default=5, help="encoder layers")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of balancers and '{NAIVE}' (ew is always measured)")
    parser.add_argument("--modes", default=None,
                        help="comma-separated subset of the modes default, exact, rep, loop (exact includes every 10)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: T=12, hidden 64, batches of 64, 5 steps, 1 warm-up, 1 thread unless --threads")
    parser.add_argument("--amp", default="none",
                        help="comma-separated autocast dtypes of the forward, none and/or bf16 (train.amp): the rows "
                             "once per value, labelled 'amp bf16'")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (after every row)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.hidden, args.batch_size, args.steps, args.warmup = "12", 64, 64, 5, 1
        args.threads = 1 if args.threads is None else args.threads
    try:
        args.task_counts = [int(t) for t in args.tasks.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--tasks: expected comma-separated integers, got {args.tasks!r}")
    if not args.task_counts or min(args.task_counts) < 1:
        parser.error("--tasks: every T must be >= 1")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
    args.amp_list = [a.strip() for a in args.amp.split(",") if a.strip()]
    if not args.amp_list or set(args.amp_list) - {"none", "bf16"}:
        parser.error(f"--amp: expected none and/or bf16, got {args.amp!r}")
    if args.mode_list and set(args.mode_list) - {"default", "exact", "rep", "loop"}:
        parser.error(f"--modes: expected a subset of default,exact,rep,loop, got {args.modes!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("step_time: --device cuda asked for but CUDA is not available")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dataset = load_embedded()
    graphs = [copy.copy(g) for g in dataset.splits["train"]]
    results: dict[int, list[Row]] = {}
    header = ""
    for num_tasks in args.task_counts:
        tasks = bench_tasks(num_tasks)
        batches = fixed_batches(graphs, num_tasks, args.batch_size, args.steps, args.seed, device)
        bench = MultiTaskDataset("embedded-bench", tasks, {"train": graphs, "valid": [], "test": []},
                                 node_features="ogb")
        torch.manual_seed(args.seed)
        cfg = ModelConfig(conv="gin", hidden=args.hidden, num_layers=args.layers, virtual_node=True)
        model = build_model(cfg, bench).to(device)
        initial = copy.deepcopy(model.state_dict())
        if not header:
            info = {"shared": sum(p.numel() for p in model.shared_parameters()),
                    "nodes": statistics.fmean(b.num_nodes for b in batches)}
            header = settings_text(args, device, info)
            print(header, file=sys.stderr, flush=True)
        rows = plan_rows(args.method_list, args.mode_list, args.amp_list)
        results[num_tasks] = []
        for row in rows:
            started = time.perf_counter()
            measure(row, model, initial, batches, args.warmup, device, args.seed)
            results[num_tasks].append(row)
            status = f"median {_ms(row.median)} ms" if row.error is None else f"n/a ({row.error})"
            print(f"T={num_tasks} {row.method} [{row.mode}]: {status} ({time.perf_counter() - started:.1f}s)",
                  file=sys.stderr, flush=True)
            if args.out is not None:
                done = sum(len(r) for r in results.values())
                partial = f"(partial: {done} rows so far)\n\n"
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(header + partial + table(results) + "\n")
        del model, initial, batches
    report = header + table(results)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
