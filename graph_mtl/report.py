"""Plots and a Markdown report of a run folder written by ``graph-mtl train``.

:func:`write_report` reads ``metrics.csv`` (one row per epoch; required), ``steps.csv`` (per step), ``results.json``
and ``conflicts.jsonl`` (the gradient-conflict monitor, ``train.monitor_every``) and writes into ``RUN/report/``:

* ``train_loss.png``: each task's mean training loss per epoch (log scale when all are positive);
* ``valid_metrics.png``: each task's validation metric per epoch (one panel per task, or per metric when there
  are many tasks);
* ``weights.png``: the balancer's weights per step (a moving average over long runs);
* ``cosine_mean.png`` / ``cosine_last_epoch.png``: the mean pairwise cosine of the task gradients over the run
  and over its last epoch;
* ``conflict_rate.png``: the share of task pairs whose gradients conflict (cosine < 0) per observation, and per
  pair when there are few tasks;
* ``report.md``: every plot, the per-task test table and the pairs that conflict most.

A missing input skips its plots with a line in the report. Figures are drawn on :class:`matplotlib.figure.Figure`
objects (the Agg renderer) without pyplot, so no global backend is changed.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: tasks up to which a heatmap shows its values in the cells
ANNOTATE_LIMIT = 12
#: tasks up to which the conflict-rate plot has one line per pair
PAIR_LINES_LIMIT = 6
#: tasks up to which the validation plot has one panel per task
PANEL_LIMIT = 16


def write_report(run_dir: str | Path) -> Path:
    """Write the plots and ``report.md`` of ``run_dir`` into ``run_dir/report/``; returns the path of ``report.md``.

    Raises:
        ValueError: ``run_dir`` has no ``metrics.csv`` (it is not a run folder).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").is_file():
        seeds = sorted(p.name for p in run_dir.glob("seed*") if (p / "metrics.csv").is_file())
        hint = f" (such as {run_dir / seeds[0]})" if seeds else ""
        what = "has no metrics.csv" if run_dir.is_dir() else "is not a folder"
        raise ValueError(f"report: {run_dir} {what}; pass a run folder written by `graph-mtl train`{hint}")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics = read_table(run_dir / "metrics.csv")
    steps = read_table(run_dir / "steps.csv", key="step") if (run_dir / "steps.csv").is_file() else None
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else None
    records = read_conflicts(run_dir / "conflicts.jsonl") if (run_dir / "conflicts.jsonl").is_file() else None
    config = _read_config(run_dir / "config.yaml")
    tasks = _task_order(metrics, results, records)
    metric_names = {name: spec.get("metric", "") for name, spec in (results or {}).get("tasks", {}).items()}

    lines = [f"# Run report: {run_dir.name or run_dir.resolve().name}", ""]
    lines += _header(results, config, tasks)
    lines += ["## Test results", ""]
    if results is not None and "test" in results:
        from graph_mtl.run import results_table

        lines += ["```text", results_table(results, "test"), "```", ""]
    else:
        lines += ["No results.json with a test split in this run (the run has not finished): no test table.", ""]

    lines += _section("Training loss", _plot_losses(metrics, tasks, out / "train_loss.png"),
                      "no train_loss/<task> columns in metrics.csv")
    lines += _section("Validation metrics", _plot_valid(metrics, tasks, metric_names, out / "valid_metrics.png"),
                      "no valid/<task> columns with values in metrics.csv")
    if steps is None:
        lines += ["## Balancer weights", "", "No steps.csv in this run: the weights plot is skipped.", ""]
    else:
        lines += _section("Balancer weights", _plot_weights(steps, tasks, out / "weights.png"),
                          "no weight/<task> columns in steps.csv")
    lines += ["## Gradient conflicts", ""]
    if not records:
        why = "is empty" if records is not None else "is missing"
        lines += [f"conflicts.jsonl {why}: the gradient-conflict plots are skipped (train with "
                  "`--set train.monitor_every=N` to record the task gradients' cosines every N steps).", ""]
    else:
        lines += _conflict_section(records, tasks, results, config, out)
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


# ---------------------------------------------------------------------------------------------- reading


def read_table(path: Path, key: str | None = None) -> dict[str, np.ndarray]:
    """The columns of a CSV file as float arrays (NaN for empty cells); with ``key``, only the last row of each
    value of that column, in increasing order (a resumed run appends steps it had already logged)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return {}
    header, body = rows[0], [r for r in rows[1:] if r]
    table = {name: np.array([_float(r[k]) if k < len(r) else math.nan for r in body], dtype=float)
             for k, name in enumerate(header)}
    if key is not None and key in table and len(table[key]):
        keys = table[key]
        _, first_reversed = np.unique(keys[::-1], return_index=True)
        keep = len(keys) - 1 - first_reversed
        table = {name: values[keep] for name, values in table.items()}
    return table


def read_conflicts(path: Path) -> list[dict[str, Any]]:
    """The records of ``conflicts.jsonl``, one per step (the last one written wins), by step; unreadable lines
    (a run killed while writing) are skipped."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record and "tasks" in record:
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def pair_statistics(records: list[dict[str, Any]], tasks: list[str]) -> dict[str, np.ndarray]:
    """Over the records with matrices: ``mean_cos`` and ``conflict_fraction`` ``[T, T]`` (NaN for pairs never
    observed together) and ``count`` (observations of each pair)."""
    index = {name: i for i, name in enumerate(tasks)}
    t = len(tasks)
    total, conflicts, count = np.zeros((t, t)), np.zeros((t, t)), np.zeros((t, t))
    for record in records:
        if "cos" not in record:
            continue
        idx = np.array([index[name] for name in record["tasks"]])
        cos = np.array(record["cos"], dtype=float)
        block = np.ix_(idx, idx)
        total[block] += cos
        conflicts[block] += cos < 0
        count[block] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        fraction = np.where(count > 0, conflicts / count, np.nan)
    return {"mean_cos": mean, "conflict_fraction": fraction, "count": count}


# ---------------------------------------------------------------------------------------------- report parts


def _header(results: dict | None, config: dict | None, tasks: list[str]) -> list[str]:
    facts = []
    if results is not None:
        facts.append(f"dataset **{results.get('dataset', '?')}**")
    train = (config or {}).get("train", {})
    if train.get("balancer"):
        facts.append(f"balancer **{train['balancer']}**")
    facts.append(f"{len(tasks)} tasks")
    if results is not None:
        facts.append(f"best epoch {results.get('best_epoch')} of {results.get('epochs_run')}")
        if isinstance(results.get("seconds"), (int, float)):
            facts.append(f"{results['seconds']:.0f}s")
    return [", ".join(facts) + ".", ""]


def _section(title: str, image: str | None, missing: str, level: int = 2) -> list[str]:
    heading = "#" * level
    if image is None:
        return [f"{heading} {title}", "", f"Skipped: {missing}.", ""]
    return [f"{heading} {title}", "", f"![{title}]({image})", ""]


def _conflict_section(records: list[dict[str, Any]], tasks: list[str], results: dict | None, config: dict | None,
                      out: Path) -> list[str]:
    monitor_tasks = _ordered(tasks, [name for r in records for name in r["tasks"]])
    train = (config or {}).get("train", {})
    summary = (results or {}).get("conflicts") or {}
    mode = summary.get("mode") or train.get("monitor_mode") or "?"
    every = summary.get("every") or train.get("monitor_every") or "?"
    seconds = sum(float(r.get("seconds") or 0.0) for r in records)
    rates = [r["conflict_rate"] for r in records if r.get("conflict_rate") is not None]
    where = {"rep": "at the shared representation", "exact": "at the shared parameters"}.get(mode, f"mode {mode}")
    often = "every step" if every == 1 else f"every {every} steps"
    text = f"{len(records)} observations ({often}, gradients {where}), {seconds:.2f}s spent observing"
    if results is not None and isinstance(results.get("seconds"), (int, float)) and results["seconds"] > 0:
        text += f" ({100 * seconds / results['seconds']:.1f}% of the run)"
    text += "."
    if rates:
        text += f" On average {100 * float(np.mean(rates)):.1f}% of the task pairs conflict (cosine < 0)."
    lines = [text, ""]
    stats = pair_statistics(records, monitor_tasks)
    t = len(monitor_tasks)
    pairs = [(i, j) for i in range(t) for j in range(i + 1, t) if stats["count"][i, j] > 0]
    if pairs:
        ranked = sorted(pairs, key=lambda p: (-stats["conflict_fraction"][p], stats["mean_cos"][p]))[:10]
        lines += ["Pairs that conflict most often:", "", "| pair | conflict fraction | mean cosine | observations |",
                  "|---|---|---|---|"]
        for i, j in ranked:
            lines.append(f"| {monitor_tasks[i]} / {monitor_tasks[j]} | {stats['conflict_fraction'][i, j]:.3f} | "
                         f"{stats['mean_cos'][i, j]:+.3f} | {int(stats['count'][i, j])} |")
        lines.append("")
    elif t > 1:
        lines += ["The records hold no cosine matrices (more tasks than the monitor's matrix_limit): "
                  "no per-pair table or heatmaps.", ""]
    if pairs:
        image = plot_heatmap(stats["mean_cos"], monitor_tasks, "Mean gradient cosine over the run",
                              out / "cosine_mean.png")
        lines += _section("Mean cosine over the run", image, "no cosines", level=3)
        last_epoch = max(int(r.get("epoch", 0)) for r in records)
        last = pair_statistics([r for r in records if int(r.get("epoch", 0)) == last_epoch], monitor_tasks)
        image = plot_heatmap(last["mean_cos"], monitor_tasks, f"Mean gradient cosine, epoch {last_epoch}",
                              out / "cosine_last_epoch.png")
        lines += _section(f"Mean cosine in the last epoch ({last_epoch})", image, "no cosines", level=3)
    lines += _section("Conflict rate over time", _plot_conflict_rate(records, monitor_tasks, out / "conflict_rate.png"),
                      "fewer than two tasks were ever present together", level=3)
    return lines


# ---------------------------------------------------------------------------------------------- plots


def _plot_losses(metrics: dict[str, np.ndarray], tasks: list[str], path: Path) -> str | None:
    series = {t: metrics[f"train_loss/{t}"] for t in tasks if f"train_loss/{t}" in metrics}
    series = {t: v for t, v in series.items() if np.isfinite(v).any()}
    if not series:
        return None
    epochs = metrics.get("epoch", np.arange(1, len(next(iter(series.values()))) + 1))
    fig, ax = _figure(len(series))
    _colors(ax, len(series))
    marker = "o" if len(epochs) <= 30 else None
    for name, values in series.items():
        ax.plot(epochs, values, marker=marker, markersize=3, linewidth=1.4 if len(series) <= 12 else 0.8, label=name)
    if "train_loss" in metrics and len(series) > 1:
        ax.plot(epochs, metrics["train_loss"], color="black", linestyle="--", linewidth=1.8, label="mean")
    values = np.concatenate(list(series.values()))
    values = values[np.isfinite(values)]
    if len(values) and (values > 0).all():
        ax.set_yscale("log")
    ax.set(title="Training loss per task", xlabel="epoch", ylabel="mean training loss")
    ax.grid(alpha=0.3)
    _legend(fig, ax, len(series) + 1)
    return _save(fig, path)


def _plot_valid(metrics: dict[str, np.ndarray], tasks: list[str], metric_names: dict[str, str],
                path: Path) -> str | None:
    columns = {name[len("valid/"):]: values for name, values in metrics.items()
               if name.startswith("valid/") and np.isfinite(values).any()}
    if not columns:
        return None
    names = _ordered(tasks, list(columns))
    epochs = metrics.get("epoch", np.arange(1, len(columns[names[0]]) + 1))
    marker = "o" if len(epochs) <= 30 else None
    if len(names) <= PANEL_LIMIT:
        panels = [(name, metric_names.get(name) or "score", {name: columns[name]}) for name in names]
    else:  # one panel per metric, a thin line per task and the mean in bold
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(metric_names.get(name) or "other scores", []).append(name)
        panels = [(f"{metric} ({len(members)} tasks)", metric, {n: columns[n] for n in members})
                  for metric, members in groups.items()]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(3.6 * ncols + 0.6, 2.7 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (title, ylabel, lines) in zip(axes.flat, panels):
        many = len(lines) > 1
        for label, values in lines.items():
            ax.plot(epochs, values, marker=None if many else marker, markersize=3,
                    linewidth=0.6 if many else 1.4, alpha=0.5 if many else 1.0, label=label)
        if many:
            with warnings.catch_warnings():  # an epoch where every task is NaN: NaN mean, no warning
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.vstack(list(lines.values())), axis=0)
            ax.plot(epochs, mean, color="black", linewidth=2, label="mean")
        ax.set_title(title, fontsize="medium")
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Validation metric per task")
    return _save(fig, path)


def _plot_weights(steps: dict[str, np.ndarray], tasks: list[str], path: Path) -> str | None:
    series = {t: steps[f"weight/{t}"] for t in tasks if f"weight/{t}" in steps}
    if not series or "step" not in steps or not len(steps["step"]):
        return None
    x = steps["step"]
    window = max(1, len(x) // 150) if len(x) > 300 else 1
    fig, ax = _figure(len(series))
    _colors(ax, len(series))
    for name, values in series.items():
        ax.plot(x[window - 1:], _moving_average(values, window), linewidth=1.2 if len(series) <= 12 else 0.7,
                label=name)
    smoothing = f" (moving average over {window} steps)" if window > 1 else ""
    ax.set(title=f"Balancer weights{smoothing}", xlabel="training step", ylabel="task weight")
    ax.grid(alpha=0.3)
    _legend(fig, ax, len(series))
    return _save(fig, path)


def plot_heatmap(matrix: np.ndarray, tasks: list[str], title: str, path: Path, *, limit: float = 1.0,
                 label: str = "cosine (negative: conflict)", axes: tuple[str, str] = ("task", "task"),
                 fmt: str = ".2f") -> str | None:
    """A ``T x T`` heatmap with a diverging colour map centred at 0 over ``[-limit, limit]`` (values beyond it
    saturate, with an arrow on the colour bar), NaN cells grey, task names on both axes and the values written
    in the cells up to :data:`ANNOTATE_LIMIT` tasks; returns the file name, or ``None`` when nothing is finite."""
    t = len(tasks)
    finite = np.isfinite(matrix)
    if t < 2 or not finite.any():
        return None
    from matplotlib import colormaps

    side = min(16.0, max(4.8, 0.55 * t + 2.8))
    fig = _new_figure(side + 1.0, side)
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="lightgray")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    extend = "both" if np.abs(matrix[finite]).max() > limit else "neither"
    fig.colorbar(image, ax=ax, shrink=0.8, extend=extend, label=label)
    if t <= 60:
        fontsize = "medium" if t <= 12 else "x-small"
        ax.set_xticks(range(t), tasks, rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize)
        ax.set_yticks(range(t), tasks, fontsize=fontsize)
    else:
        ax.set(xticks=[], yticks=[])
    if t <= ANNOTATE_LIMIT:
        for i in range(t):
            for j in range(t):
                if finite[i, j]:
                    ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize="small",
                            color="white" if abs(matrix[i, j]) > 0.6 * limit else "black")
    ax.set(title=title, xlabel=axes[0], ylabel=axes[1])
    return _save(fig, path)


def _plot_conflict_rate(records: list[dict[str, Any]], tasks: list[str], path: Path) -> str | None:
    rated = [r for r in records if r.get("conflict_rate") is not None]
    if not rated:
        return None
    x = np.array([r["step"] for r in rated], dtype=float)
    rate = np.array([r["conflict_rate"] for r in rated], dtype=float)
    window = min(len(x), max(3, len(x) // 20)) if len(x) >= 10 else 1
    pair_lines = _pair_series(rated, tasks) if len(tasks) <= PAIR_LINES_LIMIT else {}
    fig = _new_figure(9.0 if pair_lines else 7.5, 6.4 if pair_lines else 3.8)
    axes = fig.subplots(2 if pair_lines else 1, 1, squeeze=False, sharex=True)[:, 0]
    ax = axes[0]
    ax.plot(x, rate, color="tab:gray", alpha=0.5, linewidth=0.8, marker="." if len(x) <= 200 else None,
            label="per observation")
    if window > 1:
        ax.plot(x[window - 1:], _moving_average(rate, window), color="tab:red", linewidth=2,
                label=f"moving average ({window} obs.)")
    ax.set(title="Share of task pairs whose gradients conflict (cosine < 0)", ylabel="conflicting pairs",
           ylim=(-0.03, 1.03))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if pair_lines:
        ax = axes[1]
        _colors(ax, len(pair_lines))
        longest = max(len(px) for px, _ in pair_lines.values())
        w = min(longest, max(5, longest // 10))
        for label, (px, indicator) in pair_lines.items():
            pw = min(w, len(px))
            ax.plot(px[pw - 1:], _moving_average(indicator, pw), linewidth=1.3, label=label)
        ax.set(title=f"Conflict frequency per pair (moving average over {w} observations)",
               ylabel="share of observations", ylim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
        _legend(fig, ax, len(pair_lines))
    axes[-1].set_xlabel("training step")
    return _save(fig, path)


def _pair_series(records: list[dict[str, Any]], tasks: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"a / b": (steps, 0/1 conflict indicator)}`` over the records where both tasks are present."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            series[f"{a} / {b}"] = ([], [])
    for record in records:
        if "cos" not in record:
            continue
        names = record["tasks"]
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                b = names[j]
                key = f"{a} / {b}" if f"{a} / {b}" in series else f"{b} / {a}"
                series[key][0].append(record["step"])
                series[key][1].append(float(record["cos"][i][j] < 0))
    return {k: (np.array(x, dtype=float), np.array(y, dtype=float)) for k, (x, y) in series.items() if x}


# ---------------------------------------------------------------------------------------------- helpers


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _figure(n_series: int):
    """A one-axes figure, wider when the legend goes outside the axes."""
    columns = 0 if n_series <= 8 or n_series > 40 else math.ceil(n_series / 25)
    fig = _new_figure(7.5 + 2.0 * columns, 4.4)
    return fig, fig.subplots()


def _legend(fig, ax, n_entries: int) -> None:
    """Inside the axes for a few entries, outside on the right for more, none beyond 40 (the title says so)."""
    if n_entries <= 8:
        ax.legend(fontsize="small")
    elif n_entries <= 40:
        fig.legend(loc="outside right upper", fontsize="x-small", ncols=math.ceil(n_entries / 25))
    else:
        ax.set_title(f"{ax.get_title()}\n({n_entries} series, no legend)", fontsize="medium")


def _colors(ax, n: int) -> None:
    from matplotlib import colormaps

    if n <= 10:
        return
    cmap = colormaps["tab20"] if n <= 20 else colormaps["viridis"]
    ax.set_prop_cycle(color=[cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(n)])


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return path.name


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (NaN ignored); ``len(values) - window + 1`` points."""
    if window <= 1:
        return values
    finite = np.isfinite(values)
    sums = np.convolve(np.where(finite, values, 0.0), np.ones(window), mode="valid")
    counts = np.convolve(finite.astype(float), np.ones(window), mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _task_order(metrics: dict[str, np.ndarray], results: dict | None, records: list | None) -> list[str]:
    names = list((results or {}).get("tasks", {}))
    names += [k[len("train_loss/"):] for k in metrics if k.startswith("train_loss/")]
    names += [name for r in records or [] for name in r["tasks"]]
    return list(dict.fromkeys(names))


def _ordered(order: list[str], names: list[str]) -> list[str]:
    """The distinct ``names``, those in ``order`` first and in its order."""
    present = set(names)
    return [n for n in order if n in present] + [n for n in dict.fromkeys(names) if n not in set(order)]


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return config if isinstance(config, dict) else None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
