"""OGB molecular benchmark: datasets x balancers x seeds from a YAML plan, and the engine's training throughput.

Results: test (and validation) score at the best validation epoch, mean +- std over seeds (the OGB protocol),
as a markdown table written after every finished configuration, so a stopped run keeps what it measured.

The plan (see ``benchmarks/configs/tox21_cpu.yaml``; every key is described in ``plan_runner.py``)::

    datasets: [ogbg-moltox21]
    seeds: [0, 1, 2]
    score: ogb/rocauc                                   # the result tabulated
    base: {preset: ogb-baseline, train: {epochs: 20}}   # a graph-mtl config, shared by every row
    rows:                                               # one table row each: a label and overrides
      - {label: "OGB view, ew", set: {data.task_view: multilabel}}
      - {label: "columns, pcgrad", set: {data.task_view: columns, train.balancer: pcgrad}}

Datasets are read from a scratch copy of ``--data-dir`` (``../shared/data`` by default; the loaders write a
``processed/`` folder next to ``raw/``, so the shared folder is never written to).

``--throughput`` instead times training epochs of the engine (``Trainer.train_epoch`` with equal weighting)
against a plain loop of the OGB-example kind written below, on the same model, data and batches, alternating
the two to cancel drift, and prints graphs per second.

Run ``python benchmarks/ogb_mol.py --help``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from graph_mtl.config import apply_override, from_dict
from graph_mtl.data.registry import load_dataset
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_balancer, build_loaders, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_runner import run_plan, scratch_root  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def run(args: argparse.Namespace) -> int:
    """The plan's datasets x rows x seeds through :func:`plan_runner.run_plan`."""
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    rows = args.rows.split(";") if args.rows else None
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="ogb_mol_"))
    print(run_plan(args.plan, Path(args.data_dir), scratch, Path(args.runs), args.out, seeds, rows))
    return 0


# ---------------------------------------------------------------------------------------------- throughput


def plain_epoch(model, loader: DataLoader, optimizer: torch.optim.Optimizer, task_name: str) -> None:
    """One epoch of the OGB example's loop: BCE with logits on the labelled entries, backward, step."""
    criterion = torch.nn.BCEWithLogitsLoss()
    model.train()
    for batch in loader:
        optimizer.zero_grad()
        pred = model(batch).preds[task_name]
        y = batch.y_graph
        labelled = ~torch.isnan(y)
        loss = criterion(pred[labelled], y[labelled])
        loss.backward()
        optimizer.step()


def throughput(args: argparse.Namespace) -> int:
    """Graphs per second of ``Trainer.train_epoch`` (equal weighting) and of :func:`plain_epoch`."""
    dataset_name = "ogbg-moltox21"
    root = scratch_root(Path(args.data_dir), {dataset_name: "ogbg_moltox21"},
                        Path(args.scratch or tempfile.mkdtemp(prefix="ogb_")))
    raw = {"preset": "ogb-baseline", "data": {"name": dataset_name, "root": str(root)},
           "train": {"progress": False, "grad_clip": None}}
    for item in args.set or []:
        apply_override(raw, item)
    config = from_dict(raw)
    dataset = load_dataset(config.data)
    (task,) = dataset.tasks
    torch.manual_seed(0)
    model = build_model(config.model, dataset)
    initial = copy.deepcopy(model.state_dict())
    graphs = len(dataset.splits["train"]) if args.max_steps is None else args.max_steps * config.data.batch_size
    times: dict[str, list[float]] = {"plain loop": [], "graph_mtl Trainer (ew)": []}
    for _ in range(args.repeats):
        for kind in times:
            model.load_state_dict(initial)
            loader = build_loaders(dataset, config.data.batch_size, seed=0)["train"]
            if args.max_steps is not None:
                loader = _first(loader, args.max_steps)
            started = time.perf_counter()
            if kind == "plain loop":
                plain_epoch(model, loader, torch.optim.Adam(model.parameters(), lr=config.train.lr), task.name)
            else:
                trainer = Trainer(model, build_balancer(config.train, [task.name]), config.train,
                                  dataset.splits["train"], log=lambda _: None)
                trainer.train_epoch(loader)
            times[kind].append(time.perf_counter() - started)
    plain = statistics.median(times["plain loop"])
    lines = [f"training throughput on {dataset_name} ({graphs} training graphs per epoch, batch "
             f"{config.data.batch_size}, {args.repeats} alternating epochs each, torch threads "
             f"{torch.get_num_threads()}, model {model.encoder!r})", "",
             "| loop | median s per epoch | graphs / s | ratio to plain loop |", "|---|---|---|---|"]
    for kind, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {kind} | {median:.2f} | {graphs / median:.0f} | {median / plain:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


class _first:
    """The first ``n`` batches of a loader (keeps the loader's ``generator`` for the trainer's reseeding)."""

    def __init__(self, loader: DataLoader, n: int) -> None:
        self.loader, self.n, self.generator = loader, n, loader.generator

    def __iter__(self):
        for k, batch in enumerate(self.loader):
            if k >= self.n:
                return
            yield batch

    def __len__(self) -> int:
        return min(self.n, len(self.loader))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default=str(REPO / "benchmarks" / "configs" / "tox21_cpu.yaml"))
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder holding the ogbg_mol* folders")
    parser.add_argument("--scratch", default=None, help="scratch root for the dataset copies (default: a temp dir)")
    parser.add_argument("--runs", default="runs/ogb_mol", help="where each configuration's runs go")
    parser.add_argument("--seeds", default=None, help="override the plan's seeds, e.g. 0,1,2")
    parser.add_argument("--rows", default=None, help="only these row labels, separated by ';'")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--throughput", action="store_true", help="time the engine against a plain loop instead")
    parser.add_argument("--repeats", type=int, default=3, help="throughput: epochs of each loop")
    parser.add_argument("--max-steps", type=int, default=None, help="throughput: batches per epoch")
    parser.add_argument("--set", action="append", help="throughput: config overrides, e.g. model.hidden=128")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return throughput(args) if args.throughput else run(args)


if __name__ == "__main__":
    sys.exit(main())
