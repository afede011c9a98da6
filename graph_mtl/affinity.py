r"""Inter-task affinity: which tasks help each other, measured in a short run before training.

The lookahead affinity of Fifty et al. (2021, "Efficiently Identifying Task Groupings", TAG). At a training step
with batch :math:`B`, shared parameters :math:`\theta_s` and task heads :math:`\theta_t`, take for each task
:math:`i` a plain SGD *lookahead* step on the shared parameters only, with task :math:`i`'s gradient,

.. math::  \theta_s'^{(i)} = \theta_s - \eta \, \nabla_{\theta_s} L_i(B; \theta_s, \theta_t),

and measure for every task :math:`j` how that step changed :math:`j`'s loss on the same batch:

.. math::  Z_{i \to j} = 1 - \frac{L_j(B; \theta_s'^{(i)}, \theta_t)}{L_j(B; \theta_s, \theta_t)}.

:math:`Z_{i \to j} > 0`: a step on :math:`i` lowers :math:`j`'s loss (``i`` helps ``j``); :math:`< 0`: it raises
it. To first order :math:`Z_{i \to j} \approx \eta \, g_i^\top g_j / L_j` (:math:`g` the shared-parameter
gradients), so the affinity is the gradient cosine weighted by the gradients' norms and the loss of ``j``;
:math:`Z_{i \to i} > 0` for small :math:`\eta`. The affinity of a run is the mean of :math:`Z` over its steps
(:func:`task_affinity`), next to the mean pairwise cosine of the shared-parameter gradients
(:func:`graph_mtl.engine.monitor.conflict_stats`).

Between measurements the model trains along a real trajectory: equal weighting (the gradient of
:math:`\sum_i L_i`), plain Adam, no gradient clipping.

Implementation choices:

* **No mutation**: :math:`\theta_s'` is never written into the model. Each lookahead loss is one forward pass
  through :func:`torch.func.functional_call` with the shared parameters replaced by the new tensors, so
  :math:`\theta_s` is restored exactly (it is never changed). The module's buffers (BatchNorm running
  statistics) are replaced by fresh copies in those passes, so the lookahead passes leave them untouched.
* **Deterministic losses, train-mode semantics**: every forward pass of one step (the training pass that gives
  :math:`L_j(\theta_s)` and the gradients, and the :math:`T` lookahead passes) runs in training mode inside
  :func:`torch.random.fork_rng` seeded with the same per-step seed, so dropout draws the *same* mask in all of
  them (common random numbers) and BatchNorm normalises with the batch's statistics as in training. The ratio
  then measures the effect of the step alone: with :math:`\eta = 0`, :math:`Z = 0` exactly. (``model.eval()``
  was not used: early in a run the running statistics of BatchNorm describe nothing yet, so eval-mode losses
  would not be the losses being trained.) The per-step seeds are drawn from torch's global generator, so a
  seeded run is reproducible.
* **Absent tasks**: a task without a label in a batch has no loss (:func:`graph_mtl.tasks.task_losses`); the
  step then contributes nothing to its row and column. Averages divide by per-pair ``counts``; a pair never
  measured is NaN. A measured task whose loss is exactly 0 (or not finite) before the lookahead is skipped
  for that step too (the ratio is undefined).

:func:`suggest_groups` turns the affinity matrix into task groups; :func:`write_affinity` writes the CSV files,
the heatmap and a Markdown page; :func:`run_affinity` does it all from a :class:`~graph_mtl.config.Config`
(``graph-mtl affinity``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from graph_mtl.engine.gradients import JacobianEngine, trainable
from graph_mtl.engine.monitor import conflict_stats
from graph_mtl.tasks import Scalers, Task, task_losses


@dataclass
class AffinityResult:
    """What :func:`task_affinity` measured.

    Attributes:
        names: the task names, the order of the rows and columns.
        affinity: ``[T, T]`` mean lookahead affinity :math:`Z_{i \\to j}` (row ``i``: the task stepped, column
            ``j``: the task measured); NaN where never measured.
        cosine: ``[T, T]`` mean cosine of the shared-parameter gradients; NaN where never measured.
        counts: ``[T, T]`` steps that contributed to each entry of ``affinity``.
        cosine_counts: ``[T, T]`` steps that contributed to each entry of ``cosine``.
        steps: training steps taken.
        lr: the Adam learning rate of the training steps.
        lookahead_lr: :math:`\\eta`, the SGD learning rate of the lookahead steps.
        info: free-form facts for the report (dataset, config).
    """

    names: list[str]
    affinity: np.ndarray
    cosine: np.ndarray
    counts: np.ndarray
    cosine_counts: np.ndarray
    steps: int
    lr: float
    lookahead_lr: float
    info: dict[str, Any] = field(default_factory=dict)


def task_affinity(model: nn.Module, loader: Iterable, tasks: list[Task], steps: int, lr: float,
                  lookahead_lr: float, device: torch.device | str, *, scalers: Scalers | None = None,
                  log: Callable[[str], None] | None = None) -> AffinityResult:
    r"""Train ``model`` for ``steps`` steps and average the lookahead affinity and gradient cosines over them.

    At each step (see the module docstring for the details): the losses :math:`L_j(B; \theta_s)` and the
    shared-parameter gradients :math:`g_i = \nabla_{\theta_s} L_i` of the present tasks; for each present ``i``
    the losses at :math:`\theta_s - \eta g_i` and :math:`Z_{i \to j} = 1 - L_j(\theta_s - \eta g_i) /
    L_j(\theta_s)`; the cosines :math:`g_i^\top g_j / (\lVert g_i\rVert \lVert g_j\rVert)`; then one Adam step
    (learning rate ``lr``) on :math:`\sum_j L_j`. ``loader`` is iterated again when it runs out before
    ``steps`` batches.

    Args:
        model: a multi-task model: ``model(batch).preds`` maps task names to predictions and
            ``model.shared_parameters()`` gives the shared parameters :math:`\theta_s`. It is trained in place.
        loader: batches (a training loader).
        tasks: the tasks, in the order of the result's rows and columns.
        steps: training steps (>= 1).
        lr: Adam's learning rate for the training steps.
        lookahead_lr: :math:`\eta` (> 0 in practice; 0 gives ``Z = 0``).
        device: where to compute.
        scalers: regression targets to standardise, as the trainer does (``train.standardize_targets``).
        log: called with a progress line now and then.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"affinity: steps must be an int >= 1, got {steps!r}")
    if not lookahead_lr >= 0:
        raise ValueError(f"affinity: lookahead_lr must be >= 0, got {lookahead_lr!r}")
    device = torch.device(device)
    names = [t.name for t in tasks]
    index = {name: k for k, name in enumerate(names)}
    t = len(names)
    model.to(device).train()
    param_names = {id(p): n for n, p in model.named_parameters()}
    shared = trainable(model.shared_parameters())
    if not shared:
        raise ValueError("affinity: the model has no trainable shared parameters")
    shared_names = [param_names[id(p)] for p in shared]
    optimizer = torch.optim.Adam(trainable(model.parameters()), lr=lr)
    engine = JacobianEngine()
    forked = [device] if device.type == "cuda" else []

    z_sum, z_count = np.zeros((t, t)), np.zeros((t, t))
    cos_sum, cos_count = np.zeros((t, t)), np.zeros((t, t))
    taken = 0
    for batch in _cycle(loader, steps):
        batch = batch.to(device)
        seed = int(torch.randint(0, 2**62, ()).item())
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            losses = task_losses(tasks, model(batch).preds, batch, scalers)
        present = [name for name in names if name in losses]
        if present:
            before = torch.stack([losses[name] for name in present])
            J = engine.jacobian([losses[name] for name in present], shared, retain_graph=True)
            rows = np.array([index[name] for name in present])
            block = np.ix_(rows, rows)
            cos_sum[block] += conflict_stats(J)["cos"].cpu().numpy()
            cos_count[block] += 1
            after = _lookahead_losses(model, batch, tasks, present, shared, shared_names, J.detach(),
                                      lookahead_lr, seed, forked, scalers)
            z, valid = _ratios(before.detach(), after)
            z_sum[block] += np.where(valid, z, 0.0)
            z_count[block] += valid
            del J
            optimizer.zero_grad(set_to_none=True)
            before.sum().backward()
            optimizer.step()
        taken += 1
        if log is not None and (taken % max(1, steps // 5) == 0 or taken == steps):
            log(f"affinity: step {taken}/{steps}")
    with np.errstate(invalid="ignore", divide="ignore"):
        affinity = np.where(z_count > 0, z_sum / z_count, np.nan)
        cosine = np.where(cos_count > 0, cos_sum / cos_count, np.nan)
    return AffinityResult(names=names, affinity=affinity, cosine=cosine, counts=z_count.astype(int),
                          cosine_counts=cos_count.astype(int), steps=taken, lr=float(lr),
                          lookahead_lr=float(lookahead_lr))


def _cycle(loader: Iterable, steps: int) -> Iterator:
    """``steps`` batches from ``loader``, iterated again (a new epoch) whenever it runs out."""
    taken = 0
    while taken < steps:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            taken += 1
            if taken == steps:
                return
        if empty:
            raise ValueError("affinity: the loader yields no batch (empty training split)")


def _lookahead_losses(model: nn.Module, batch, tasks: list[Task], present: list[str], shared: list[Tensor],
                      shared_names: list[str], J: Tensor, lookahead_lr: float, seed: int, forked: list,
                      scalers: Scalers | None) -> Tensor:
    """``[p, p]``: row ``i`` holds the present tasks' losses after the lookahead step on task ``present[i]``.

    The model is not changed: the stepped shared parameters and fresh copies of the buffers are passed to
    :func:`~torch.func.functional_call`; the RNG is seeded with the step's ``seed`` as in the training pass.
    """
    sizes = [p.numel() for p in shared]
    rows = []
    with torch.no_grad():
        for i in range(len(present)):
            grads = J[i].to(shared[0].dtype).split(sizes)
            replaced = {name: p - lookahead_lr * g.view_as(p) for name, p, g in zip(shared_names, shared, grads)}
            replaced.update({name: b.clone() for name, b in model.named_buffers()})
            with torch.random.fork_rng(devices=forked):
                torch.manual_seed(seed)
                preds = functional_call(model, replaced, (batch,)).preds
            losses = task_losses(tasks, preds, batch, scalers)
            rows.append(torch.stack([losses[name] for name in present]))
    return torch.stack(rows)


def _ratios(before: Tensor, after: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``Z[i, j] = 1 - after[i, j] / before[j]`` (float64) and where it is defined (``before[j]`` finite, > 0)."""
    b = before.double().cpu().numpy()
    a = after.double().cpu().numpy()
    ok = np.isfinite(b) & (b > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = 1.0 - a / np.where(ok, b, 1.0)[None, :]
    valid = ok[None, :] & np.isfinite(z)
    return z, valid


# ---------------------------------------------------------------------------------------------- grouping


def suggest_groups(affinity: np.ndarray, names: list[str]) -> list[list[str]]:
    r"""Task groups from an affinity matrix by greedy average-linkage merging.

    The rule: symmetrise, :math:`S = (Z + Z^\top) / 2` (how much ``i`` and ``j`` help each other, both ways);
    start with one group per task; repeatedly merge the two groups :math:`A, B` with the highest mean
    inter-group affinity :math:`\bar S(A, B) = \mathrm{mean}_{a \in A, b \in B} S_{ab}` (over the pairs with a
    finite value; a pair of groups without any is never merged) while that mean is > 0. Ties go to the pair
    that comes first in task order. So tasks end up together only when, on average, their steps lower each
    other's losses; a task that helps no other stays alone. The diagonal is not used.

    Returns the groups, each in task order, ordered by their first task.
    """
    z = np.asarray(affinity, dtype=float)
    t = len(names)
    if z.shape != (t, t):
        raise ValueError(f"suggest_groups: affinity of shape {z.shape} for {t} names")
    s = (z + z.T) / 2.0
    groups: list[list[int]] = [[k] for k in range(t)]
    while len(groups) > 1:
        best, pair = 0.0, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                values = s[np.ix_(groups[a], groups[b])]
                values = values[np.isfinite(values)]
                if values.size and (mean := float(values.mean())) > best:
                    best, pair = mean, (a, b)
        if pair is None:
            break
        a, b = pair
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    groups.sort(key=lambda g: g[0])
    return [[names[k] for k in g] for g in groups]


# ---------------------------------------------------------------------------------------------- output


def write_affinity(result: AffinityResult, out_dir: str | Path) -> Path:
    """Write ``affinity.csv``, ``cosine.csv``, ``counts.csv``, ``affinity.png`` (and ``cosine.png``) and
    ``affinity.md`` into ``out_dir``; returns the path of ``affinity.md``.

    The CSV files hold one row per task with the task names as the first column and as the header (``nan``: never
    measured); in ``affinity.csv`` the rows are the stepped task ``i``, the columns the measured task ``j``.
    """
    from graph_mtl.report import plot_heatmap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = result.names
    _write_matrix(out / "affinity.csv", result.affinity, names, "stepped\\measured")
    _write_matrix(out / "cosine.csv", result.cosine, names, "task")
    _write_matrix(out / "counts.csv", result.counts, names, "stepped\\measured")
    groups = suggest_groups(result.affinity, names)
    image = plot_affinity(result.affinity, names, out / "affinity.png",
                          title=f"Lookahead task affinity (mean of {result.steps} steps, lr {result.lookahead_lr:g})")
    cos_image = plot_heatmap(result.cosine, names, "Mean cosine of the shared-parameter gradients",
                              out / "cosine.png")

    lines = ["# Task affinity", ""]
    facts = [f"{k}: {v}" for k, v in result.info.items()]
    facts += [f"steps: {result.steps}", f"lookahead lr: {result.lookahead_lr:g}", f"Adam lr: {result.lr:g}"]
    lines += [", ".join(facts), ""]
    lines += [r"Lookahead affinity of Fifty et al. (2021, TAG): $Z_{i \to j} = 1 - L_j(\theta_s') / L_j(\theta_s)$ "
              r"with $\theta_s' = \theta_s - \eta \nabla_{\theta_s} L_i$, on the same batch, averaged over the "
              "steps. Positive: a step on task *i* (row) lowers the loss of task *j* (column).", ""]
    lines += ["## Suggested groups", ""]
    lines += [f"{k + 1}. {', '.join(g)}" for k, g in enumerate(groups)]
    lines += ["", "Rule: $S = (Z + Z^T)/2$; starting from one group per task, merge the two groups with the highest "
              "mean inter-group $S$ while that mean is > 0.", ""]
    lines += ["## Affinity (rows: task stepped *i*, columns: task measured *j*)", ""]
    if image is not None:
        lines += [f"![affinity]({image})", ""]
    lines += _markdown_matrix(result.affinity, names, ".3g") + [""]
    lines += ["## Gradient cosine (shared parameters)", ""]
    if cos_image is not None:
        lines += [f"![cosine]({cos_image})", ""]
    lines += _markdown_matrix(result.cosine, names, ".3f") + [""]
    path = out / "affinity.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def plot_affinity(matrix: np.ndarray, names: list[str], path: Path, title: str = "Lookahead task affinity"
                  ) -> str | None:
    """A heatmap of ``matrix`` (diverging colours centred at 0, values in the cells up to
    :data:`graph_mtl.report.ANNOTATE_LIMIT` tasks); returns the file name, or ``None`` when nothing is finite.

    The colour limits are symmetric, ``+-max|value|`` over the off-diagonal entries (over all entries when no
    off-diagonal one is finite): the self-affinities ``Z[i, i]`` are often ten times the others and would wash
    them out, so the diagonal may saturate (its values stay written in the cells). The cosine heatmap of
    The drawing is :func:`graph_mtl.report.plot_heatmap`.
    """
    from graph_mtl.report import plot_heatmap

    matrix = np.asarray(matrix, dtype=float)
    finite = np.isfinite(matrix)
    if not finite.any():
        return None
    off = finite & ~np.eye(len(names), dtype=bool)
    limit = float(np.abs(matrix[off if off.any() else finite]).max()) or 1.0
    return plot_heatmap(matrix, names, title, path, limit=limit, fmt=".2g",
                        label="affinity (positive: stepping i lowers j's loss)",
                        axes=("task measured (j)", "task stepped (i)"))


def format_matrix(matrix: np.ndarray, names: list[str], spec: str = ".3g") -> str:
    """A plain-text table of ``matrix`` with the task names on both sides."""
    cells = [[""] + list(names)]
    cells += [[name] + [_cell(v, spec) for v in row] for name, row in zip(names, np.asarray(matrix, dtype=float))]
    widths = [max(len(r[k]) for r in cells) for k in range(len(cells[0]))]
    return "\n".join("  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in cells)


def _cell(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def _markdown_matrix(matrix: np.ndarray, names: list[str], spec: str) -> list[str]:
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, np.asarray(matrix, dtype=float)):
        lines.append(f"| **{name}** | " + " | ".join(_cell(v, spec) for v in row) + " |")
    return lines


def _write_matrix(path: Path, matrix: np.ndarray, names: list[str], corner: str) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([corner, *names])
        for name, row in zip(names, np.asarray(matrix)):
            writer.writerow([name, *(repr(float(v)) if isinstance(v, float | np.floating) else str(v) for v in row)])


# ---------------------------------------------------------------------------------------------- from a config


def run_affinity(config, steps: int, lookahead_lr: float | None, out_dir: str | Path,
                 log: Callable[[str], None] = print) -> tuple[AffinityResult, Path]:
    """Build the dataset, model and training loader of ``config``, measure the affinity over ``steps`` steps
    (Adam at ``config.train.lr``; lookahead at ``lookahead_lr``, default ``config.train.lr``) and write it into
    ``out_dir`` (:func:`write_affinity`); returns the result and the path of ``affinity.md``."""
    from graph_mtl.data.registry import load_dataset
    from graph_mtl.engine.checkpoint import seed_everything
    from graph_mtl.engine.trainer import resolve_device
    from graph_mtl.run import build_loaders, build_model
    from graph_mtl.tasks import collect_labels, fit_scalers

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps: must be an integer >= 1, got {steps!r}")
    lookahead_lr = config.train.lr if lookahead_lr is None else lookahead_lr
    if not (math.isfinite(lookahead_lr) and lookahead_lr > 0):
        raise ValueError(f"--lr: the lookahead learning rate must be > 0, got {lookahead_lr!r}")
    seed_everything(config.seed)
    dataset = load_dataset(config.data)
    if not dataset.splits["train"]:
        raise ValueError(f"data: the train split of {dataset.name} is empty; raise data.limit or use a larger dataset")
    tasks = list(dataset.tasks)
    model = build_model(config.model, dataset)
    device = resolve_device(config.device)
    loader = build_loaders(dataset, config.data.batch_size, config.seed, config.data.num_workers)["train"]
    scalers = None
    if config.train.standardize_targets:
        scalers = fit_scalers(tasks, collect_labels(tasks, dataset.splits["train"]))
    log(f"dataset {dataset.name}: {len(tasks)} tasks; {steps} steps, lookahead lr {lookahead_lr:g}, device {device}")
    result = task_affinity(model, loader, tasks, steps, config.train.lr, lookahead_lr, device, scalers=scalers,
                           log=log)
    result.info = {"dataset": dataset.name, "conv": config.model.conv, "seed": config.seed}
    return result, write_affinity(result, out_dir)
