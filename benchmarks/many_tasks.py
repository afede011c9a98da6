"""The many-task path: start-up, epoch and step time, and peak memory, against the number of tasks ``T``.

Generated molecular datasets (:func:`many_task_molecules`): random molecule-like graphs with OGB integer atom and
bond features and ``T`` sparse binary graph tasks, 71 % of the labels missing (ToxCast's fraction), the columns
named like assays: dotted (``ASSAY_3.b``) and spaced (``assay 4 ratio``) names.

Per ``T`` it measures

* **start-up**: ``build_model`` + ``build_balancer`` + ``Trainer(...)`` (labels, scalers and baselines of the
  training split), the time from a loaded dataset to the first step;
* **epoch**: one training epoch of ``ew`` over the training split plus one evaluation of the validation split,
  for the column view (``T`` tasks) and the multi-label view (one task of ``T`` outputs) of the same data;
* **step time per balancer family** (``ew``, a loss weighting, a rep-mode and an exact-mode gradient method):
  the median of ``--steps`` training steps on fixed batches, as a ratio to ``ew``;
* **peak memory**: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the peak resident set size of the
  process (``ru_maxrss``, a high-water mark over the whole run so far, so it only grows down the table).

Run ``python benchmarks/many_tasks.py --help``; ``--quick`` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch_geometric
from reporting import emit
from torch_geometric.data import Batch, Data

#: ToxCast's fraction of missing labels
MISSING = 0.71
#: OGB's atom and bond feature dimensions (ogb.utils.features)
ATOM_DIMS = (119, 5, 12, 12, 10, 6, 6, 2, 2)
BOND_DIMS = (5, 6, 2)


def column_names(num_tasks: int) -> list[str]:
    """Assay-like label names: every third dotted, every third spaced, the rest plain identifiers."""
    names = []
    for i in range(num_tasks):
        if i % 3 == 0:
            names.append(f"ASSAY_{i}.b")
        elif i % 3 == 1:
            names.append(f"assay {i} ratio")
        else:
            names.append(f"ASSAY_{i}")
    return names


def random_molecule(gen: torch.Generator) -> Data:
    """A connected molecule-like graph of 8 to 32 atoms: a random tree plus a few ring-closing bonds, with OGB
    integer atom (9) and bond (3) features in range (carbon-heavy element distribution)."""
    n = int(torch.randint(8, 33, (1,), generator=gen))
    parents = (torch.rand(n - 1, generator=gen) * torch.arange(1, n)).long()
    src = torch.cat([torch.arange(1, n), torch.randint(0, n, (n // 8,), generator=gen)])
    dst = torch.cat([parents, torch.randint(0, n, (n // 8,), generator=gen)])
    keep = src != dst
    src, dst = src[keep], dst[keep]
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    x = torch.stack([torch.randint(0, d, (n,), generator=gen) for d in ATOM_DIMS], dim=1)
    element = torch.tensor([5, 6, 7, 8, 15, 16])  # C N O F S Cl as atomic number - 1, weighted to carbon
    x[:, 0] = element[torch.multinomial(torch.tensor([6.0, 1, 1.5, 0.3, 0.3, 0.2]), n, True, generator=gen)]
    bond = torch.stack([torch.randint(0, d, (src.numel(),), generator=gen) for d in BOND_DIMS], dim=1)
    return Data(x=x, edge_index=edge_index, edge_attr=torch.cat([bond, bond]), num_nodes=n)


def many_task_molecules(num_graphs: int, num_tasks: int, missing: float = MISSING, seed: int = 0,
                        names: Sequence[str] | None = None):
    """A :class:`MultiTaskDataset` of ``num_graphs`` generated molecules and ``num_tasks`` binary graph tasks on
    the label matrix ``y_graph`` (``NaN`` = missing, each entry missing with probability ``missing``), split
    80/10/10 in order.

    Labels: task ``t`` is 1 where a seeded random projection of the molecule's element counts exceeds the task's
    own quantile (uniform in [0.5, 0.9]), so tasks are learnable, correlated and unbalanced like assays.
    """
    from graph_mtl.data.base import MultiTaskDataset
    from graph_mtl.tasks import Task

    gen = torch.Generator().manual_seed(seed)
    graphs = [random_molecule(gen) for _ in range(num_graphs)]
    counts = torch.stack([torch.bincount(g.x[:, 0], minlength=ATOM_DIMS[0])[[5, 6, 7, 8, 15, 16]] for g in graphs])
    counts = counts.float() / counts.sum(dim=1, keepdim=True)
    scores = counts @ torch.randn(counts.shape[1], num_tasks, generator=gen)
    scores += 0.1 * torch.randn(scores.shape, generator=gen)
    thresholds = torch.quantile(scores, 0.5 + 0.4 * torch.rand(num_tasks, generator=gen), dim=0).diagonal()
    labels = (scores > thresholds).float()
    labels[torch.rand(labels.shape, generator=gen) < missing] = float("nan")
    for graph, row in zip(graphs, labels):
        graph.y_graph = row.unsqueeze(0)
    names = list(names) if names is not None else column_names(num_tasks)
    tasks = [Task(name, "graph", "binary", target="y_graph", columns=(i,)) for i, name in enumerate(names)]
    n_train, n_valid = int(0.8 * num_graphs), int(0.1 * num_graphs)
    splits = {"train": graphs[:n_train], "valid": graphs[n_train:n_train + n_valid],
              "test": graphs[n_train + n_valid:]}
    info = {"source": "generated (benchmarks/many_tasks.py)",
            "missing_label_fraction": float(labels.isnan().float().mean())}
    return MultiTaskDataset(f"many{num_tasks}", tasks, splits, node_features="ogb", info=info)


def multilabel_view(dataset):
    """The same data as one multi-label task of ``T`` outputs (OGB's baseline view)."""
    from graph_mtl.data.base import MultiTaskDataset
    from graph_mtl.tasks import Task

    task = Task("all", "graph", "multilabel", num_outputs=len(dataset.tasks), target="y_graph")
    return MultiTaskDataset(dataset.name + "-multilabel", [task], dataset.splits, node_features="ogb")


# ---------------------------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mib(device: torch.device) -> float:
    """CUDA: the peak allocated memory since the last reset; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_trainer(dataset, balancer: str, args: argparse.Namespace, device: torch.device, **balancer_args):
    """A Trainer of ``dataset`` with ``balancer`` (nothing written), and the seconds its start-up took."""
    from graph_mtl.config import ModelConfig, TrainConfig
    from graph_mtl.engine.trainer import Trainer
    from graph_mtl.run import build_balancer, build_model

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model = build_model(ModelConfig(conv="gine", hidden=args.hidden, num_layers=args.layers, virtual_node=True,
                                    head_layers=args.head_layers, grouped_heads=GROUPED[args.grouped_heads]),
                        dataset)
    method_args = dict(balancer_args)
    grad_mode = method_args.pop("grad_mode", None)  # a setting of the step engine, not of the method
    cfg = TrainConfig(epochs=1, balancer=balancer, balancer_args=method_args, grad_mode=grad_mode, grad_clip=None,
                      progress=False)
    names = [t.name for t in dataset.tasks]
    trainer = Trainer(model, build_balancer(cfg, names), cfg, dataset.splits["train"], device=device,
                      seed=args.seed, log=lambda _: None)
    _sync(device)
    return trainer, time.perf_counter() - started


def epoch_seconds(trainer, dataset, args: argparse.Namespace, device: torch.device) -> float:
    """One training epoch plus one validation evaluation, in seconds."""
    from graph_mtl.run import build_loaders

    loaders = build_loaders(dataset, args.batch_size, args.seed)
    started = time.perf_counter()
    trainer.epoch = 1
    trainer.train_epoch(loaders["train"])
    trainer.evaluate(loaders["valid"])
    _sync(device)
    return time.perf_counter() - started


def step_ms(trainer, batches: list[Batch], warmup: int, device: torch.device) -> float:
    """Median milliseconds of ``trainer.train_step`` over ``batches`` after ``warmup`` untimed steps."""
    for batch in batches[:warmup]:
        trainer.train_step(batch)
    times = []
    for batch in batches:
        _sync(device)
        started = time.perf_counter()
        trainer.train_step(batch)
        _sync(device)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def fixed_batches(dataset, batch_size: int, count: int, device: torch.device) -> list[Batch]:
    graphs = dataset.splits["train"]
    batches = [Batch.from_data_list(graphs[k * batch_size:(k + 1) * batch_size]).to(device)
               for k in range(min(count, max(1, len(graphs) // batch_size)))]
    return [batches[k % len(batches)] for k in range(count)]


#: ``--grouped-heads`` -> ``model.grouped_heads``
GROUPED: dict[str, bool | None] = {"auto": None, "on": True, "off": False}

#: the balancer families of the step-time columns: (label, balancer, balancer_args)
FAMILIES: tuple[tuple[str, str, dict], ...] = (
    ("ew", "ew", {}),
    ("uw (loss weighting)", "uw", {}),
    ("pcgrad rep", "pcgrad", {"grad_mode": "rep"}),
    ("pcgrad exact", "pcgrad", {"grad_mode": "exact"}),
)


def measure(num_tasks: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Every figure of one row of the table."""
    dataset = many_task_molecules(args.graphs, num_tasks, seed=args.seed,
                                  names=[f"t{i}" for i in range(num_tasks)] if args.plain_names else None)
    row: dict = {"T": num_tasks, "graphs": args.graphs}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer, row["startup_s"] = start_trainer(dataset, "ew", args, device)
    row["heads"] = "grouped" if trainer.model.grouped is not None else "separate"
    row["epoch_s"] = epoch_seconds(trainer, dataset, args, device)
    multi = multilabel_view(dataset)
    ml_trainer, row["startup_ml_s"] = start_trainer(multi, "ew", args, device)
    row["epoch_ml_s"] = epoch_seconds(ml_trainer, multi, args, device)
    del ml_trainer
    batches = fixed_batches(dataset, args.batch_size, args.steps, device)
    steps = {}
    for label, balancer, extra in FAMILIES:
        if label != "ew" and num_tasks > args.exact_max_tasks and extra.get("grad_mode") == "exact":
            steps[label] = None
            continue
        family_trainer = trainer if label == "ew" else start_trainer(dataset, balancer, args, device, **extra)[0]
        steps[label] = step_ms(family_trainer, batches, args.warmup, device)
        print(f"T={num_tasks} {label}: {steps[label]:.0f} ms", file=sys.stderr, flush=True)
    row["step_ms"] = steps
    row["peak_mib"] = peak_mib(device)
    return row


def table(rows: list[dict]) -> str:
    """The Markdown table of the measured rows."""
    labels = [label for label, _, _ in FAMILIES]
    head = ["T", "heads", "start-up s", "epoch s (columns)", "epoch s (multilabel)", "epoch ratio",
            *[f"{label} step" for label in labels], "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ew = row["step_ms"]["ew"]
        cells = [str(row["T"]), row["heads"], f"{row['startup_s']:.2f}", f"{row['epoch_s']:.1f}",
                 f"{row['epoch_ml_s']:.1f}", f"{row['epoch_s'] / row['epoch_ml_s']:.2f}x"]
        for label in labels:
            ms = row["step_ms"][label]
            cells.append("-" if ms is None else f"{ms:.0f} ms" if label == "ew" else f"{ms / ew:.2f}x")
        cells.append(f"{row['peak_mib']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_text(args: argparse.Namespace, device: torch.device) -> str:
    return "\n".join([
        f"# Many-task path: generated molecules, {MISSING:.0%} labels missing",
        "",
        f"- device: {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, torch_geometric "
        f"{torch_geometric.__version__}, Python {platform.python_version()}",
        f"- data: {args.graphs} generated molecules (80/10/10), T sparse binary graph tasks, seed {args.seed}",
        f"- model: GINE + virtual node, {args.layers} layers x {args.hidden}, a {args.head_layers}-layer graph "
        "head per task "
        f"(--grouped-heads {args.grouped_heads}: grouped = one batched module of all heads)",
        f"- start-up: build_model + build_balancer + Trainer(...); epoch: ew, one training epoch of batches of "
        f"{args.batch_size} + one validation pass; steps: median of {args.steps} after {args.warmup} warm-up, "
        "as a ratio to ew (exact-mode rows above --exact-max-tasks are skipped: -)",
        "- peak MiB: CUDA max allocated, or on the CPU the process's peak RSS (a high-water mark of the whole run)",
        "",
    ])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", default="12,128,617", help="comma-separated numbers of tasks T")
    parser.add_argument("--graphs", type=int, default=8000, help="generated molecules (ToxCast has 8576)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per balancer family")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--exact-max-tasks", type=int, default=128,
                        help="skip exact-mode gradient rows above this T (T backward passes per step)")
    parser.add_argument("--head-layers", type=int, default=2,
                        help="linear layers per head (1: the column view is the multi-label view's function class)")
    parser.add_argument("--grouped-heads", choices=sorted(GROUPED), default="auto",
                        help="model.grouped_heads: auto (grouped from 32 tasks), on or off")
    parser.add_argument("--plain-names", action="store_true", help="name the tasks t0, t1, ... (identifiers)")
    parser.add_argument("--startup-only", action="store_true", help="measure the start-up time only")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: T=12,128, 400 molecules, hidden 32")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.graphs, args.hidden, args.steps = "12,128", 400, 32, 2
    try:
        args.task_counts = [int(t) for t in args.tasks.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--tasks: expected comma-separated integers, got {args.tasks!r}")
    if not args.task_counts or min(args.task_counts) < 1 or args.graphs < 20:
        parser.error("--tasks: every T must be >= 1; --graphs must be >= 20")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.startup_only:
        for num_tasks in args.task_counts:
            names = [f"t{i}" for i in range(num_tasks)] if args.plain_names else None
            dataset = many_task_molecules(args.graphs, num_tasks, seed=args.seed, names=names)
            seconds = start_trainer(dataset, "ew", args, device)[1]
            print(f"T={num_tasks}: start-up {seconds:.2f} s ({len(dataset.splits['train'])} training graphs)")
        return 0
    rows = []
    for num_tasks in args.task_counts:
        rows.append(measure(num_tasks, args, device))
    report = settings_text(args, device) + table(rows)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
