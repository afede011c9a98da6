"""From a :class:`Config` to a trained model: dataset, model, balancer, trainer, results on disk."""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch_geometric.loader import DataLoader
from torch_geometric.utils import degree

from graph_mtl.balancers import BALANCERS, Balancer
from graph_mtl.balancers import create as create_balancer
from graph_mtl.config import Config, ModelConfig, TrainConfig
from graph_mtl.data.base import MultiTaskDataset, is_single_graph
from graph_mtl.data.neighbor import check_fanout, neighbor_loaders
from graph_mtl.data.partition import partition_loaders
from graph_mtl.data.registry import load_dataset, summary_for
from graph_mtl.data.sharding import per_process_batch, shard_node_dataset, sharded_graph_loaders
from graph_mtl.engine.checkpoint import seed_everything
from graph_mtl.engine.distributed import GradientSync, init_distributed, is_main_process, local_device
from graph_mtl.engine.metrics import better
from graph_mtl.engine.monitor import ConflictMonitor
from graph_mtl.engine.trainer import Trainer, resolve_device, write_json
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.models.encoder import EDGE_CONVS, NEEDS_EDGES


def build_model(cfg: ModelConfig, dataset: MultiTaskDataset) -> MultiTaskGNN:
    """The encoder and heads for ``dataset``: OGB atom/bond encoders for OGB features, linear maps otherwise."""
    ogb = dataset.node_features == "ogb"
    edge_channels = dataset.num_edge_features
    if cfg.conv == "auto":
        cfg = dataclasses.replace(cfg, conv="gine" if edge_channels > 0 else "gin")
    if cfg.virtual_node is None:
        cfg = dataclasses.replace(cfg, virtual_node=not is_single_graph(dataset))
    if cfg.conv not in EDGE_CONVS or edge_channels == 0:
        edge_encoder = "none"
    else:
        edge_encoder = "bond" if ogb else "linear"
    if cfg.conv in NEEDS_EDGES and edge_encoder == "none":
        raise ValueError(f"model.conv: {cfg.conv!r} needs edge features and {dataset.name!r} has none; use gin")
    encoder = GNNEncoder(
        in_channels=dataset.num_node_features, hidden=cfg.hidden, num_layers=cfg.num_layers, conv=cfg.conv,
        node_encoder="atom" if ogb else "linear", edge_encoder=edge_encoder, edge_channels=edge_channels,
        virtual_node=cfg.virtual_node, residual=cfg.residual, norm=cfg.norm, dropout=cfg.dropout, jk=cfg.jk,
        heads=cfg.heads, pna_deg=degree_histogram(dataset.splits["train"]) if cfg.conv == "pna" else None,
        vn_norm=cfg.vn_norm,
    )
    return MultiTaskGNN(encoder, dataset.tasks, pool=cfg.pool, head_hidden=cfg.head_hidden,
                        head_layers=cfg.head_layers, head_dropout=cfg.dropout)


def build_balancer(cfg: TrainConfig, task_names: list[str]) -> Balancer:
    """The configured balancer; ``train.grad_mode`` / ``train.update_every`` are passed on when set."""
    args = dict(cfg.balancer_args)
    if cfg.balancer not in BALANCERS:
        return create_balancer(cfg.balancer, task_names, **args)  # raises the unknown-name error
    accepted = inspect.signature(BALANCERS[cfg.balancer].__init__).parameters
    for key in ("grad_mode", "update_every"):
        value = getattr(cfg, key)
        if value is None:
            continue
        if key in args and args[key] != value:
            raise ValueError(f"train.{key}: {value!r} contradicts balancer_args.{key}={args[key]!r}; keep one")
        if key not in accepted:
            raise ValueError(f"train.{key}: balancer {cfg.balancer!r} has no {key} (only gradient methods do)")
        args[key] = value
    return create_balancer(cfg.balancer, task_names, **args)


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


def build_loaders(dataset: MultiTaskDataset, batch_size: int, seed: int, num_workers: int = 0) -> dict[str, Any]:
    """A shuffling training loader (its generator reseeded every epoch) and ordered valid/test loaders."""
    generator = torch.Generator().manual_seed(seed)
    loaders = {"train": DataLoader(dataset.splits["train"], batch_size=batch_size, shuffle=True,
                                   generator=generator, num_workers=num_workers)}
    for split in ("valid", "test"):
        loaders[split] = DataLoader(dataset.splits[split], batch_size=batch_size, num_workers=num_workers)
    return loaders


def train(config: Config, out_dir: str | Path, resume: str | Path | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a whole training from ``config``: writes ``config.yaml``, ``metrics.csv``, ``steps.csv``,
    ``best.pt``, ``last.pt`` and ``results.json`` (and ``conflicts.jsonl`` with ``train.monitor_every``) into
    ``out_dir`` and returns the results.

    Under ``torchrun`` (or in a process group the caller initialised) every process runs this with the same
    config: each trains on its shard of every batch with the global batch's losses and gradients
    (``engine/distributed.py``); rank 0 alone logs and writes files."""
    import yaml

    device = local_device(resolve_device(config.device))
    sync = init_distributed(device)
    main = sync is None or sync.is_main
    if not main:
        log = _silent
    out_dir = Path(out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    seed_everything(config.seed)
    started = time.perf_counter()
    dataset = load_dataset(config.data)
    sizes = {k: len(v) for k, v in dataset.splits.items()}
    empty = [k for k, n in sizes.items() if n == 0
             or all(getattr(g, "node_mask", None) is not None and not bool(g.node_mask.any())
                    for g in dataset.splits[k])]
    if empty:
        raise ValueError(f"data: the {'/'.join(empty)} split of {dataset.name} is empty or its node mask selects "
                         f"no node (splits {sizes}); raise data.limit or use a larger dataset")
    log(f"dataset {dataset.name}: {len(dataset.tasks)} tasks, splits {sizes} ({time.perf_counter() - started:.1f}s)")
    model = build_model(config.model, dataset)
    balancer = build_balancer(config.train, [t.name for t in dataset.tasks])
    train_graphs = dataset.splits["train"]
    loaders = make_loaders(config, dataset, sync)
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
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {model.encoder!r}, {n_params:,} parameters, balancer {config.train.balancer}, device {device}")
    trainer.fit(loaders["train"], loaders["valid"], resume=resume)
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
    return results


def _silent(message: str) -> None:
    """The log of processes other than rank 0."""


def make_loaders(config: Config, dataset: MultiTaskDataset, sync: GradientSync | None) -> dict[str, Any]:
    """Training and evaluation loaders; under a process group, this process's shards (``data/sharding.py``)."""
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
    if sync is not None and not is_single_graph(dataset):
        return sharded_graph_loaders(dataset, data.batch_size, config.seed, rank, world, data.num_workers)
    return build_loaders(dataset, data.batch_size, config.seed, data.num_workers)


def train_seeds(config: Config, seeds: list[int], out_dir: str | Path,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """:func:`train` once per seed into ``out_dir/seed<N>``; ``summary.json`` and ``summary.md`` hold the mean and
    standard deviation over seeds of every test and validation metric (at each run's best validation epoch)."""
    out_dir = Path(out_dir)
    runs = []
    for seed in seeds:
        log(f"--- seed {seed} ---")
        runs.append(train(dataclasses.replace(config, seed=seed), out_dir / f"seed{seed}", log=log))
    summary = seed_summary(runs, seeds)
    if is_main_process():
        write_json(summary, out_dir / "summary.json")
        (out_dir / "summary.md").write_text(seed_table(summary) + "\n")
    return summary


def _scores(result: dict[str, Any]) -> dict[str, float]:
    """Every numeric score of one split's result: per-task metrics and the summary (e.g. ``ogb/rocauc``)."""
    scores = {k: v for k, v in result["per_task"].items() if v is not None}
    scores.update({k: v for k, v in result.get("summary", {}).items() if isinstance(v, float)})
    return scores


def seed_summary(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one seed) over runs, per split and score."""
    import numpy as np

    summary: dict[str, Any] = {"dataset": runs[0]["dataset"], "seeds": seeds, "tasks": runs[0]["tasks"]}
    for split in ("valid", "test"):
        table = {}
        scores = [_scores(r[split]) for r in runs]
        for key in scores[0]:
            values = np.array([s[key] for s in scores if key in s], dtype=float)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            table[key] = {"mean": float(values.mean()), "std": std, "values": values.tolist()}
        summary[split] = table
    return summary


def seed_table(summary: dict[str, Any]) -> str:
    """Markdown table of ``mean +- std`` per score, valid and test side by side."""
    lines = [f"{summary['dataset']}, seeds {summary['seeds']}", "",
             "| score | valid | test |", "|---|---|---|"]
    for key, test in summary["test"].items():
        valid = summary["valid"].get(key)
        cell = "-" if valid is None else f"{valid['mean']:.4f} ± {valid['std']:.4f}"
        lines.append(f"| {key} | {cell} | {test['mean']:.4f} ± {test['std']:.4f} |")
    return "\n".join(lines)


def results_table(results: dict[str, Any], split: str = "test") -> str:
    """A plain-text table: each task's metric on ``split`` next to the trivial baseline's."""
    res = results[split]
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
    footer = f"\nskipped (no metric defined on {split}): {', '.join(skipped)}" if skipped else ""
    for key, value in res.get("summary", {}).items():
        footer += f"\n{key}: {value:.4f}" if isinstance(value, float) else f"\n{key}: {value}"
    return "\n".join(lines) + footer
