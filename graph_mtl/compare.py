r"""``graph-mtl compare``: balancers against single-task models, by :math:`\Delta_m\%`, over seeds.

One config, several balancers and seeds. Each run is a folder under ``OUT``: ``single/<task>/`` (one single-task
model per task, trained with the first seed and equal weighting on ``data.tasks: [task]``) and
``<balancer>/seed<N>/`` (one multi-task model per balancer and seed). A folder with ``results.json`` is finished and
reused; one with ``last.pt`` only was interrupted and resumes from it; the rest are trained. A folder written with
another config is an error (use another ``OUT``), so a table never mixes settings.

:math:`\Delta_m\% = \frac{100}{T} \sum_t (-1)^{h_t} (M_t - B_t) / B_t` (Maninis et al. 2019), where :math:`M_t` is
the multi-task model's test metric of task :math:`t`, :math:`B_t` the single-task model's and :math:`h_t = 1`
when a larger metric is better: lower is better, 0 is "as good as single-task models". It is computed per seed,
then averaged. With a main task (``--main-task``, e.g. Planetoid's ``class`` beside auxiliary tasks), :math:`T`
is that one task: the auxiliary tasks only serve it. Known single-task results (``--baselines``) replace training.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from graph_mtl.config import Config, ConfigError, TrainConfig, from_dict
from graph_mtl.tasks import MAXIMISED_METRICS

SINGLE = "single-task"


def delta_m(values: dict[str, float], baselines: dict[str, float], maximise: dict[str, bool]) -> float:
    r""":math:`\frac{100}{T} \sum_t (-1)^{h_t} (M_t - B_t) / B_t` over the tasks of ``baselines`` (see module doc)."""
    if not baselines:
        raise ValueError("delta_m: no baseline task")
    terms = []
    for task, base in baselines.items():
        if task not in values:
            raise ValueError(f"delta_m: task {task!r} has a baseline but no multi-task value")
        if base == 0:
            raise ValueError(f"--baselines: the single-task value of {task!r} is 0; delta-m divides by it")
        sign = -1.0 if maximise[task] else 1.0
        terms.append(sign * (values[task] - base) / base)
    return 100.0 * float(np.mean(terms))


def read_baselines(path: str | Path) -> dict[str, float]:
    """Single-task test metrics from a JSON object ``{"task": value}`` or a CSV with columns ``task,value``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--baselines: file {str(path)!r} does not exist; give a JSON or CSV of task,value")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            rows = list(csv.DictReader(text.splitlines()))
            if rows and not {"task", "value"} <= set(rows[0]):
                raise ValueError
            raw = {row["task"]: row["value"] for row in rows}
        return {str(k): float(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"--baselines: {path} must be a JSON object {{task: value}} or a CSV with columns "
                         "task,value") from None


@dataclasses.dataclass
class Plan:
    """What one compare trains and how it scores."""

    config: Config
    balancers: list[str]
    seeds: list[int]
    out: Path
    metrics: dict[str, str]  # task -> its metric, in model order
    reference: list[str]  # the tasks of delta-m
    known: dict[str, float]  # single-task results given by --baselines

    @property
    def tasks(self) -> list[str]:
        return list(self.metrics)

    @property
    def maximise(self) -> dict[str, bool]:
        return {task: metric in MAXIMISED_METRICS for task, metric in self.metrics.items()}


def make_plan(config: Config, balancers: list[str], seeds: list[int], out: str | Path,
              baselines: str | Path | None = None, main_task: str | None = None) -> Plan:
    """Check every name before anything trains: balancers, the main task, the baseline file's tasks."""
    from graph_mtl.balancers import BALANCERS
    from graph_mtl.data.registry import load_dataset

    unknown = [b for b in balancers if b not in BALANCERS]
    if unknown or not balancers:
        raise ValueError(f"--balancers: unknown {unknown}; choose from {sorted(BALANCERS)}")
    if len(set(balancers)) != len(balancers) or SINGLE in balancers:
        raise ValueError(f"--balancers: give each balancer once, got {balancers}")
    dataset = load_dataset(config.data)
    tasks = [t.name for t in dataset.tasks]
    if main_task is not None and main_task not in tasks:
        raise ValueError(f"--main-task: {main_task!r} is not a task of {dataset.name}; its tasks: {tasks}")
    reference = [main_task] if main_task is not None else tasks
    known = read_baselines(baselines) if baselines is not None else {}
    extra = [t for t in known if t not in tasks]
    if extra:
        raise ValueError(f"--baselines: {extra} are not tasks of {dataset.name}; its tasks: {tasks}")
    metrics = {t.name: t.metric for t in dataset.tasks}
    return Plan(config, balancers, seeds, Path(out), metrics, reference, known)


def run_configs(plan: Plan) -> dict[tuple[str, int], tuple[Path, Config]]:
    """Every run to make, by ``(balancer or "single-task/<task>", seed)``: its folder and config."""
    base = dataclasses.replace(plan.config, train=dataclasses.replace(plan.config.train, progress=False))
    runs: dict[tuple[str, int], tuple[Path, Config]] = {}
    for task in plan.reference:
        if task in plan.known:
            continue
        data = dataclasses.replace(base.data, tasks=[task])
        train = dataclasses.replace(base.train, balancer="ew", balancer_args={}, grad_mode=None, update_every=None,
                                    chunk_size=None)
        runs[(f"{SINGLE}/{task}", plan.seeds[0])] = (plan.out / "single" / task,
                                                      dataclasses.replace(base, seed=plan.seeds[0], data=data,
                                                                          train=train))
    for balancer in plan.balancers:
        train = balancer_train(base.train, balancer, plan.tasks)
        for seed in plan.seeds:
            runs[(balancer, seed)] = (plan.out / balancer / f"seed{seed}", dataclasses.replace(base, seed=seed,
                                                                                                train=train))
    return runs


def balancer_train(train: TrainConfig, balancer: str, tasks: list[str]) -> TrainConfig:
    """``train`` with ``balancer``; a ``train.grad_mode`` the method does not take (a loss weighting, or a method
    whose state is per parameter) becomes the method's own mode, so one compare can set ``rep`` for the rest."""
    from graph_mtl.balancers import create
    from graph_mtl.balancers.args import ArgumentError
    from graph_mtl.engine.step import StepEngine

    chosen = dataclasses.replace(train, balancer=balancer)
    if train.grad_mode is None:
        return chosen
    try:  # the engine decides which modes a method takes; other bad arguments surface when the run is built
        StepEngine(create(balancer, tasks, **train.balancer_args), grad_mode=train.grad_mode)
    except ValueError as error:
        if isinstance(error, ArgumentError) and error.argument == "grad_mode":
            return dataclasses.replace(chosen, grad_mode=None)
    return chosen


def run_state(folder: Path, config: Config) -> str:
    """``done`` (results.json), ``resume`` (last.pt only) or ``new``; an error if the folder holds another config."""
    written = folder / "config.yaml"
    if written.is_file() and not _same_config(written, config):
        raise ValueError(f"--out: {folder} was trained with another config; use a new --out folder or delete it")
    if (folder / "results.json").is_file():
        return "done"
    return "resume" if (folder / "last.pt").is_file() else "new"


def _same_config(path: Path, config: Config) -> bool:
    """Whether the config written at ``path``, read by this version (a key added since takes its default, so an
    upgrade does not orphan finished runs), equals ``config``; ``train.threads`` says how a run was computed, not
    what (``--jobs`` sets it), and is not compared."""
    try:
        written = from_dict(yaml.safe_load(path.read_text()) or {})
    except (ConfigError, TypeError, ValueError):
        return False

    def identity(cfg: Config) -> Any:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=None))
        return yaml.safe_load(yaml.safe_dump(cfg.to_dict()))

    return identity(written) == identity(config)


def execute(plan: Plan, log: Callable[[str], None] = print, jobs: int = 1) -> dict[tuple[str, int], dict[str, Any]]:
    """Train what is missing (resuming interrupted runs) and return every run's ``results.json``.

    ``jobs > 1`` trains that many runs at once (:mod:`graph_mtl.parallel_runs`), each run's console in
    ``OUT/logs/<run>.log``. Runs are independent, so the results are those of ``jobs = 1``."""
    from graph_mtl.parallel_runs import PendingRun, train_in_parallel
    from graph_mtl.run import train

    runs = run_configs(plan)
    pending = []
    for number, ((name, seed), (folder, config)) in enumerate(runs.items(), start=1):
        state = run_state(folder, config)
        log(f"[compare {number}/{len(runs)}] {name} seed {seed}: {state} ({folder})")
        if state == "done":
            continue
        resume = folder / "last.pt" if state == "resume" else None
        if jobs == 1:
            train(config, folder, resume=resume, log=log)
        else:
            log_file = plan.out / "logs" / f"{name.replace('/', '__')}-seed{seed}.log"
            pending.append(PendingRun(f"{name} seed {seed}", config, folder, log_file, resume))
    if pending:
        train_in_parallel(pending, jobs, log)
    return {key: json.loads((folder / "results.json").read_text()) for key, (folder, _) in runs.items()}


def _test_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in result["test"]["per_task"].items() if v is not None}


def summarise(plan: Plan, results: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Baselines, per-balancer per-task mean/std, delta-m per seed, its mean/std, the rank (1 = lowest), the
    gradient mode that ran (``-`` for a loss weighting) and minutes per run."""
    from graph_mtl.run import build_balancer

    baselines = dict(plan.known)
    for task in plan.reference:
        if task not in baselines:
            single = _test_metrics(results[(f"{SINGLE}/{task}", plan.seeds[0])])
            if task not in single:
                raise ValueError(f"data: the single-task model of {task!r} has no test {plan.metrics[task]} (one "
                                 "class only in the test split?); use a larger data.limit or give --baselines")
            baselines[task] = single[task]
    rows = {}
    configs = run_configs(plan)
    for balancer in plan.balancers:
        per_seed = [_test_metrics(results[(balancer, seed)]) for seed in plan.seeds]
        deltas = [delta_m(m, baselines, plan.maximise) for m in per_seed]
        mode = build_balancer(configs[(balancer, plan.seeds[0])][1].train, plan.tasks).grad_mode
        mode = "-" if mode == "auto" else mode
        rows[balancer] = {"tasks": {t: _mean_std([m[t] for m in per_seed if t in m]) for t in plan.tasks},
                          "delta_m": _mean_std(deltas), "delta_m_seeds": deltas, "grad_mode": mode,
                          "minutes": _mean_std([results[(balancer, seed)].get("seconds", math.nan) / 60
                                                for seed in plan.seeds])}
    order = sorted(rows, key=lambda b: rows[b]["delta_m"]["mean"])
    for rank, balancer in enumerate(order, start=1):
        rows[balancer]["rank"] = rank
    return {"seeds": plan.seeds, "tasks": plan.tasks, "metrics": plan.metrics, "reference": plan.reference,
            "baselines": baselines, "baselines_given": sorted(plan.known), "balancers": rows}


def _mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    array = np.array(values, dtype=float)
    if array.size == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0}


def _cell(stat: dict[str, float], digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}g} ± {stat['std']:.2g}"


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Header and rows: single-task first, then the balancers by rank."""
    tasks = summary["tasks"]
    arrows = {t: "↑" if summary["metrics"][t] in MAXIMISED_METRICS else "↓" for t in tasks}
    header = ["method", *[f"{t} ({summary['metrics'][t]} {arrows[t]})" for t in tasks], "Δm% ↓", "rank",
              "grad_mode", "min/run"]
    base = summary["baselines"]
    single = [SINGLE, *[f"{base[t]:.4g}" if t in base else "-" for t in tasks], "0", "-", "-", "-"]
    rows = [header, single]
    for balancer, row in sorted(summary["balancers"].items(), key=lambda kv: kv[1]["rank"]):
        rows.append([balancer, *[_cell(row["tasks"][t]) for t in tasks], _cell(row["delta_m"], 3), str(row["rank"]),
                     row["grad_mode"], f"{row['minutes']['mean']:.1f}"])
    return rows


def write_outputs(summary: dict[str, Any], out: Path) -> list[Path]:
    """``compare.md``, ``compare.csv``, ``compare.json`` and ``compare.png`` in ``out``."""
    rows = table_rows(summary)
    reference = ", ".join(summary["reference"])
    md = [f"Test metrics, mean ± std over seeds {summary['seeds']}; Δm% against single-task models on {reference} "
          "(lower is better).", "",
          "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    paths = [out / "compare.md", out / "compare.csv", out / "compare.json", out / "compare.png"]
    paths[0].write_text("\n".join(md) + "\n")
    with paths[1].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *[f"{t}_{s}" for t in summary["tasks"] for s in ("mean", "std")],
                         "delta_m_mean", "delta_m_std", "rank", "grad_mode", "minutes_mean"])
        writer.writerow([SINGLE, *[x for t in summary["tasks"] for x in (summary["baselines"].get(t, ""), "")],
                         0.0, "", "", "", ""])
        for balancer, row in summary["balancers"].items():
            writer.writerow([balancer, *[x for t in summary["tasks"] for x in (row["tasks"][t]["mean"],
                                                                              row["tasks"][t]["std"])],
                             row["delta_m"]["mean"], row["delta_m"]["std"], row["rank"], row["grad_mode"],
                             row["minutes"]["mean"]])
    paths[2].write_text(json.dumps(summary, indent=2) + "\n")
    _plot(summary, paths[3])
    return paths


def _plot(summary: dict[str, Any], path: Path) -> None:
    """Δm% per balancer (mean, std error bar, each seed a dot), best first."""
    from matplotlib.figure import Figure

    ranked = sorted(summary["balancers"].items(), key=lambda kv: kv[1]["rank"])
    fig = Figure(figsize=(max(4.0, 0.6 * len(ranked) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(ranked))
    ax.bar(x, [r["delta_m"]["mean"] for _, r in ranked], yerr=[r["delta_m"]["std"] for _, r in ranked],
           color="tab:blue", alpha=0.7, capsize=3)
    for i, (_, row) in enumerate(ranked):
        ax.plot([i] * len(row["delta_m_seeds"]), row["delta_m_seeds"], "k.", markersize=4)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(x, [name for name, _ in ranked], rotation=45, ha="right")
    ax.set_ylabel("Δm % (lower is better)")
    ax.set_title(f"vs single-task on {', '.join(summary['reference'])[:60]}", fontsize="medium")
    fig.savefig(path, dpi=110)


def compare(config: Config, balancers: list[str], seeds: list[int], out: str | Path,
            baselines: str | Path | None = None, main_task: str | None = None,
            log: Callable[[str], None] = print, jobs: int = 1) -> dict[str, Any]:
    """Plan, train what is missing, summarise and write the table (module docstring); returns the summary."""
    plan = make_plan(config, balancers, seeds, out, baselines, main_task)
    plan.out.mkdir(parents=True, exist_ok=True)
    summary = summarise(plan, execute(plan, log, jobs))
    write_outputs(summary, plan.out)
    return summary
