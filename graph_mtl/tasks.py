"""Task specifications and masked losses.

A :class:`Task` says where a target lives on a PyG batch, what kind of prediction it is, which loss trains it
and which metric scores it. Targets are always stored as float tensors in which ``NaN`` marks a missing label,
so every kind of task can be masked the same way.

Loss normalisation (named ``"mean-per-task"``): a task's loss is the mean of the element-wise loss over its
*labelled* entries, ``L_t = sum_{i in labelled} l(p_i, y_i) / |labelled|``. For a multi-label task (one task,
many columns) this is OGB's flat mean over every labelled (sample, column) entry. A task with no labelled entry
in a batch has no loss at all (it is *absent* for that step) - never a NaN, never a zero that would still
pull the weights of a balancer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Level = Literal["node", "graph"]
Kind = Literal["binary", "multiclass", "multilabel", "regression"]

LEVELS: tuple[str, ...] = ("node", "graph")
KINDS: tuple[str, ...] = ("binary", "multiclass", "multilabel", "regression")

DEFAULT_LOSS: dict[str, str] = {
    "binary": "bce",
    "multilabel": "bce",
    "multiclass": "ce",
    "regression": "mse",
}
DEFAULT_METRIC: dict[str, str] = {
    "binary": "rocauc",
    "multilabel": "rocauc",
    "multiclass": "accuracy",
    "regression": "rmse",
}
LOSSES: tuple[str, ...] = ("bce", "ce", "mse", "l1", "smooth_l1")
#: Metrics where larger is better; every other metric is minimised.
MAXIMISED_METRICS: frozenset[str] = frozenset({"rocauc", "ap", "accuracy", "f1", "r2"})


@dataclass(frozen=True)
class Task:
    """One prediction task of a multi-task model.

    Args:
        name: unique task name (used in configs, logs and result files).
        level: ``"node"`` (one prediction per node) or ``"graph"`` (one per graph).
        kind: ``"binary"``, ``"multiclass"``, ``"multilabel"`` or ``"regression"``.
        num_outputs: model outputs: classes for multiclass, labels for multilabel, target dimensions for
            regression, 1 for binary.
        target: attribute of the batch that holds the labels (a float tensor, ``NaN`` = missing).
        columns: columns of ``target`` that belong to this task; ``None`` takes the whole attribute.
        loss: loss name; defaults by kind (bce, ce, mse).
        metric: metric name; defaults by kind (rocauc, accuracy, rmse).
    """

    name: str
    level: Level
    kind: Kind
    num_outputs: int = 1
    target: str = "y"
    columns: tuple[int, ...] | None = None
    loss: str = ""
    metric: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("task.name: must be a non-empty string")
        if self.level not in LEVELS:
            raise ValueError(f"task {self.name!r}: level must be one of {LEVELS}, got {self.level!r}")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.num_outputs < 1:
            raise ValueError(f"task {self.name!r}: num_outputs must be >= 1, got {self.num_outputs}")
        if self.kind == "binary" and self.num_outputs != 1:
            raise ValueError(f"task {self.name!r}: a binary task has num_outputs=1; use kind=multilabel")
        if self.kind == "multiclass" and self.num_outputs < 2:
            raise ValueError(f"task {self.name!r}: a multiclass task needs num_outputs >= 2 classes")
        if self.columns is not None and self.kind != "multiclass" and len(self.columns) != self.num_outputs:
            raise ValueError(
                f"task {self.name!r}: {len(self.columns)} columns given for num_outputs={self.num_outputs}"
            )
        object.__setattr__(self, "loss", self.loss or DEFAULT_LOSS[self.kind])
        object.__setattr__(self, "metric", self.metric or DEFAULT_METRIC[self.kind])
        if self.loss not in LOSSES:
            raise ValueError(f"task {self.name!r}: loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def maximise(self) -> bool:
        """Whether a larger value of this task's metric is better."""
        return self.metric in MAXIMISED_METRICS

    def labels(self, batch) -> Tensor:
        """The task's labels from a batch, shape ``[n, k]`` (``k`` = 1 for binary and multiclass)."""
        y = self.target_matrix(batch)
        if self.columns is not None:
            y = y[:, list(self.columns)]
        return y

    def target_matrix(self, batch) -> Tensor:
        """The whole target attribute of a batch as a float ``[n, C]`` matrix (every column, not only this
        task's)."""
        try:
            y = getattr(batch, self.target)
        except AttributeError:
            y = None
        if y is None:
            raise KeyError(f"task {self.name!r}: the batch has no target attribute {self.target!r}")
        y = y.float()
        return y.unsqueeze(-1) if y.dim() == 1 else y


def labelled_mask(task: Task, y: Tensor, node_mask: Tensor | None = None) -> Tensor:
    """Boolean mask of the labelled entries of ``y``; a node task also honours the split's ``node_mask``."""
    mask = ~torch.isnan(y)
    if task.level == "node" and node_mask is not None:
        mask = mask & node_mask.view(-1, 1)
    return mask


def elementwise_loss(task: Task, pred: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """The loss of every labelled entry, flat; ``pred``, ``y`` and ``mask`` as in :func:`masked_loss`."""
    if task.loss == "ce":
        rows = mask[:, 0]
        return F.cross_entropy(pred[rows].float(), y[rows, 0].long(), reduction="none")
    target = torch.where(mask, y, torch.zeros_like(y))
    pred = pred.float()
    if task.loss == "bce":
        elementwise = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    elif task.loss == "mse":
        elementwise = F.mse_loss(pred, target, reduction="none")
    elif task.loss == "l1":
        elementwise = F.l1_loss(pred, target, reduction="none")
    else:
        elementwise = F.smooth_l1_loss(pred, target, reduction="none")
    return elementwise[mask]


def masked_loss(task: Task, pred: Tensor, y: Tensor, mask: Tensor) -> Tensor | None:
    """Mean loss over the labelled entries (see module docstring); ``None`` if nothing is labelled.

    ``pred`` is ``[n, num_outputs]``, ``y`` and ``mask`` are ``[n, k]`` as returned by :meth:`Task.labels`.
    """
    if not bool(mask.any()):
        return None
    return elementwise_loss(task, pred, y, mask).mean()


def masked_loss_sum(task: Task, pred: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor | None, int]:
    """The summed loss of the labelled entries and their number (``None, 0`` if nothing is labelled); a
    process's part of a loss whose mean is taken over several processes (``engine/distributed.py``)."""
    if not bool(mask.any()):
        return None, 0
    values = elementwise_loss(task, pred, y, mask)
    return values.sum(), values.numel()


#: per-task ``(mean, std)`` of regression targets, each ``[k]``; the model learns ``(y - mean) / std``
Scalers = dict[str, tuple[Tensor, Tensor]]


def collect_labels(tasks: list[Task], graphs) -> dict[str, Tensor]:
    """Every task's targets over ``graphs`` stacked row-wise, NaN where unlabelled or outside ``node_mask``.

    Each target attribute (and the node masks) is concatenated over the graphs once, then every task takes its
    columns of the result: ``O(graphs + tasks)`` tensor operations, not ``graphs x tasks``.
    """
    graphs = list(graphs)
    joined = _JoinedTargets()
    for attribute in dict.fromkeys(task.target for task in tasks):
        parts = [getattr(graph, attribute, None) for graph in graphs]
        if any(part is None for part in parts):
            raise KeyError(f"task {next(t.name for t in tasks if t.target == attribute)!r}: a graph has no target "
                           f"attribute {attribute!r}")
        setattr(joined, attribute, torch.cat([p.float().reshape(p.shape[0], -1) for p in parts]) if parts else
                torch.zeros(0, 1))
    if any(getattr(graph, "node_mask", None) is not None for graph in graphs):
        joined.node_mask = torch.cat([graph.node_mask if getattr(graph, "node_mask", None) is not None else
                                      torch.ones(graph.num_nodes, dtype=torch.bool) for graph in graphs])
    out: dict[str, Tensor] = {}
    for task in tasks:
        y, mask = loss_targets(task, joined)  # no scalers: the raw labels
        out[task.name] = torch.where(mask, y, torch.full_like(y, float("nan")))
    return out


#: the largest float32: every label, and the mean and standard deviation of regression targets, must stay below it
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_labels(tasks: list[Task], labels: dict[str, Tensor]) -> None:
    """Every label is finite (NaN marks a missing one) and within the float32 range the model trains in."""
    for task in tasks:
        y = labels[task.name]
        if torch.isinf(y).any():
            raise ValueError(f"data: task {task.name!r} has infinite training labels (a value beyond float32's "
                             f"{FLOAT32_MAX:.3g}?); rescale or fix the labels (NaN marks a missing one)")


class _JoinedTargets:
    """The target attributes (and ``node_mask``) of many graphs concatenated: what :func:`loss_targets` reads."""

    node_mask: Tensor | None = None


def fit_scalers(tasks: list[Task], labels: dict[str, Tensor]) -> Scalers:
    r"""Mean :math:`\mu` and standard deviation :math:`\sigma = \sqrt{\overline{(y - \mu)^2}}` (per column,
    over the labelled training targets) of every regression task, computed in float64 (squares of labels near
    1e20 overflow float32) and returned in float32; a column whose statistics exceed float32 is an error."""
    scalers: Scalers = {}
    for task in tasks:
        if task.kind != "regression":
            continue
        y = labels[task.name].double()
        mean = torch.nan_to_num(torch.nanmean(y, dim=0), nan=0.0)
        std = torch.sqrt(torch.nan_to_num(torch.nanmean((y - mean) ** 2, dim=0), nan=1.0))
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        largest = float(torch.maximum(mean.abs(), std).max())
        if not largest < FLOAT32_MAX:
            raise ValueError(f"data: task {task.name!r}: its targets' mean or standard deviation ({largest:.3g}) "
                             f"exceeds float32's {FLOAT32_MAX:.3g}; rescale the labels")
        scalers[task.name] = (mean.float(), std.float())
    return scalers


def task_losses(tasks: list[Task], preds: dict[str, Tensor], batch,
                scalers: Scalers | None = None) -> dict[str, Tensor]:
    """Loss of every task that has at least one label in ``batch``; absent tasks are left out.

    A node task on a single-graph dataset is restricted to the split's nodes by ``batch.node_mask``.
    Regression targets named in ``scalers`` are standardised before the loss.

    Tasks that read one column each of the same target with an element-wise loss (every column of an OGB
    dataset in the column view) are handled together by :func:`column_losses`: their targets, masks and label
    counts are one ``[n, T]`` pass with one host sync, and each task's loss is still its own autograd node
    (a per-task backward visits that task's head only). Other tasks go through :func:`masked_loss`.
    """
    losses: dict[str, Tensor] = {}
    groups: dict[tuple[str, str], list[Task]] = {}
    for task in tasks:
        if task.loss in COLUMN_LOSSES and task.columns is not None and len(task.columns) == 1:
            groups.setdefault((task.target, task.level, task.loss), []).append(task)
            continue
        y, mask = loss_targets(task, batch, scalers)
        loss = masked_loss(task, preds[task.name], y, mask)
        if loss is not None:
            losses[task.name] = loss
    for group in groups.values():
        losses.update(column_losses(group, preds, batch, scalers))
    return {task.name: losses[task.name] for task in tasks if task.name in losses}


#: element-wise losses that :func:`column_losses` computes for many one-column tasks at once
COLUMN_LOSSES: tuple[str, ...] = ("bce", "mse", "l1", "smooth_l1")


def column_losses(tasks: list[Task], preds: dict[str, Tensor], batch,
                  scalers: Scalers | None = None) -> dict[str, Tensor]:
    r"""The mean-per-task losses of one-column tasks with one target, level and loss, computed column-wise.

    With ``Y [n, T]`` the tasks' columns, ``M`` their labelled mask and ``c_t = sum_i M_it``, task ``t``'s loss is
    ``L_t = sum_i l(p_it, Y_it) M_it / c_t``, the mean over its labelled entries (:func:`masked_loss`), or absent
    when ``c_t = 0``. ``Y``, ``M`` and ``M / c`` are built once for all tasks; one host sync reads which ``c_t``
    are positive. Without gradients (evaluation) the losses are one ``[n, T]`` operation; with gradients each
    task's loss is its own operation on its own prediction, so that its backward visits its own head only.
    """
    first = tasks[0]
    y = first.target_matrix(batch)[:, [task.columns[0] for task in tasks]]
    scaled = [i for i, task in enumerate(tasks) if scalers and task.name in scalers]
    if scaled:
        mean = torch.zeros(len(tasks), device=y.device)
        std = torch.ones(len(tasks), device=y.device)
        index = torch.tensor(scaled, device=y.device)
        mean[index] = torch.cat([scalers[tasks[i].name][0].reshape(1) for i in scaled]).to(y.device)
        std[index] = torch.cat([scalers[tasks[i].name][1].reshape(1) for i in scaled]).to(y.device)
        y = (y - mean) / std
    mask = labelled_mask(first, y, getattr(batch, "node_mask", None))
    counts = mask.sum(dim=0)
    present = (counts > 0).tolist()  # the one host sync
    target = torch.where(mask, y, torch.zeros_like(y))
    weight = mask / counts.clamp(min=1)
    loss = first.loss
    matrix = _columns_of_one_matrix(tasks, preds)
    if matrix is not None:  # columns of one prediction matrix (grouped heads): one loss operation for all tasks
        values = _weighted_loss(loss, matrix.float(), target, weight, dim=0).unbind()
        return {task.name: values[i] for i, task in enumerate(tasks) if present[i]}
    if not any(preds[task.name].requires_grad for task in tasks):
        values = _weighted_loss(loss, torch.cat([preds[task.name].float() for task in tasks], dim=1), target, weight,
                                dim=0)
        return {task.name: values[i] for i, task in enumerate(tasks) if present[i]}
    return {task.name: _weighted_loss(loss, preds[task.name].float(), target[:, i:i + 1], weight[:, i:i + 1])
            for i, task in enumerate(tasks) if present[i]}


def _columns_of_one_matrix(tasks: list[Task], preds: dict[str, Tensor]) -> Tensor | None:
    """``[n, len(tasks)]``: the tasks' predictions as columns of the one matrix they are views of (grouped heads
    return such predictions), or ``None``."""
    matrix = getattr(preds, "matrix", None)
    position = getattr(preds, "position", {})
    if matrix is None or any(task.name not in position for task in tasks):
        return None
    index = [position[task.name] for task in tasks]
    return matrix if index == list(range(matrix.shape[1])) else matrix[:, index]


def _weighted_loss(loss: str, pred: Tensor, target: Tensor, weight: Tensor, dim: int | None = None) -> Tensor:
    """``sum_i l(pred_i, target_i) weight_i`` for an element-wise loss ``l``: a scalar, or per column with
    ``dim=0`` (one fused operation for ``bce`` as a scalar)."""
    if loss == "bce" and dim is None:
        return F.binary_cross_entropy_with_logits(pred, target, weight=weight, reduction="sum")
    if loss == "bce":
        elementwise = F.binary_cross_entropy_with_logits(pred, target, weight=weight, reduction="none")
        return elementwise.sum(dim=0)
    if loss == "mse":
        elementwise = F.mse_loss(pred, target, reduction="none")
    elif loss == "l1":
        elementwise = F.l1_loss(pred, target, reduction="none")
    else:
        elementwise = F.smooth_l1_loss(pred, target, reduction="none")
    weighted = elementwise * weight
    return weighted.sum() if dim is None else weighted.sum(dim=dim)


def loss_targets(task: Task, batch, scalers: Scalers | None = None) -> tuple[Tensor, Tensor]:
    """The task's labels in ``batch`` as the loss sees them (standardised when ``scalers`` names the task) and
    the mask of the entries that count (labelled, and inside ``batch.node_mask`` for a node task)."""
    y = task.labels(batch)
    if scalers and task.name in scalers:
        mean, std = scalers[task.name]
        y = (y - mean.to(y.device)) / std.to(y.device)
    return y, labelled_mask(task, y, getattr(batch, "node_mask", None))
