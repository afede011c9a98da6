"""Run a benchmark plan: datasets x configurations x seeds, each a ``graph-mtl train --seeds`` run, into one
markdown table of mean +- std over seeds (test at the best validation epoch, and validation).

A plan is YAML::

    datasets: [ogbg-moltox21]            # data.name values
    folders: {cora: Cora}                # dataset -> folder under --data-dir (default: name with - -> _)
    seeds: [0, 1, 2]
    score: ogb/rocauc                    # which score to tabulate (a task name, ogb/<metric>...; ``ogb``: the
                                         # dataset's own OGB metric, ROC-AUC or RMSE)
    published: {ogbg-moltox21: "77.57 ± 0.62 (OGB, GIN-virtual)"}   # optional: a column of published figures
    base: {preset: ogb-baseline}         # a graph-mtl config shared by every row
    rows:                                # one table row each: a label and dotted-key overrides
      - {label: "ew", set: {train.balancer: ew}}
      - {label: "ew, ensembles of 2", ensemble: 2}   # each seed s: members K*s ... K*s+K-1 trained at once
                                                     # (train --seeds --jobs K), scored by their mean prediction

An ``ensemble: K`` row's test and valid are those of each seed's ensemble (``graph-mtl evaluate`` on its
``--seeds`` folder: the members' mean prediction, each member at its best validation epoch), mean +- std over
the plan's seeds; its minutes are wall-clock minutes per ensemble, its best epochs the members'.

Each dataset folder is copied from the data directory into a scratch root first (loaders write a
``processed/`` folder next to ``raw/``). The table is rewritten after every configuration, so a stopped run
keeps what it measured; each configuration's run folders (and its ``<label>.log`` beside them) stay under ``runs``.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from graph_mtl.config import Config, apply_override, from_dict
from graph_mtl.inference import evaluate_splits, load_run
from graph_mtl.run import mean_std, seed_summary, train_seeds


def scratch_root(data_dir: Path, folders: dict[str, str], scratch: Path) -> Path:
    """Copy each needed dataset folder of ``data_dir`` into ``scratch`` once; returns ``scratch``."""
    for folder in folders.values():
        if not (data_dir / folder).is_dir():
            raise SystemExit(f"benchmark: {data_dir / folder} not found; pass --data-dir with the dataset folders")
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


def score_key(score: str, scores: dict[str, Any]) -> str:
    """The results key tabulated for ``score``: itself, or for ``ogb`` the one ``ogb/<metric>`` key present."""
    if score != "ogb":
        return score
    keys = [k for k in scores if k.startswith("ogb/")]
    if len(keys) != 1:
        raise SystemExit(f"benchmark: score 'ogb' needs exactly one ogb/<metric> score, found {keys}")
    return keys[0]


def cell(entry: dict | None) -> str:
    return "n/a" if entry is None else mean_std(entry)


def write_table(path: Path | None, header: str, rows: list[dict], score: str,
                published: dict[str, str] | None = None) -> str:
    """The markdown table of finished rows (also written to ``path``); a ``published`` column where the plan
    names published figures."""
    extra = " published |" if published else ""
    lines = [header, "", "| dataset | configuration | metric | test | valid | seeds | best epochs | "
             f"minutes per run |{extra}", "|---|---|---|---|---|---|---|---|" + ("---|" if published else "")]
    for r in rows:
        more = f" {published.get(r['dataset'], '')} |" if published else ""
        lines.append(f"| {r['dataset']} | {r['label']} | {r['metric']} | {cell(r['test'])} | {cell(r['valid'])} | "
                     f"{r['seeds']} | {r['best_epochs']} | {r['minutes']:.1f} |{more}")
    text = "\n".join(lines) + "\n"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def train_ensembles(config: Config, seeds: list[int], members: int, folder: Path,
                    log) -> tuple[dict[str, Any], list[list[int]]]:
    """One ensemble per seed ``s`` in ``folder/ensemble<s>``: members ``members*s ... members*s+members-1``
    trained at once; the seed summary over the ensembles' valid and test scores, and each ensemble's members'
    best epochs."""
    results, best = [], []
    for seed in seeds:
        member_seeds = [members * seed + j for j in range(members)]
        started = time.perf_counter()
        train_seeds(config, member_seeds, folder / f"ensemble{seed}", log=log, jobs=members)
        ensemble = load_run(folder / f"ensemble{seed}")
        runs = [json.loads((folder / f"ensemble{seed}" / f"seed{m}" / "results.json").read_text())
                for m in member_seeds]
        best.append([r["best_epoch"] for r in runs])
        scores = evaluate_splits(ensemble, ("valid", "test"))
        results.append({"dataset": runs[0]["dataset"], "tasks": runs[0]["tasks"], "best_epoch": best[-1],
                        "epochs_run": [r["epochs_run"] for r in runs], "seconds": time.perf_counter() - started,
                        **scores})
        log(f"ensemble {seed} (members {member_seeds}): test {results[-1]['test'].get('summary')}")
    return seed_summary(results, seeds), best


def run_plan(plan_path: str | Path, data_dir: Path, scratch: Path, runs: Path, out: Path | None,
             seeds: list[int] | None = None, only_rows: list[str] | None = None) -> str:
    """Run every (dataset, row) of the plan over its seeds; returns the final table."""
    plan = yaml.safe_load(Path(plan_path).read_text())
    datasets, base, score = plan["datasets"], plan.get("base", {}), plan["score"]
    published = plan.get("published")
    seeds = seeds or plan.get("seeds", [0, 1, 2])
    folders = {name: plan.get("folders", {}).get(name, name.replace("-", "_")) for name in datasets}
    rows_plan = [r for r in plan["rows"] if only_rows is None or r["label"] in only_rows]
    root = scratch_root(data_dir, folders, scratch)
    header = (f"{Path(plan_path).name}: torch threads {torch.get_num_threads()}, base config "
              f"{yaml.safe_dump(base, default_flow_style=True).strip()}")
    results: list[dict] = []
    for dataset in datasets:
        for row in rows_plan:
            config = row_config(base, dataset, root, row.get("set", {}))
            folder = runs / dataset / "".join(c if c.isalnum() or c in "-_." else "_" for c in row["label"])
            folder.parent.mkdir(parents=True, exist_ok=True)  # the run folder itself is train_seeds' to create
            started = time.perf_counter()
            with folder.with_name(folder.name + ".log").open("w") as handle:
                log = lambda line, h=handle: print(line, file=h, flush=True)  # noqa: E731
                if row.get("ensemble", 1) == 1:
                    summary = train_seeds(config, seeds, folder, log=log)
                    best = [json.loads((folder / f"seed{s}" / "results.json").read_text())["best_epoch"]
                            for s in seeds]
                else:
                    summary, best = train_ensembles(config, seeds, int(row["ensemble"]), folder, log)
            key = score_key(score, summary["test"])
            results.append({"dataset": dataset, "label": row["label"], "metric": key, "test": summary["test"].get(key),
                            "valid": summary["valid"].get(key), "seeds": len(seeds), "best_epochs": best,
                            "minutes": (time.perf_counter() - started) / 60 / len(seeds)})
            print(f"{dataset} [{row['label']}]: test {key} {cell(results[-1]['test'])}", file=sys.stderr, flush=True)
            write_table(out, header, results, score, published)
    return write_table(out, header, results, score, published)
