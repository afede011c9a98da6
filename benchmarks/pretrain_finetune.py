"""Pretrain on the embedded molecule tasks, then fine-tune on ogbg-moltox21, against training from scratch.

1. Pretraining: ``graph-mtl train`` on the embedded dataset (RDKit descriptor tasks, graph and atom level), once
   (seed 0), with the model section shared by every run below.
2. For each seed of ``--seeds``, two runs of the same ogbg-moltox21 config (12 binary tasks, ``ew``): ``scratch``
   (fresh weights) and ``finetune`` (``train.init_from`` = the pretraining run: its encoder; tox21's heads are all
   new, no task name is shared; optionally ``train.freeze_epochs``).
3. Model selection at the best validation epoch (``train.monitor: gain``: with every task's trivial ROC-AUC 0.5
   the gain is ``2 * mean ROC-AUC - 1``, so this is the best mean validation ROC-AUC); the table gives the test
   ROC-AUC of OGB's evaluator (``ogb/rocauc``) there, mean ± std over seeds, and minutes per run.

The encoder transfers because both datasets are featurised the same way: the embedded molecules go through
OGB's ``smiles2graph`` (9 integer atom features, 3 integer bond features) and ogbg-moltox21 was built with it, so
both use OGB's atom and bond embedding tables of the same sizes. The script checks this on tox21's first
molecules (their SMILES through ``smiles2graph`` against the graphs OGB ships) before training.

The OGB folder is read from a scratch copy (OGB's loader writes ``processed/`` next to ``raw/``) of
``--data-dir/ogbg_moltox21`` (default: ``$GRAPH_MTL_DATA``).

Full run (CPU; not timed yet: the quick run's minutes per run times the ratio of graphs and epochs)::

    python benchmarks/pretrain_finetune.py --data-dir DATA --seeds 0,1,2 --out pretrain_finetune.md

Smoke test (a minute)::

    python benchmarks/pretrain_finetune.py --data-dir DATA --quick --seeds 0,1
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ogb.utils import smiles2graph

from graph_mtl.config import Config, from_dict
from graph_mtl.data.ogb_mol import DATA_ENV, open_ogb_dataset
from graph_mtl.run import train

DATASET = "ogbg-moltox21"
FOLDER = "ogbg_moltox21"
SCORE = "ogb/rocauc"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Epochs, sizes and limits of the full run or of ``--quick``."""
    if args.quick:
        return {"hidden": 32, "layers": 2, "pretrain_epochs": 1, "epochs": 2, "pretrain_limit": 300, "limit": 150}
    return {"hidden": args.hidden, "layers": 4, "pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs,
            "pretrain_limit": None, "limit": None}


def config(data: dict[str, Any], epochs: int, s: dict[str, Any], seed: int, **train: Any) -> Config:
    """A run config: the shared model section, ``ew``, model selection on the validation gain."""
    return from_dict({
        "seed": seed, "device": "cpu", "data": {"batch_size": 64, **data},
        "model": {"conv": "gine", "hidden": s["hidden"], "num_layers": s["layers"], "dropout": 0.2},
        "train": {"epochs": epochs, "lr": 1e-3, "balancer": "ew", "monitor": "gain", "progress": False, **train},
    })


def check_featurisation(root: Path, count: int = 50) -> None:
    """tox21's first ``count`` molecules: ``smiles2graph`` of their SMILES equals the graphs OGB ships."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # OGB's processing
        dataset = open_ogb_dataset(DATASET, root)
    with gzip.open(root / FOLDER / "mapping" / "mol.csv.gz", "rt") as handle:
        smiles = [row["smiles"] for _, row in zip(range(count), csv.DictReader(handle))]
    for i, smi in enumerate(smiles):
        graph, shipped = smiles2graph(smi), dataset[i]
        same = (np.array_equal(graph["node_feat"], shipped.x.numpy())
                and np.array_equal(graph["edge_feat"], shipped.edge_attr.numpy()))
        if not same:
            raise SystemExit(f"featurisation: molecule {i} ({smi}) of {DATASET} differs from smiles2graph's graph; "
                             "the pretrained encoder would not transfer")


def run(args: argparse.Namespace) -> str:
    """Pretrain once, then scratch vs fine-tune per seed; returns the markdown table."""
    data_dir = Path(args.data_dir or os.environ.get(DATA_ENV, ""))
    if not (data_dir / FOLDER).is_dir():
        raise SystemExit(f"pretrain_finetune: no {FOLDER} folder in {str(data_dir)!r}; pass --data-dir or set "
                         f"${DATA_ENV}")
    seeds = [int(x) for x in args.seeds.split(",")]
    s = settings(args)
    work = Path(args.runs or tempfile.mkdtemp(prefix="pretrain_finetune_"))
    root = work / "data"
    if not (root / FOLDER).exists():
        shutil.copytree(data_dir / FOLDER, root / FOLDER)
    check_featurisation(root)
    quiet = (lambda _: None) if not args.verbose else print
    torch.set_num_threads(args.threads)

    pre = train(config({"name": "embedded", "limit": s["pretrain_limit"]}, s["pretrain_epochs"], s, seed=0),
                work / "pretrain", log=quiet, overwrite=True)
    print(f"pretrained on embedded ({len(pre['tasks'])} tasks) in {pre['seconds'] / 60:.1f} min")
    tox21 = {"name": DATASET, "root": str(root), "limit": s["limit"]}
    results: dict[str, list[dict[str, Any]]] = {"scratch": [], "finetune": []}
    for seed in seeds:
        for name in results:
            extra = ({"init_from": str(work / "pretrain"), "freeze_epochs": args.freeze_epochs}
                     if name == "finetune" else {})
            out = train(config(tox21, s["epochs"], s, seed, **extra), work / f"{name}_seed{seed}", log=quiet,
                        overwrite=True)
            results[name].append(out)
            print(f"seed {seed} {name}: test {SCORE} {out['test']['summary'][SCORE]:.4f} "
                  f"(valid {out['valid']['summary'][SCORE]:.4f}, best epoch {out['best_epoch']}), "
                  f"{out['seconds'] / 60:.1f} min")
    lines = [f"{DATASET}, seeds {seeds}, hidden {s['hidden']} x {s['layers']} layers, {s['epochs']} epochs "
             f"(pretraining: embedded, {s['pretrain_epochs']} epochs, {pre['seconds'] / 60:.1f} min"
             f"{'; --quick' if args.quick else ''})", "",
             "| start | test ROC-AUC | valid ROC-AUC | minutes per run |", "|---|---|---|---|"]
    for name, runs in results.items():
        label = name if name == "scratch" else f"finetune (freeze {args.freeze_epochs} epochs)"
        lines.append(f"| {label} | {mean_std([r['test']['summary'][SCORE] for r in runs])} | "
                     f"{mean_std([r['valid']['summary'][SCORE] for r in runs])} | "
                     f"{statistics.mean(r['seconds'] for r in runs) / 60:.2f} |")
    return "\n".join(lines)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample std), or the value alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help=f"the folder holding {FOLDER}/ (default: ${DATA_ENV})")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (default: 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and epochs: checks that it runs")
    parser.add_argument("--hidden", type=int, default=128, help="encoder width (default: 128)")
    parser.add_argument("--epochs", type=int, default=10, help="tox21 epochs (default: 10)")
    parser.add_argument("--pretrain-epochs", type=int, default=5, help="pretraining epochs (default: 5)")
    parser.add_argument("--freeze-epochs", type=int, default=0, help="train.freeze_epochs of the fine-tuning runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--runs", help="folder of the runs and the data copy (default: a new temporary folder)")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--verbose", action="store_true", help="the runs' epoch lines")
    args = parser.parse_args()
    table = run(args)
    print()
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
