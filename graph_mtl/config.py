"""Run configuration: typed sections, loaded from YAML and ``--set key=value`` overrides, validated on load.

Every mistake is a :class:`ConfigError` whose message is one line that names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration mistake; ``str(error)`` is one line naming the key and the fix."""


@dataclass
class DataConfig:
    """Which dataset, and how it is batched."""

    name: str = "embedded"
    root: str | None = None
    #: quick runs, one meaning per kind of dataset: the first N molecules in all, before the split (embedded, csv);
    #: the first N graphs (ogbg-mol*, ppi) or nodes (ogbn-proteins) of each split;
    #: N training molecules (qm9); N nodes (sbm); refused by
    #: Planetoid (cora, citeseer, pubmed: one graph on a fixed split)
    limit: int | None = None
    tasks: list[str] | None = None
    batch_size: int = 64
    num_workers: int = 0
    #: OGB datasets: ``columns`` = one task per label column, ``multilabel`` = all columns as one task (OGB's view)
    task_view: str = "columns"
    #: ``name: csv``: the file, its SMILES column, the label columns (default: every other column) and their
    #: kinds (``binary``/``regression``/``multiclass``; default: inferred), the split and its seed
    csv: str | None = None
    smiles_column: str = "smiles"
    label_columns: list[str] | None = None
    label_kinds: dict[str, str] = field(default_factory=dict)
    split: str = "scaffold"
    split_seed: int = 0
    #: QM9: ``complete`` graph with distances (the balancer papers') or the ``bond`` graph; ``pyg`` (PyG's QM9 class,
    #: downloads into data.root) or ``qm9pack`` (the offline CSVs of the qm9pack package); see data/qm9.py
    graph: str = "complete"
    source: str = "pyg"
    #: Planetoid (cora, citeseer, pubmed): auxiliary node tasks next to ``class`` (None: all of them)
    aux_tasks: list[str] | None = None
    #: ``full``: whole graphs per batch; ``neighbor``: NeighborLoader mini-batches of ``batch_size`` seed nodes of
    #: one large graph, ``fanout`` neighbours per layer (None: all; one entry per model layer); ``partition``:
    #: Cluster-GCN-style batches, the subgraph induced by ``parts_per_batch`` of ``num_parts`` node parts
    loader: str = "full"
    fanout: list[int] | None = None
    #: neighbour sampling: ``pyg`` (NeighborLoader: needs pyg-lib or torch-sparse), ``builtin``, ``auto``
    sampler: str = "auto"
    #: ``loader: partition``: the parts (``random``: re-drawn every epoch; ``metis``: METIS clusters, needs
    #: pyg-lib with METIS or torch-sparse) and how many of them make one training batch
    num_parts: int = 8
    parts_per_batch: int = 1
    partition: str = "random"
    #: molecule-level features from each molecule's SMILES, concatenated to the pooled graph representation
    #: before every graph head (``data/graph_features.py``): ``rdkit2d`` (RDKit's 2D descriptors, normalised
    #: with training-split statistics), ``morgan`` (Morgan count fingerprint, radius 2, 2048 bits, log1p), both
    graph_features: str = "none"


@dataclass
class ModelConfig:
    """The shared encoder and the heads (see :class:`graph_mtl.models.GNNEncoder`)."""

    #: ``auto``: ``gine`` where the dataset has edge features (molecules' bonds), ``gin`` where it has none
    conv: str = "auto"
    hidden: int = 128
    num_layers: int = 4
    #: ``None``: on for datasets of many graphs (molecules), off for one large graph, where the virtual node sums
    #: every node of the graph into one row (regression outputs in the millions after 2 epochs on ``sbm``)
    virtual_node: bool | None = None
    residual: bool = True
    norm: str = "batch"
    dropout: float = 0.1
    jk: str = "last"
    heads: int = 4
    #: graph pooling of every graph head; ``auto``: each task's pooling as its dataset declares it
    #: (``task.extra["pool"]``), else ``mean``; ``contrib`` sums a per-node MLP (exactly additive read-out)
    pool: str = "auto"
    #: ``{task: pooling}``: overrides ``pool`` for these graph tasks
    task_pool: dict[str, str] = field(default_factory=dict)
    #: ``{graph task: node task}``: the graph task is read out as the sum of the node task's values over the graph
    #: (an affine map of it); ``pool: auto`` also takes the sums the dataset declares (embedded: logp as the sum
    #: of crippen_logp, tpsa of tpsa_atom)
    task_sum: dict[str, str] = field(default_factory=dict)
    head_layers: int = 2
    head_hidden: int | None = None
    #: one grouped module for all heads of one-output graph tasks (batched products: many tasks train as fast as
    #: a few); ``None``: grouped from 32 such tasks on
    grouped_heads: bool | None = None
    vn_norm: str = "batch"
    #: how the virtual node reads the atoms: ``add`` (OGB; it sees the graph's size) or ``mean`` (bounded in the
    #: size, so node read-outs such as ``contrib`` pooling extrapolate to graphs larger than any in training);
    #: ``auto``: ``mean`` where a graph task is read out as a node task's sum (``task_sum``), else ``add``
    vn_pool: str = "auto"
    #: how the tasks share the encoder (graph_mtl/models/sharing.py): ``hard`` (one encoder), ``soft`` (one per
    #: task, pulled together by ``soft_l2``), ``cross_stitch``, ``mmoe``, ``cgc``, ``ple``
    arch: str = "hard"
    #: ``soft``: weight of the penalty, ``pairwise`` (sum over pairs of columns) or ``mean`` (distance to the mean)
    soft_l2: float = 0.01
    soft_target: str = "pairwise"
    #: ``mmoe``/``cgc``/``ple``: shared experts, experts of each task (cgc, ple), stacked CGC levels (ple)
    experts: int = 4
    task_experts: int = 1
    ple_levels: int = 2


@dataclass
class TrainConfig:
    """Optimisation, balancing, early stopping and checkpoints."""

    epochs: int = 30
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "none"
    #: linear learning-rate warm-up over the first N epochs (epoch k in 1..N trains at ``lr * k / N``), then the
    #: scheduler over the remaining epochs; 0: none
    warmup_epochs: int = 0
    #: ``scheduler: plateau``: the factor, the epochs without improvement of the monitor, the floor
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 0.0
    grad_clip: float | None = 5.0
    amp: str = "none"
    balancer: str = "ew"
    balancer_args: dict[str, Any] = field(default_factory=dict)
    #: where a gradient method takes its per-task gradients (None: the method's default): ``exact`` (the shared
    #: parameters, ``J [T, P]`` formed), ``rep`` (the shared representation), or ``gramian`` (Gramian methods
    #: only, one process: the same ``G = J J^T`` as ``exact`` built layer by layer without forming ``J``, then one
    #: backward of ``sum_i w_i L_i``)
    grad_mode: str | None = None
    update_every: int | None = None
    #: tasks per batched vector-Jacobian product of a gradient method (None: all at once)
    chunk_size: int | None = None
    #: a NaN or infinite task loss: ``raise`` (stop, naming the task and step) or ``skip`` the step (counted)
    nonfinite: str = "raise"
    monitor: str = "gain"
    patience: int | None = None
    standardize_targets: bool = True
    max_steps_per_epoch: int | None = None
    progress: bool = True
    #: gradient-conflict monitor (graph_mtl/engine/monitor.py): observe every N-th step (None: off), with the
    #: gradients at the shared representation (``rep``, cheap) or at the shared parameters (``exact``)
    monitor_every: int | None = None
    monitor_mode: str = "rep"
    #: torch.set_num_threads for the run (None: torch's default); under torchrun it is per process
    threads: int | None = None
    #: ``{task: lr}``: that task's head gets its own optimizer param group at this learning rate (all else:
    #: ``lr``); the schedulers scale every group (graph_mtl/engine/strategies.py)
    task_lr: dict[str, float] = field(default_factory=dict)
    #: ``{kind: warmup|linear|step, main_task: NAME, epochs: N, start: 0.0, factor: 2.0}``: every other task's
    #: loss times a factor s(epoch) before the balancer (graph_mtl/engine/strategies.py, WeightSchedule)
    weight_schedule: dict[str, Any] | None = None
    #: a run folder (its best.pt) or a .pt checkpoint: the shared encoder, and the heads of tasks with the same
    #: name and shapes, start from its weights (``graph-mtl train --init-from RUN``)
    init_from: str | None = None
    #: the shared parameters (encoder, shared pooling) are not updated during the first N epochs
    freeze_epochs: int = 0
    #: weight averaging: an exponential moving average of the weights with this decay per step (e.g. 0.999) is
    #: what is evaluated, selected and saved (graph_mtl/engine/averaging.py); ``None``: off
    ema_decay: float | None = None
    #: the shared encoder compiled with ``torch.compile(dynamic=True)`` (graph batches change shape), in place:
    #: checkpoints keep the eager model's keys; needs a C++ compiler on the CPU (``benchmarks/compile_time.py``)
    compile: bool = False


@dataclass
class Config:
    """A whole run."""

    seed: int = 0
    device: str = "auto"
    #: a named set of defaults (see :data:`PRESETS`) applied before the file and ``--set`` values
    preset: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.scheduler": ("none", "cosine", "step", "plateau"),
    "model.norm": ("batch", "layer", "none"),
    "model.jk": ("last", "sum", "max", "cat"),
    "model.pool": ("auto", "mean", "add", "max", "attention", "set2set", "contrib", "add_norm"),
    "data.graph_features": ("none", "rdkit2d", "morgan", "rdkit2d+morgan"),
    "model.vn_norm": ("batch", "layer"),
    "model.vn_pool": ("auto", "add", "mean"),
    "model.arch": ("hard", "soft", "cross_stitch", "mmoe", "cgc", "ple"),
    "model.soft_target": ("pairwise", "mean"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.monitor_mode": ("rep", "exact"),
    "data.task_view": ("columns", "multilabel"),
    "data.split": ("scaffold", "random"),
    "data.loader": ("full", "neighbor", "partition"),
    "data.sampler": ("auto", "pyg", "builtin"),
    "data.partition": ("random", "metis"),
    "data.graph": ("complete", "bond"),
    "data.source": ("pyg", "qm9pack"),
}
#: keys that must be >= 1 when set (``null`` is allowed where the type allows it)
POSITIVE: tuple[str, ...] = (
    "data.batch_size", "data.parts_per_batch", "model.hidden", "model.num_layers", "model.heads", "model.head_layers",
    "train.epochs", "data.limit", "model.head_hidden", "train.max_steps_per_epoch", "train.update_every",
    "train.chunk_size",
    "model.experts", "model.ple_levels",
)
#: keys that must be >= 0
NON_NEGATIVE: tuple[str, ...] = (
    "seed", "data.split_seed", "data.num_workers", "train.weight_decay", "train.freeze_epochs", "model.soft_l2",
    "model.task_experts", "train.warmup_epochs",
)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (optional), apply ``key=value`` overrides, validate, and return a :class:`Config`."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config: {str(path)!r} is a folder; give the path of a YAML config file")
        if not path.is_file():
            raise ConfigError(f"--config: file {str(path)!r} does not exist; give the path of a YAML config")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"--config: {path} is not UTF-8 text; save it as UTF-8 YAML") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"--config: {path} is not valid YAML{where}; fix its syntax") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config: {path} must hold a mapping of sections (seed, data, model, train)")
        if {"base", "rows"} <= set(raw):
            raise ConfigError(f"--config: {path} is a benchmark plan (base, rows), not a run config; run it with "
                              "its script in benchmarks/ (see benchmarks/README.md), or copy its base: section")
    for item in overrides or []:
        apply_override(raw, item)
    return from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override (the value is parsed as YAML) to a raw config dict."""
    if "=" not in item:
        raise ConfigError(f"--set: {item!r} must look like key=value, e.g. train.epochs=5")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if parts == [""] or any(not p for p in parts):
        raise ConfigError(f"--set: {item!r} has an empty key; write e.g. train.epochs=5")
    if len(parts) == 1 and parts[0] in _SHORTCUTS:
        parts = _SHORTCUTS[parts[0]].split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set: {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


#: top-level shortcuts accepted by ``--set`` (``--set balancer=pcgrad``)
_SHORTCUTS: dict[str, str] = {
    "balancer": "train.balancer",
    "balancer_args": "train.balancer_args",
    "grad_mode": "train.grad_mode",
    "update_every": "train.update_every",
    "epochs": "train.epochs",
    "dataset": "data.name",
    "conv": "model.conv",
    "csv": "data.csv",
}


#: named defaults, chosen with ``preset: NAME``; the config's own values override them
PRESETS: dict[str, dict[str, Any]] = {
    # the OGB example (ogb/examples/graphproppred/mol/main_pyg.py): GIN-virtual, 5 x 300, dropout 0.5, batch 32,
    # Adam 1e-3 for 100 epochs, all label columns as one task, mean pooling, linear head, model selection at the
    # best validation epoch of the dataset's own metric (the "gain" monitor of a single task is that metric)
    "ogb-baseline": {
        "data": {"task_view": "multilabel", "batch_size": 32},
        "model": {"conv": "gine", "hidden": 300, "num_layers": 5, "virtual_node": True, "residual": False,
                  "norm": "batch", "dropout": 0.5, "jk": "last", "pool": "mean", "head_layers": 1},
        "train": {"epochs": 100, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "none",
                  "grad_clip": None, "balancer": "ew", "standardize_targets": False},
    },
}
# the CPU recipe for molecules, chosen on ogbg-moltox21's validation split (benchmarks/configs/
# tox21_recipe_search.yaml and tox21_recipe_long.yaml): the OGB model at width 128, one task per label column,
# batches of 64, 60 epochs with a 2-epoch warm-up, cosine decay and a moving average of the weights; about
# 10 minutes per seed on one core for ogbg-moltox21 (12 with the cores shared)
PRESETS["ogb-cpu"] = {
    "data": {"task_view": "columns", "batch_size": 64},
    "model": {**PRESETS["ogb-baseline"]["model"], "hidden": 128},
    "train": {**PRESETS["ogb-baseline"]["train"], "epochs": 60, "scheduler": "cosine", "warmup_epochs": 2,
              "ema_decay": 0.999},
}


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top``, section by section."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict (a ``preset`` fills in what it leaves out)."""
    preset = raw.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        raw = _merged(PRESETS[preset], raw)
    config = _build(Config, raw, "")
    _validate(config)
    return config


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {sorted(fields)}"
            raise ConfigError(f"config: unknown key '{prefix}{key}'{hint}")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_name(hint)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if hint is Any or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{key}: expected {_name(hint)}, got {value!r}")


def _name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _value(config: Config, key: str) -> Any:
    """The value of a dotted key such as ``train.lr``."""
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _float_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every key whose type is (or may be) a float."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += _float_keys(hint, f"{prefix}{f.name}.")
        elif hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                               and float in typing.get_args(hint)):
            keys.append(f"{prefix}{f.name}")
    return keys


def _nullable(key: str) -> bool:
    """Whether ``key`` accepts ``null``."""
    return _value(Config(), key) is None


def _validate(config: Config) -> None:
    for key, choices in CHOICES.items():
        value = _value(config, key)
        if value not in choices:
            raise ConfigError(f"{key}: unknown value {value!r}; choose one of {list(choices)}")
    for key in _float_keys():
        value = _value(config, key)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
    for key in POSITIVE:
        value = _value(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}" + ("; or null (the default)"
                                                                      if _nullable(key) else ""))
    for key in NON_NEGATIVE:
        value = _value(config, key)
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    data = config.data
    if data.num_parts < 2:
        raise ConfigError(f"data.num_parts: must be >= 2, got {data.num_parts}; for one batch of the whole graph "
                          "use data.loader: full")
    if data.parts_per_batch > data.num_parts:
        raise ConfigError(f"data.parts_per_batch: {data.parts_per_batch} is more than data.num_parts="
                          f"{data.num_parts}; use at most {data.num_parts}")
    model = config.model
    if model.arch == "ple" and model.ple_levels > model.num_layers:
        raise ConfigError(f"model.ple_levels: {model.ple_levels} levels need at least as many layers, but "
                          f"model.num_layers is {model.num_layers}; use at most {model.num_layers}")
    if model.arch == "cross_stitch" and model.jk != "last":
        raise ConfigError(f"model.jk: cross_stitch mixes every layer's output, so it needs jk 'last', got {model.jk!r}")
    if model.arch != "hard" and model.grouped_heads:
        raise ConfigError(f"model.grouped_heads: grouped heads read one shared representation, which model.arch "
                          f"{model.arch!r} does not have; set it to false or leave it unset")
    for task, pool in config.model.task_pool.items():
        if pool not in CHOICES["model.pool"][1:]:
            raise ConfigError(f"model.task_pool: unknown pooling {pool!r} for task {task!r}; choose one of "
                              f"{list(CHOICES['model.pool'][1:])}")
    train = config.train
    if train.warmup_epochs >= train.epochs:
        raise ConfigError(f"train.warmup_epochs: {train.warmup_epochs} must be less than train.epochs="
                          f"{train.epochs}")
    if train.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {train.lr}")
    if not 0 <= config.model.dropout < 1:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {config.model.dropout}")
    if not 0 < train.plateau_factor < 1:
        raise ConfigError(f"train.plateau_factor: must be in (0, 1), got {train.plateau_factor}")
    if train.plateau_patience < 0 or train.min_lr < 0:
        raise ConfigError("train.plateau_patience and train.min_lr: must be >= 0")
    if train.grad_clip is not None and train.grad_clip <= 0:
        raise ConfigError("train.grad_clip: must be > 0, or null to disable clipping")
    if train.monitor_every is not None and train.monitor_every < 1:
        raise ConfigError("train.monitor_every: must be >= 1, or null to turn the conflict monitor off")
    if train.threads is not None and train.threads < 1:
        raise ConfigError("train.threads: must be >= 1, or null for torch's default")
    if train.patience is not None and train.patience < 1:
        raise ConfigError("train.patience: must be >= 1, or null to disable early stopping")
    from graph_mtl.engine.averaging import check_decay
    from graph_mtl.engine.strategies import check_task_lr, parse_schedule

    try:
        check_decay(train.ema_decay)
        check_task_lr(train.task_lr)
        parse_schedule(train.weight_schedule)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if train.init_from is not None and not train.init_from.strip():
        raise ConfigError("train.init_from: empty; give a run folder or a .pt checkpoint, or null")
    if config.device not in ("auto", "cpu") and not config.device.startswith("cuda"):
        raise ConfigError(f"device: unknown value {config.device!r}; use auto, cpu, cuda or cuda:N")
