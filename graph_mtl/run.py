"""From a :class:`Config` to a trained model: dataset, model, balancer, trainer, results on disk."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch_geometric.utils import degree

from graph_mtl.balancers import create as create_balancer
from graph_mtl.balancers.args import ArgumentError
from graph_mtl.balancers.registry import check_name
from graph_mtl.config import Config, ModelConfig, TrainConfig
from graph_mtl.data.base import MultiTaskDataset, is_single_graph
from graph_mtl.data.neighbor import check_fanout, neighbor_loaders
from graph_mtl.data.partition import partition_loaders
from graph_mtl.data.registry import featuriser_for, load_dataset, summary_for
from graph_mtl.data.sharding import graph_loaders, per_process_batch, shard_node_dataset
from graph_mtl.engine.checkpoint import atomic_write_text, seed_everything
from graph_mtl.engine.distributed import (
    GradientSync,
    init_distributed,
    is_main_process,
    launched_by_torchrun,
    local_device,
)
from graph_mtl.engine.metadata import run_metadata
from graph_mtl.engine.metrics import better, trivial_baseline
from graph_mtl.engine.monitor import ConflictMonitor
from graph_mtl.engine.run_folder import RunFolder, check_out_dir
from graph_mtl.engine.step import StepEngine
from graph_mtl.engine.strategies import load_pretrained
from graph_mtl.engine.trainer import Trainer, resolve_device, write_json
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.models.encoder import EDGE_CONVS, NEEDS_EDGES
from graph_mtl.models.heads import task_sums
from graph_mtl.models.sharing import build_trunk
from graph_mtl.tasks import MAXIMISED_METRICS, Task

#: how the library's errors name what they are about (the arguments of its classes) -> the config keys a user sets
CONFIG_KEYS: dict[str, str] = {"encoder.": "model.", "balancer:": "train.balancer:"}
#: the step engine's settings in ``train`` (the rest of a balancer's arguments are ``train.balancer_args``)
ENGINE_SETTINGS = ("grad_mode", "update_every", "chunk_size")


@contextmanager
def config_key_errors() -> Iterator[None]:
    """Re-raise a ``ValueError`` that names a class argument (``encoder.conv``, ``balancer_args.c``) as the config
    key the user sets (``model.conv``, ``train.balancer_args.c``)."""
    try:
        yield
    except ValueError as error:
        text = str(error)
        for internal, key in CONFIG_KEYS.items():
            if text.startswith(internal):
                raise ValueError(key + text[len(internal):]) from None
        raise


def model_inputs(cfg: ModelConfig, dataset: MultiTaskDataset) -> dict[str, Any]:
    """What :func:`build_model` reads from the dataset, as plain values (checkpoints keep them to rebuild the
    model without the data): feature kind and widths (``graph_features``: the width of ``data.graph_features``),
    whether it is one graph, PNA's degree histogram."""
    features = dataset.info.get("graph_features")
    return {"dataset": dataset.name, "node_features": dataset.node_features,
            "graph_features": 0 if features is None else features["width"],
            "num_node_features": dataset.num_node_features, "num_edge_features": dataset.num_edge_features,
            "single_graph": is_single_graph(dataset),
            "pna_deg": degree_histogram(dataset.splits["train"]) if cfg.conv == "pna" else None}


def build_model(cfg: ModelConfig, dataset: MultiTaskDataset) -> MultiTaskGNN:
    """The encoder and heads for ``dataset``: OGB atom/bond encoders for OGB features, linear maps otherwise."""
    with config_key_errors():
        return model_from_inputs(cfg, model_inputs(cfg, dataset), dataset.tasks)


def model_from_inputs(cfg: ModelConfig, inputs: dict[str, Any], tasks: list[Task]) -> MultiTaskGNN:
    """:func:`build_model` from :func:`model_inputs`' values and the tasks."""
    ogb = inputs["node_features"] == "ogb"
    edge_channels = inputs["num_edge_features"]
    if cfg.conv == "auto":
        cfg = dataclasses.replace(cfg, conv="gine" if edge_channels > 0 else "gin")
    if cfg.virtual_node is None:
        cfg = dataclasses.replace(cfg, virtual_node=not inputs["single_graph"])
    if cfg.vn_pool == "auto":  # a node-sum read-out needs node values that do not grow with the graph
        cfg = dataclasses.replace(cfg, vn_pool="mean" if task_sums(tasks, cfg.pool, cfg.task_pool, cfg.task_sum)
                                  else "add")
    if cfg.conv not in EDGE_CONVS or edge_channels == 0:
        edge_encoder = "none"
    else:
        edge_encoder = "bond" if ogb else "linear"
    if cfg.conv in NEEDS_EDGES and edge_encoder == "none":
        raise ValueError(f"model.conv: {cfg.conv!r} needs edge features and {inputs['dataset']!r} has none; use gin")
    settings = dict(
        in_channels=inputs["num_node_features"], hidden=cfg.hidden, num_layers=cfg.num_layers, conv=cfg.conv,
        node_encoder="atom" if ogb else "linear", edge_encoder=edge_encoder, edge_channels=edge_channels,
        virtual_node=cfg.virtual_node, residual=cfg.residual, norm=cfg.norm, dropout=cfg.dropout, jk=cfg.jk,
        heads=cfg.heads, pna_deg=inputs["pna_deg"], vn_norm=cfg.vn_norm, vn_pool=cfg.vn_pool,
    )

    def make_encoder(**overrides: Any) -> GNNEncoder:
        return GNNEncoder(**{**settings, **overrides})

    if cfg.arch == "hard":  # (checkpoints written before model.arch existed load with its default, hard)
        encoder = make_encoder()
    else:
        encoder = build_trunk(cfg.arch, make_encoder, [t.level == "graph" for t in tasks], cfg.num_layers,
                              soft_l2=cfg.soft_l2, soft_target=cfg.soft_target, experts=cfg.experts,
                              task_experts=cfg.task_experts, ple_levels=cfg.ple_levels)
    return MultiTaskGNN(encoder, tasks, pool=cfg.pool, head_hidden=cfg.head_hidden,
                        head_layers=cfg.head_layers, head_dropout=cfg.dropout, grouped_heads=cfg.grouped_heads,
                        task_pool=cfg.task_pool, graph_features=inputs.get("graph_features", 0),
                        task_sum=cfg.task_sum)


def build_balancer(cfg: TrainConfig, task_names: list[str]) -> StepEngine:
    """The configured method inside its step engine (``train.grad_mode``, ``update_every``, ``chunk_size``,
    ``nonfinite``). A gradient method for fewer than two tasks (it would silently run as equal weighting) is a
    one-line error; so is a method or engine argument, named by its config key."""
    with config_key_errors():
        cls = check_name(cfg.balancer)
    if len(task_names) < 2 and cls.family in ("gramian", "aggregator"):
        raise ValueError(f"train.balancer: {cfg.balancer!r} balances the gradients of several tasks, but there is "
                         f"{len(task_names)} task ({', '.join(task_names)}): with data.task_view: multilabel all label "
                         "columns are one task; set data.task_view: columns, or train.balancer: ew")
    settings = {key: getattr(cfg, key) for key in ENGINE_SETTINGS if getattr(cfg, key) is not None}
    moved = [key for key in cfg.balancer_args if key in ENGINE_SETTINGS]
    if moved:
        raise ValueError(f"train.balancer_args.{moved[0]}: a setting of the step engine, not of the method; "
                         f"set train.{moved[0]} instead")
    try:
        method = create_balancer(cfg.balancer, task_names, **cfg.balancer_args)
    except ArgumentError as error:
        raise ValueError(f"train.balancer_args.{error}") from None
    try:
        return StepEngine(method, nonfinite=cfg.nonfinite, **settings)
    except ArgumentError as error:
        raise ValueError(f"train.{error}") from None


def degree_histogram(graphs: list) -> torch.Tensor:
    """Histogram of node in-degrees over ``graphs`` (PNA's ``deg``)."""
    counts = torch.zeros(1, dtype=torch.long)
    for g in graphs:
        d = degree(g.edge_index[1], num_nodes=g.num_nodes, dtype=torch.long)
        hist = torch.bincount(d)
        if hist.numel() > counts.numel():
            counts = torch.cat([counts, counts.new_zeros(hist.numel() - counts.numel())])
        counts[: hist.numel()] += hist
    return counts


def build_loaders(dataset: MultiTaskDataset, batch_size: int, seed: int, num_workers: int = 0,
                  device: torch.device | None = None) -> dict[str, Any]:
    """One process's loaders: a shuffling training loader (its order reseeded every epoch, the same order as
    the global batches of a data-parallel run) and ordered valid/test loaders (``data/sharding.py``); batches
    pinned for a CUDA ``device`` (:func:`pins_memory`)."""
    return graph_loaders(dataset, batch_size, seed, num_workers=num_workers, pin_memory=pins_memory(device))


def pins_memory(device: torch.device | None) -> bool:
    """Whether the loaders for ``device`` put batches in page-locked memory: on CUDA, where the trainer's copy of a
    pinned batch is asynchronous (``Trainer.train_step``); elsewhere pinning would only cost."""
    return device is not None and device.type == "cuda"


def train(config: Config, out_dir: str | Path, resume: str | Path | None = None,
          log: Callable[[str], None] = print, overwrite: bool = False) -> dict[str, Any]:
    """Run a whole training from ``config``: writes ``config.yaml``, ``metrics.csv``, ``steps.csv``,
    ``best.pt``, ``last.pt`` and ``results.json`` (and ``conflicts.jsonl`` with ``train.monitor_every``) into
    ``out_dir`` and returns the results.

    Nothing is written before the dataset, the model, the balancer, the monitor key and the ``resume`` checkpoint
    have been checked; a folder that already holds files is refused unless ``resume`` continues its run or
    ``overwrite`` replaces it, and it is locked against a second run while this one lasts
    (``engine/run_folder.py``). On resume the logs are cut back to the checkpoint's step.

    Under ``torchrun`` (or in a process group the caller initialised) every process runs this with the same
    config: each trains on its shard of every batch with the global batch's losses and gradients
    (``engine/distributed.py``); rank 0 alone logs and writes files."""

    if resume is not None and config.train.init_from is not None:
        raise ValueError("train.init_from: not with --resume (the checkpoint already holds the weights it loaded); "
                         "to resume a fine-tuning run add --set train.init_from=null")
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    device = local_device(resolve_device(config.device))
    sync = init_distributed(device)
    main = sync is None or sync.is_main
    if not main:
        log = _silent
    out_dir = Path(out_dir)
    if main:
        check_out_dir(out_dir, resume is not None, overwrite)
    seed_everything(config.seed)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # PyG's and OGB's "Processing... Done!" lines: not ours
        dataset = load_dataset(config.data)
    sizes = {k: len(v) for k, v in dataset.splits.items()}
    empty = [k for k, n in sizes.items() if n == 0
             or all(getattr(g, "node_mask", None) is not None and not bool(g.node_mask.any())
                    for g in dataset.splits[k])]
    if empty:
        raise ValueError(f"data: the {'/'.join(empty)} split of {dataset.name} is empty or its node mask selects "
                         f"no node (splits {sizes}); raise data.limit or use a larger dataset")
    unit = "graphs"
    if is_single_graph(dataset):  # one graph: the split is its node mask
        unit = "nodes"
        sizes = {k: sum(int(g.node_mask.sum()) if getattr(g, "node_mask", None) is not None else g.num_nodes
                        for g in v) for k, v in dataset.splits.items()}
    log(f"dataset {dataset.name}: {len(dataset.tasks)} tasks, splits {sizes} {unit} "
        f"({time.perf_counter() - started:.1f}s)")
    features = dataset.info.get("graph_features")
    if features is not None:
        log(f"graph features {config.data.graph_features}: {features['width']} per molecule "
            f"({'read from the cache' if features['from_cache'] else 'computed and cached'}, {features['seconds']}s)")
    inputs = model_inputs(config.model, dataset)
    with config_key_errors():
        model = model_from_inputs(config.model, inputs, dataset.tasks)
    loaded = load_pretrained(model, config.train.init_from) if config.train.init_from is not None else None
    balancer = build_balancer(config.train, [t.name for t in dataset.tasks])
    train_graphs = dataset.splits["train"]
    loaders = make_loaders(config, dataset, sync, device)
    if sync is not None:
        log(f"data parallel: {sync.world_size} processes, global batch {config.data.batch_size}")
    monitor = None
    if config.train.monitor_every is not None:  # every process observes (SyncBatchNorm's backward holds
        # collectives); rank 0 writes what its own shard shows
        monitor = ConflictMonitor([t.name for t in dataset.tasks], every=config.train.monitor_every,
                                  mode=config.train.monitor_mode, out_dir=out_dir if main else None,
                                  append=resume is not None)
    trainer = Trainer(model, balancer, config.train, train_graphs, out_dir=out_dir, device=device,
                      seed=config.seed, log=log, summary=summary_for(dataset), monitor=monitor, sync=sync)
    trainer.metadata = run_metadata(
        config.to_dict(), dataset.tasks, inputs, featuriser_for(dataset),
        {t.name: trivial_baseline(t, trainer.train_labels[t.name]) for t in dataset.tasks})
    if resume is not None:
        trainer.load(resume)
    with RunFolder(out_dir, enabled=main) as folder:  # everything checked: from here on the folder is written
        _prepare_folder(folder, config, trainer, resume is not None, overwrite)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model {model.encoder!r}, {n_params:,} parameters, balancer {config.train.balancer}, device {device}")
        if resume is not None:
            log(f"resumed from {resume} at epoch {trainer.epoch}")
        if loaded is not None:
            log(loaded)
        trainer.fit(loaders["train"], loaders["valid"])
        evaluated = trainer.test({"valid": loaders["valid"], "test": loaders["test"]})
        results = {
            "dataset": dataset.name,
            "best_epoch": trainer.best_epoch,
            "epochs_run": trainer.epoch,
            "monitor": config.train.monitor,
            "seconds": time.perf_counter() - started,
            "tasks": {t.name: {"level": t.level, "kind": t.kind, "metric": t.metric} for t in dataset.tasks},
            **{split: {k: v for k, v in res.items()} for split, res in evaluated.items()},
        }
        if monitor is not None:
            monitor.close()
            results["conflicts"] = monitor.summary()
        if sync is not None:
            results["collectives"] = sync.summary()
        if main:
            write_json(results, out_dir / "results.json")
            for split in ("valid", "test"):  # every task's row, whatever the console shows
                atomic_write_text(results_table(results, split, max_tasks=None) + "\n",
                                  out_dir / f"per_task_{split}.txt")
    return results


def _prepare_folder(folder: RunFolder, config: Config, trainer: Trainer, resumed: bool, overwrite: bool) -> None:
    """The locked run folder made ready: a replaced run's files removed, a resumed run's logs cut back to its
    checkpoint, ``config.yaml`` written."""
    import yaml

    if not folder.enabled:
        return
    if overwrite:
        folder.clear()
    if resumed:
        folder.cut_logs(trainer.step)
        trainer.write_metrics()
    atomic_write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), folder.out_dir / "config.yaml")


def _silent(message: str) -> None:
    """The log of processes other than rank 0."""


def make_loaders(config: Config, dataset: MultiTaskDataset, sync: GradientSync | None,
                 device: torch.device | None = None) -> dict[str, Any]:
    """Training and evaluation loaders; under a process group, this process's shards (``data/sharding.py``);
    graph batches pinned for a CUDA ``device`` (:func:`pins_memory`)."""
    data = config.data
    rank, world = (sync.rank, sync.world_size) if sync is not None else (0, 1)
    if sync is not None and is_single_graph(dataset):
        dataset = shard_node_dataset(dataset, rank, world)
    if data.loader == "neighbor":
        fanout = check_fanout(data.fanout, config.model.num_layers)
        return neighbor_loaders(dataset, fanout, per_process_batch(data.batch_size, world), config.seed,
                                data.num_workers, data.sampler)
    if data.loader == "partition":
        return partition_loaders(dataset, data.num_parts, data.parts_per_batch, config.model.num_layers,
                                 data.batch_size, config.seed, data.partition, data.num_workers, data.sampler)
    if is_single_graph(dataset):  # every process holds the graph; its node masks are the shards
        return build_loaders(dataset, data.batch_size, config.seed, data.num_workers, device)
    return graph_loaders(dataset, data.batch_size, config.seed, rank, world, data.num_workers, pins_memory(device))


def train_seeds(config: Config, seeds: list[int], out_dir: str | Path,
                log: Callable[[str], None] = print, overwrite: bool = False, jobs: int = 1) -> dict[str, Any]:
    """:func:`train` once per seed into ``out_dir/seed<N>``; ``summary.json`` and ``summary.md`` hold the mean and
    standard deviation over seeds of every test and validation metric (at each run's best validation epoch),
    and each seed's best epoch, epochs run, minutes and headline test scores. ``out_dir`` must be empty or
    new, unless ``overwrite`` (which replaces each seed's run). ``jobs > 1`` trains that many seeds at once, each
    in its own process with its console in ``out_dir/logs/seed<N>.log`` (:mod:`graph_mtl.parallel_runs`). The
    folder, trained either way, is an ensemble of its seeds for ``predict`` and ``evaluate``."""
    from graph_mtl.parallel_runs import PendingRun, train_in_parallel

    out_dir = Path(out_dir)
    if jobs > 1 and launched_by_torchrun():
        raise ValueError("--jobs: under torchrun the processes already share each run; leave --jobs out")
    if is_main_process():
        check_out_dir(out_dir, overwrite=overwrite)
    folders = [out_dir / f"seed{seed}" for seed in seeds]
    if jobs > 1:
        load_dataset(config.data)  # processed here once: jobs processes building the same cache at once would race
        train_in_parallel([PendingRun(f"seed {seed}", dataclasses.replace(config, seed=seed), folder,
                                      out_dir / "logs" / f"seed{seed}.log", overwrite=overwrite)
                           for seed, folder in zip(seeds, folders)], jobs, log)
        runs = [json.loads((folder / "results.json").read_text()) for folder in folders]
    else:
        runs = []
        for seed, folder in zip(seeds, folders):
            log(f"--- seed {seed} ---")
            runs.append(train(dataclasses.replace(config, seed=seed), folder, log=log, overwrite=overwrite))
    summary = seed_summary(runs, seeds)
    if is_main_process():
        write_json(summary, out_dir / "summary.json")
        atomic_write_text(seed_table(summary, max_tasks=None) + "\n", out_dir / "summary.md")
    return summary


#: beyond this many tasks the console shows a summary of the per-task results; full tables go to files
MANY_TASKS = 20
#: the key of the unweighted mean over the scored tasks among a split's scores
TASK_MEAN = "tasks/mean"


def _scores(result: dict[str, Any]) -> dict[str, float]:
    """Every numeric score of one split's result: per-task metrics, their mean (``tasks/mean``) and the summary
    (e.g. ``ogb/rocauc``)."""
    scores = {k: v for k, v in result["per_task"].items() if v is not None}
    if result.get("mean") is not None:
        scores[TASK_MEAN] = result["mean"]
    scores.update({k: v for k, v in result.get("summary", {}).items() if isinstance(v, float)})
    return scores


def _headline(result: dict[str, Any]) -> dict[str, float]:
    """The scores of a split that are not one task's: the task mean and the whole-dataset summary."""
    return {k: v for k, v in _scores(result).items() if k not in result["per_task"]}


def seed_summary(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof=1``; ``None`` for one seed) over runs, per split and score, and
    one record per seed (best epoch, epochs run, minutes, headline test scores)."""
    import numpy as np

    summary: dict[str, Any] = {"dataset": runs[0]["dataset"], "seeds": seeds, "tasks": runs[0]["tasks"]}
    for split in ("valid", "test"):
        table = {}
        scores = [_scores(r[split]) for r in runs]
        for key in scores[0]:
            values = np.array([s[key] for s in scores if key in s], dtype=float)
            std = float(values.std(ddof=1)) if len(values) > 1 else None
            table[key] = {"mean": float(values.mean()), "std": std, "values": values.tolist()}
        summary[split] = table
    summary["runs"] = [{"seed": seed, "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
                        "minutes": r["seconds"] / 60, "test": _headline(r["test"])} for seed, r in zip(seeds, runs)]
    return summary


def seed_table(summary: dict[str, Any], max_tasks: int | None = MANY_TASKS) -> str:
    """Markdown: one row per seed (best epoch, epochs, minutes, headline test scores), then ``mean ± std`` per score
    (the mean alone for one seed), valid and test side by side; with more than ``max_tasks`` tasks only the
    headline scores (the task mean and the whole-dataset summary), the per-task rows being in ``summary.md``."""
    runs = summary.get("runs", [])
    heads = list(runs[0]["test"]) if runs else []
    lines = [f"{summary['dataset']}, seeds {summary['seeds']}", "",
             "| seed | best epoch | epochs | minutes | " + " | ".join(f"test {k}" for k in heads) + " |",
             "|---|---|---|---|" + "---|" * len(heads)]
    for run in runs:
        cells = [f"{run['test'][k]:.4f}" if k in run["test"] else "-" for k in heads]
        lines.append(f"| {run['seed']} | {run['best_epoch']} | {run['epochs_run']} | {run['minutes']:.1f} | "
                     + " | ".join(cells) + " |")
    keys = list(summary["test"])
    many = max_tasks is not None and len(summary["tasks"]) > max_tasks
    if many:
        keys = [k for k in keys if k not in summary["tasks"]]
    lines += ["", "| score | valid | test |", "|---|---|---|"]
    for key in keys:
        valid = summary["valid"].get(key)
        lines.append(f"| {key} | {'-' if valid is None else mean_std(valid)} | {mean_std(summary['test'][key])} |")
    if many:
        lines.append(f"\n{len(summary['tasks'])} tasks: every task's row is in summary.md")
    return "\n".join(lines)


def mean_std(cell: dict[str, Any]) -> str:
    """``mean ± std``, or the mean alone when there is no spread to show (one seed)."""
    return f"{cell['mean']:.4f}" if cell["std"] is None else f"{cell['mean']:.4f} ± {cell['std']:.4f}"


def results_table(results: dict[str, Any], split: str = "test", max_tasks: int | None = MANY_TASKS) -> str:
    """A plain-text table: each task's metric on ``split`` next to the trivial baseline's; with more than
    ``max_tasks`` tasks, a summary instead (:func:`many_tasks_summary`; ``train`` writes the full table to
    ``per_task_<split>.txt``)."""
    res = results[split]
    footer = ""
    for key, value in res.get("summary", {}).items():
        footer += f"\n{key}: {value:.4f}" if isinstance(value, float) else f"\n{key}: {value}"
    if max_tasks is not None and len(results["tasks"]) > max_tasks:
        return many_tasks_summary(results, split) + footer
    rows = [("task", "level", "kind", "metric", split, "baseline", "beats")]
    for name, spec in results["tasks"].items():
        value, base = res["per_task"].get(name), res["baseline"].get(name)
        if value is None:
            rows.append((name, spec["level"], spec["kind"], spec["metric"], "skipped", "-", "-"))
            continue
        beats = base is None or better(spec["metric"], value, base)
        rows.append((name, spec["level"], spec["kind"], spec["metric"], f"{value:.4f}",
                     "-" if base is None else f"{base:.4f}", "yes" if beats else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    skipped = res.get("skipped") or []
    if skipped:
        footer = f"\nskipped (no metric defined on {split}): {', '.join(skipped)}" + footer
    return "\n".join(lines) + footer


def many_tasks_summary(results: dict[str, Any], split: str = "test", shown: int = 5) -> str:
    """The per-task results of a split in a few lines: the mean per metric, the ``shown`` best and worst tasks
    (by their metric, larger is better for maximised metrics) and how many tasks beat their trivial baseline."""
    res, tasks = results[split], results["tasks"]
    scored = {name: v for name, v in res["per_task"].items() if v is not None}
    means = ", ".join(f"{metric} {value:.4f}" for metric, value in res.get("mean_by_metric", {}).items())
    beats = sum(1 for name, v in scored.items()
                if res["baseline"].get(name) is None or better(tasks[name]["metric"], v, res["baseline"][name]))
    order = sorted(scored, key=lambda n: -scored[n] if tasks[n]["metric"] in MAXIMISED_METRICS else scored[n])

    def listing(names: list[str]) -> str:
        return ", ".join(f"{name} {scored[name]:.4f}" for name in names)

    lines = [f"{len(tasks)} tasks on {split}: mean {means or '-'} over {len(scored)} scored "
             f"({len(tasks) - len(scored)} skipped); {beats} of {len(scored)} beat their trivial baseline",
             f"best {min(shown, len(order))}: {listing(order[:shown])}",
             f"worst {min(shown, len(order))}: {listing(order[::-1][:shown])}",
             f"every task's row: per_task_{split}.txt in the run folder"]
    return "\n".join(lines)
