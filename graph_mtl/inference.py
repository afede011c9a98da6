"""Using a trained run: :func:`load_run` rebuilds the model from a checkpoint's metadata
(``engine/metadata.py``) to predict, embed and evaluate new molecules or a split of the run's own dataset.

Each task's outputs (:func:`output_columns`): regression values on the original scale (the trainer's target
scaling undone), probabilities ``sigmoid(z)`` for binary and multi-label tasks, class probabilities
``softmax(z)`` and the arg-max class for multiclass tasks. An :class:`Ensemble` (a ``--seeds`` folder) averages
these columns over its seeds and adds each column's standard deviation over the seeds, ``<column>/std``
(``ddof=1``, as in ``summary.json``); its arg-max class is that of the mean probabilities.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit, softmax
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from graph_mtl.config import Config, ConfigError, from_dict
from graph_mtl.engine.metadata import check_metadata, task_from_dict
from graph_mtl.engine.trainer import amp_context, collect_predictions, resolve_device, score_predictions
from graph_mtl.models import MultiTaskGNN
from graph_mtl.models.heads import pool_nodes
from graph_mtl.tasks import Scalers, Task

#: which checkpoint of a run folder is used (``--checkpoint``)
CHECKPOINTS: tuple[str, ...] = ("best", "last")
#: inputs with more molecules than this get a progress bar (on a terminal)
PROGRESS_MIN = 2_000


# ------------------------------------------------------------------------------------------- output columns


def _labels(task: Task) -> list[str]:
    """Names of a task's outputs: class names, OGB column names, or indices."""
    names = task.extra.get("classes") or task.extra.get("columns")
    if names is not None and len(names) == task.num_outputs:
        return [str(n) for n in names]
    return [str(j) for j in range(task.num_outputs)]


def output_columns(task: Task, raw: np.ndarray) -> dict[str, np.ndarray]:
    """A task's de-standardised model outputs ``[n, k]`` as named columns of values or probabilities (module
    docstring); a single-output regression or binary task is one column named after the task."""
    z = np.asarray(raw, dtype=np.float64).reshape(len(raw), task.num_outputs)
    if task.kind in ("binary", "multilabel"):
        z = expit(z)
    elif task.kind == "multiclass":
        z = softmax(z, axis=1)
    if z.shape[1] == 1 and task.kind != "multiclass":
        return {task.name: z[:, 0]}
    return {f"{task.name}/{label}": z[:, j] for j, label in enumerate(_labels(task))}


def metric_inputs(task: Task, columns: dict[str, np.ndarray]) -> np.ndarray:
    """What the metrics score (``engine/metrics.py``: values, logits or class logits) from a task's columns:
    the inverse of :func:`output_columns` up to rounding (``log p - log(1 - p)``, ``log p``)."""
    names = [task.name] if task.num_outputs == 1 and task.kind != "multiclass" else \
        [f"{task.name}/{label}" for label in _labels(task)]
    values = np.stack([np.asarray(columns[n], dtype=np.float64) for n in names], axis=1)
    with np.errstate(divide="ignore"):
        if task.kind in ("binary", "multilabel"):
            return np.log(values) - np.log1p(-values)
        if task.kind == "multiclass":
            return np.log(values)
    return values


def combine(tasks: Sequence[Task], raws: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every task's columns from one or several models' raw outputs: the mean over models, ``<column>/std``
    when there are several, and the arg-max class of multiclass tasks (of the mean probabilities)."""
    out: dict[str, np.ndarray] = {}
    for task in tasks:
        members = [output_columns(task, raw[task.name]) for raw in raws]
        if task.kind == "multiclass":
            mean = np.stack([np.mean([m[c] for m in members], axis=0) for c in members[0]], axis=1)
            out[task.name] = mean.argmax(axis=1).astype(np.float64) if len(mean) else np.zeros(0)
        for name in members[0]:
            stack = np.stack([m[name] for m in members])
            out[name] = stack.mean(axis=0)
            if len(raws) > 1:
                out[f"{name}/std"] = stack.std(axis=0, ddof=1)
    return out


@dataclass
class Predictions:
    """Predictions for a list of SMILES, in input order.

    ``graph`` maps a column to one value per input row (NaN where the row has an ``errors`` entry); ``node``
    maps a column to each row's per-atom values (empty where the row has an error). Multiclass arg-max
    columns are the names in ``classes``.
    """

    smiles: list[str]
    errors: list[str]
    graph: dict[str, np.ndarray] = field(default_factory=dict)
    node: dict[str, list[np.ndarray]] = field(default_factory=dict)
    classes: set[str] = field(default_factory=set)

    def table(self, node_lists: bool = True) -> dict[str, list]:
        """Columns of the wide table: ``smiles``, every graph column, each node column as a JSON list per row
        (unless ``node_lists`` is false) and ``error``."""
        table: dict[str, list] = {"smiles": list(self.smiles)}
        for name, values in self.graph.items():
            table[name] = [_cell(v, name in self.classes) for v in values]
        if node_lists:
            for name, rows in self.node.items():
                table[name] = ["" if e else json.dumps([_number(v, name in self.classes) for v in row])
                               for row, e in zip(rows, self.errors)]
        table["error"] = list(self.errors)
        return table

    def node_table(self) -> dict[str, list]:
        """The long table: one row per atom of every valid input row (``row``: its input row, 0-based)."""
        table: dict[str, list] = {"row": [], "smiles": [], "atom": []}
        first = next(iter(self.node.values()), [])
        for i, atoms in enumerate(first):
            table["row"] += [i] * len(atoms)
            table["smiles"] += [self.smiles[i]] * len(atoms)
            table["atom"] += list(range(len(atoms)))
        for name, rows in self.node.items():
            table[name] = [_cell(v, name in self.classes) for row in rows for v in row]
        return table


def _number(value: float, integer: bool) -> float | int:
    return int(value) if integer else float(value)


def _cell(value: float, integer: bool = False) -> str:
    """A table cell: ``""`` for NaN, the class index for an arg-max, else the float's shortest exact form."""
    if math.isnan(value):
        return ""
    return str(int(value)) if integer else repr(float(value))


# ------------------------------------------------------------------------------------------- a loaded run


@dataclass
class LoadedRun:
    """One trained model with what it needs to be used: tasks, target scalers, featuriser and config."""

    model: MultiTaskGNN
    tasks: list[Task]
    scalers: Scalers
    featuriser: dict[str, Any] | None
    config: Config
    metadata: dict[str, Any]
    path: Path
    device: torch.device

    @property
    def members(self) -> list[LoadedRun]:
        return [self]

    def predict(self, smiles: Sequence[str], batch_size: int | None = None, progress: bool = False) -> Predictions:
        """Every task's predictions for ``smiles`` (module docstring); unusable SMILES get an error, not a row
        shift."""
        return predict_smiles(self, smiles, batch_size, progress)

    def embed(self, smiles: Sequence[str], nodes: bool = False,
              batch_size: int | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
        """Shared embeddings and each row's error (``""`` if none): ``graphs``, one pooled row per input
        (``model.pool``; mean for learned poolings and ``contrib``; NaN for unusable SMILES), and with ``nodes``
        also every atom's row ``nodes`` with its input ``row`` and ``atom`` index, stacked in input order."""
        graphs, errors = featurise_all(self, smiles)
        valid = [g for g in graphs if g is not None]
        width = self.model.encoder.out_channels
        pool = self.model.pool if self.model.pool in ("mean", "add", "max") else "mean"
        pooled, atoms = [], []
        self.model.eval()
        with torch.no_grad():
            for batch in graph_loader(valid, batch_size or self.config.data.batch_size):
                batch = batch.to(self.device)
                with amp_context(self.config.train.amp, self.device):
                    h = self.model(batch).node_repr.float()
                pooled.append(pool_nodes(pool, h, batch.batch, batch.num_graphs).cpu())
                atoms.append(h.cpu())
        out = {"graphs": np.full((len(graphs), width), np.nan, dtype=np.float32)}
        rows = [i for i, g in enumerate(graphs) if g is not None]
        if rows:
            out["graphs"][rows] = torch.cat(pooled).numpy()
        if nodes:
            counts = [g.num_nodes for g in valid]
            out["nodes"] = torch.cat(atoms).numpy() if atoms else np.zeros((0, width), dtype=np.float32)
            out["row"] = np.repeat(np.asarray(rows, dtype=np.int64), counts)
            out["atom"] = np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, dtype=np.int64)
        return out, errors

    def raw_outputs(self, graphs: list[Data], batch_size: int | None = None,
                    progress: bool = False) -> dict[str, np.ndarray]:
        """De-standardised outputs of every task over ``graphs`` (one row per graph or per node), batched as in
        training so that results match the run's own evaluation bit for bit."""
        loader = graph_loader(graphs, batch_size or self.config.data.batch_size)
        if progress:
            from tqdm.auto import tqdm

            loader = tqdm(loader, desc="predict", unit="batch", file=sys.stderr, leave=False)
        self.model.eval()
        return collect_predictions(self.model, self.scalers, loader, self.device,
                                   lambda: amp_context(self.config.train.amp, self.device))[1]

    def baselines(self) -> dict[str, np.ndarray]:
        """Each task's trivial-baseline output row (fitted on the run's training labels)."""
        return {name: row.numpy() for name, row in self.metadata["baselines"].items()}


class Ensemble:
    """The runs of a ``--seeds`` folder used together (module docstring); same tasks and featuriser."""

    def __init__(self, runs: list[LoadedRun]) -> None:
        first = runs[0]
        for run in runs[1:]:
            for what in ("tasks", "featuriser", "model_inputs"):
                if _plain(run.metadata[what]) != _plain(first.metadata[what]):
                    raise ValueError(f"RUN: {run.path} and {first.path} differ in their {what} (trained for other "
                                     f"data: {run.metadata['model_inputs']['dataset']} vs "
                                     f"{first.metadata['model_inputs']['dataset']}); ensemble runs of one dataset")
        self.runs = runs
        self.tasks, self.featuriser, self.config = first.tasks, first.featuriser, first.config
        self.metadata = first.metadata
        self.path = first.path.parent.parent

    @property
    def members(self) -> list[LoadedRun]:
        return self.runs

    def predict(self, smiles: Sequence[str], batch_size: int | None = None, progress: bool = False) -> Predictions:
        """Mean predictions over the seeds with a ``/std`` column for each (module docstring)."""
        return predict_smiles(self, smiles, batch_size, progress)


def _plain(value: Any) -> Any:
    """Tensors as lists, for comparing metadata."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def graph_loader(graphs: list[Data], batch_size: int) -> DataLoader:
    """The graphs in order, batched (no shuffling)."""
    return DataLoader(graphs, batch_size=batch_size, shuffle=False)


def blank_labels(tasks: Sequence[Task], graph: Data) -> Data:
    """``graph`` with all-NaN (unlabelled) target attributes of the widths the tasks read."""
    widths: dict[tuple[str, str], int] = {}
    for task in tasks:
        width = max(task.columns) + 1 if task.columns else (1 if task.kind == "multiclass" else task.num_outputs)
        key = (task.target, task.level)
        widths[key] = max(widths.get(key, 0), width)
    for (target, level), width in widths.items():
        rows = graph.num_nodes if level == "node" else 1
        setattr(graph, target, torch.full((rows, width), float("nan")))
    return graph


def featurise_all(run: LoadedRun | Ensemble, smiles: Sequence[str]) -> tuple[list[Data | None], list[str]]:
    """The run's featuriser on every SMILES: a graph (with blank labels and, for a run with
    ``data.graph_features``, its molecule features ``graph_x``) or ``None`` and the reason."""
    from graph_mtl.data.featurise import featurise

    if run.featuriser is None:
        name = run.metadata["model_inputs"]["dataset"]
        raise ValueError(f"--input: {run.path} was trained on {name!r}, which is not built from SMILES; predict "
                         "its own nodes with --split test|all instead")
    graphs, errors = [], []
    for smi in smiles:
        graph, reason = featurise(run.featuriser, smi)
        graphs.append(None if graph is None else blank_labels(run.tasks, graph))
        errors.append(reason)
    spec = run.featuriser.get("graph_features")
    if spec is not None:  # data.graph_features: the run's transform (training statistics) on the new molecules
        from graph_mtl.data.graph_features import features_for_smiles

        rows = [i for i, g in enumerate(graphs) if g is not None]
        features = features_for_smiles(spec, [smiles[i].strip() for i in rows])
        for k, i in enumerate(rows):
            graphs[i].graph_x = features[k:k + 1]
    return graphs, errors


def predict_smiles(run: LoadedRun | Ensemble, smiles: Sequence[str], batch_size: int | None = None,
                   progress: bool = False) -> Predictions:
    """:meth:`LoadedRun.predict` / :meth:`Ensemble.predict`."""
    graphs, errors = featurise_all(run, smiles)
    valid = [g for g in graphs if g is not None]
    rows = [i for i, g in enumerate(graphs) if g is not None]
    raws = [m.raw_outputs(valid, batch_size, progress) for m in run.members] if valid else \
        [{t.name: np.zeros((0, t.num_outputs), dtype=np.float32) for t in run.tasks}]
    columns = combine(run.tasks, raws)
    node_counts = [g.num_nodes for g in valid]
    levels = {name: t.level for t in run.tasks for name in columns if name == t.name or name.startswith(f"{t.name}/")}
    result = Predictions(list(smiles), errors,
                         classes={t.name for t in run.tasks if t.kind == "multiclass"})
    offsets = np.cumsum([0, *node_counts])
    for name, values in columns.items():
        if levels[name] == "graph":
            full = np.full(len(graphs), np.nan)
            full[rows] = values
            result.graph[name] = full
        else:
            per_row = [np.zeros(0)] * len(graphs)
            for k, i in enumerate(rows):
                per_row[i] = values[offsets[k]:offsets[k + 1]]
            result.node[name] = per_row
    return result


# ------------------------------------------------------------------------------------------- evaluation


def evaluate_run(run: LoadedRun | Ensemble, make_loader: Callable[[LoadedRun], Any]) -> dict[str, Any]:
    """The evaluation record of ``results.json`` (``score_predictions``) of the run over the labelled batches
    ``make_loader(member)`` yields; an ensemble scores its mean columns (:func:`metric_inputs`) and has no
    loss."""
    from graph_mtl.data.base import SPLITS, MultiTaskDataset
    from graph_mtl.data.registry import summary_for

    outputs = []
    for member in run.members:
        member.model.eval()
        outputs.append(collect_predictions(member.model, member.scalers, make_loader(member), member.device,
                                           lambda m=member: amp_context(m.config.train.amp, m.device)))
    true = outputs[0][0]
    if isinstance(run, LoadedRun):
        pred, loss = outputs[0][1], outputs[0][2] / max(outputs[0][3], 1)
    else:
        columns = combine(run.tasks, [o[1] for o in outputs])
        pred, loss = {t.name: metric_inputs(t, columns) for t in run.tasks}, None
    named = MultiTaskDataset(run.metadata["model_inputs"]["dataset"], run.tasks, {s: [] for s in SPLITS})
    baselines = {name: row.numpy() for name, row in run.metadata["baselines"].items()}
    return score_predictions(run.tasks, true, pred, loss, baselines, summary_for(named))


def evaluate_split(run: LoadedRun | Ensemble, split: str) -> dict[str, Any]:
    """:func:`evaluate_run` on a split of the run's own dataset, batched as its training evaluated it."""
    return evaluate_splits(run, [split])[split]


def evaluate_splits(run: LoadedRun | Ensemble, splits: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_split` for each of ``splits``, the dataset loaded once."""
    from graph_mtl.data.registry import load_dataset
    from graph_mtl.run import make_loaders

    dataset = load_dataset(run.config.data)
    return {split: evaluate_run(run, lambda member, split=split: make_loaders(member.config, dataset, None)[split])
            for split in splits}


def predict_nodes(run: LoadedRun | Ensemble, split: str) -> dict[str, list]:
    """Per-node predictions of a single-graph run (Planetoid, sbm...) on ``split`` or ``all`` nodes, from one
    forward pass over the whole graph: columns ``node``, ``split`` (the node's split) and the tasks' columns."""
    from graph_mtl.data.base import SPLITS, is_single_graph
    from graph_mtl.data.registry import load_dataset

    dataset = load_dataset(run.config.data)
    if not is_single_graph(dataset):
        raise ValueError(f"--split: {dataset.name} is a dataset of many graphs; predict molecules with --input "
                         "FILE.csv (evaluate --split scores a split)")
    graph = dataset.splits["train"][0]
    whole = Data(**{k: v for k, v in graph.to_dict().items() if k != "node_mask"})
    columns = combine(run.tasks, [m.raw_outputs([whole]) for m in run.members])
    names = np.full(graph.num_nodes, "", dtype=object)
    for name in SPLITS:
        names[dataset.splits[name][0].node_mask.numpy()] = name
    chosen = np.arange(graph.num_nodes) if split == "all" else np.flatnonzero(names == split)
    classes = {t.name for t in run.tasks if t.kind == "multiclass"}
    table: dict[str, list] = {"node": chosen.tolist(), "split": names[chosen].tolist()}
    for name, values in columns.items():
        table[name] = [_cell(v, name in classes) for v in values[chosen]]
    return table


# ------------------------------------------------------------------------------------------- loading


def checkpoint_files(path: str | Path, checkpoint: str = "best") -> list[Path]:
    """The checkpoint(s) a RUN names: a ``.pt`` file, a run folder's ``<checkpoint>.pt``, or one per seed of a
    ``--seeds`` folder (``seed<N>/<checkpoint>.pt``, by seed)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint: unknown value {checkpoint!r}; choose one of {list(CHECKPOINTS)}")
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"RUN: {str(path)!r} does not exist; give a run folder written by graph-mtl train "
                                "or a checkpoint file")
    own = path / f"{checkpoint}.pt"
    if own.is_file():
        return [own]
    seeds = [d for d in path.iterdir() if re.fullmatch(r"seed\d+", d.name) and (d / f"{checkpoint}.pt").is_file()]
    if seeds:
        return [d / f"{checkpoint}.pt" for d in sorted(seeds, key=lambda d: int(d.name[4:]))]
    raise FileNotFoundError(f"RUN: {str(path)!r} holds neither {checkpoint}.pt nor seed<N>/{checkpoint}.pt; give a "
                            "folder written by graph-mtl train (or train --seeds)")


def load_checkpoint_file(path: Path, device: torch.device) -> LoadedRun:
    """One checkpoint as a :class:`LoadedRun`; a one-line ``ValueError`` when it cannot be used."""
    from graph_mtl.engine.checkpoint import load_checkpoint
    from graph_mtl.run import model_from_inputs

    try:
        state = load_checkpoint(path, device, required=("model",))
    except Exception as error:  # torch raises many kinds on a truncated or foreign file
        first = (str(error).splitlines() or [""])[0][:120]
        raise ValueError(f"RUN: {path} cannot be read as a checkpoint ({type(error).__name__}: {first}); it is "
                         "corrupted or not a .pt file written by graph-mtl train") from None
    meta = check_metadata(state, path)
    try:
        config = from_dict(meta["config"])
    except ConfigError as error:
        raise ValueError(f"RUN: the config stored in {path} is not valid for this graph_mtl ({error})") from None
    tasks = [task_from_dict(spec) for spec in meta["tasks"]]
    model = model_from_inputs(config.model, meta["model_inputs"], tasks)
    if model.grouped is not None and not any(key.startswith("grouped.") for key in state["model"]):
        # written before heads were grouped automatically (many one-output graph tasks): its separate heads
        model = model_from_inputs(replace(config.model, grouped_heads=False), meta["model_inputs"], tasks)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:160]
        raise ValueError(f"RUN: the weights in {path} do not fit the model its metadata describes ({detail}); the "
                         "file was altered or written by another version") from None
    return LoadedRun(model.to(device).eval(), tasks, state.get("scalers") or {}, meta.get("featuriser"), config,
                     meta, path, device)


def load_run(path: str | Path, checkpoint: str = "best", device: str = "auto") -> LoadedRun | Ensemble:
    """A trained run as a model ready to predict: a run folder (its ``best.pt`` by default), a checkpoint file,
    or a ``--seeds`` folder (an :class:`Ensemble` of its seeds)."""
    files = checkpoint_files(path, checkpoint)
    target = resolve_device(device)
    runs = [load_checkpoint_file(f, target) for f in files]
    seeds = Path(path).is_dir() and files[0].parent != Path(path)
    return Ensemble(runs) if seeds else runs[0]
