"""OGB molecular benchmark: datasets x balancers x seeds from a YAML plan, and the engine's training throughput.

Results: test (and validation) score at the best validation epoch, mean +- std over seeds (the OGB protocol),
as a markdown table written after every finished configuration, so a stopped run keeps what it measured.

The plan (see ``benchmarks/configs/tox21_cpu.yaml``)::

    datasets: [ogbg-moltox21]
    seeds: [0, 1, 2]
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
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch_geometric.loader import DataLoader

from graph_mtl.config import Config, apply_override, from_dict
from graph_mtl.data.registry import load_dataset
from graph_mtl.engine.trainer import Trainer
from graph_mtl.run import build_balancer, build_loaders, build_model, train_seeds

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def scratch_root(data_dir: Path, names: list[str], scratch: Path) -> Path:
    """Copy each dataset folder (``ogbg-moltox21`` -> ``ogbg_moltox21``) into ``scratch`` once."""
    for name in names:
        folder = name.replace("-", "_")
        if not (data_dir / folder).is_dir():
            raise SystemExit(f"ogb_mol: {data_dir / folder} not found; pass --data-dir with the OGB folders")
        if not (scratch / folder).exists():
            shutil.copytree(data_dir / folder, scratch / folder)
    return scratch


def row_config(base: dict, dataset: str, root: Path, overrides: dict[str, Any]) -> Config:
    """The base config for ``dataset`` with a row's ``key: value`` overrides applied."""
    raw = copy.deepcopy(base)
    raw.setdefault("data", {}).update({"name": dataset, "root": str(root)})
    raw.setdefault("train", {})["progress"] = False
    for key, value in overrides.items():
        apply_override(raw, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return from_dict(raw)


def _cell(entry: dict | None) -> str:
    return "n/a" if entry is None else f"{entry['mean']:.4f} ± {entry['std']:.4f}"


def write_table(path: Path | None, header: str, rows: list[dict]) -> str:
    lines = [header, "", "| dataset | configuration | test | valid | seeds | best epochs | minutes per run |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['label']} | {_cell(r['test'])} | {_cell(r['valid'])} | "
                     f"{r['seeds']} | {r['best_epochs']} | {r['minutes']:.1f} |")
    text = "\n".join(lines) + "\n"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def run_plan(args: argparse.Namespace) -> int:
    plan = yaml.safe_load(Path(args.plan).read_text())
    datasets, seeds, base = plan["datasets"], plan.get("seeds", [0, 1, 2]), plan.get("base", {})
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    rows_plan = plan["rows"] if not args.rows else [r for r in plan["rows"] if r["label"] in args.rows.split(";")]
    root = scratch_root(Path(args.data_dir), datasets, Path(args.scratch or tempfile.mkdtemp(prefix="ogb_mol_")))
    header = (f"{Path(args.plan).name}: torch threads {torch.get_num_threads()}, base config "
              f"{yaml.safe_dump(base, default_flow_style=True).strip()}")
    results: list[dict] = []
    for dataset in datasets:
        for row in rows_plan:
            config = row_config(base, dataset, root, row.get("set", {}))
            metric = "ogb/" + load_metric(config)
            out = Path(args.runs) / dataset / row["label"].replace(" ", "_").replace(",", "")
            started = time.perf_counter()
            log_file = out / "log.txt"
            out.mkdir(parents=True, exist_ok=True)
            with log_file.open("w") as handle:
                summary = train_seeds(config, seeds, out, log=lambda line, h=handle: print(line, file=h, flush=True))
            best = [_best_epoch(out / f"seed{s}") for s in seeds]
            results.append({"dataset": dataset, "label": row["label"], "test": summary["test"].get(metric),
                            "valid": summary["valid"].get(metric), "seeds": len(seeds), "best_epochs": best,
                            "minutes": (time.perf_counter() - started) / 60 / len(seeds)})
            print(f"{dataset} [{row['label']}]: test {_cell(results[-1]['test'])}", file=sys.stderr, flush=True)
            write_table(args.out, header, results)
    print(write_table(args.out, header, results))
    return 0


def load_metric(config: Config) -> str:
    from graph_mtl.data.ogb_mol import open_ogb_dataset

    return open_ogb_dataset(config.data.name, config.data.root).eval_metric


def _best_epoch(run_dir: Path) -> int:
    import json

    return int(json.loads((run_dir / "results.json").read_text())["best_epoch"])


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
    root = scratch_root(Path(args.data_dir), [dataset_name], Path(args.scratch or tempfile.mkdtemp(prefix="ogb_")))
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
    return throughput(args) if args.throughput else run_plan(args)


if __name__ == "__main__":
    sys.exit(main())
