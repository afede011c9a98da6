"""Evaluation metrics for multi-task graph learning, in plain numpy.

Single-column metrics (1-D ``y_true`` without missing labels, and a 1-D prediction unless stated):

* :func:`roc_auc` - area under the ROC curve as the Mann-Whitney statistic with average ranks for tied scores,
  ``AUC = (R_pos - P (P + 1) / 2) / (P N)``, ``R_pos`` the rank sum of the ``P`` positives among ``P + N``
  samples. This is exactly the trapezoidal area of sklearn's ``roc_auc_score``.
* :func:`average_precision` - step-wise ``AP = sum_k (R_k - R_{k-1}) P_k`` with one threshold per distinct
  score, scores taken in decreasing order (tied scores enter together), as sklearn's
  ``average_precision_score``.
* :func:`accuracy` - fraction of predicted classes equal to the label.
* :func:`f1` - for 1-D logits the binary F1 ``2 TP / (2 TP + FP + FN)`` of the positive class at
  ``logit > 0`` (probability 0.5); for 2-D class logits ``[n, C]`` the macro-F1 of the arg-max class, i.e.
  the unweighted mean of per-class F1 over the classes present in the labels or the predictions. A zero
  denominator gives 0 (sklearn's ``zero_division`` default).
* :func:`rmse` ``sqrt(mean((y - p)^2))``, :func:`mae` ``mean(|y - p|)``, :func:`r2` ``1 - SS_res / SS_tot``
  with sklearn's convention for ``SS_tot = 0``: 1 for an exact fit, else 0.

Task-level scoring (:func:`task_metric`) drops NaN labels and averages the columns of a task:

* binary / multilabel with ``rocauc`` or ``ap`` follows the OGB Evaluator: a column is scored only if its
  labelled entries hold both classes; the value is the unweighted mean over the scored columns.
* binary / multilabel with ``accuracy`` or ``f1``: per column at ``logit > 0``, mean over labelled columns.
* multiclass (``accuracy``, ``f1``): one column of class indices; the predicted class is the arg-max logit.
* regression (``rmse``, ``mae``, ``r2``): the metric **per column, then the unweighted mean over columns**
  (OGB's graph-property Evaluator computes its ``rmse`` the same way; this is *not* one RMSE over the flat
  array of every labelled entry, which differs when ``k > 1``). Columns without a label are skipped (OGB
  would return NaN); ``r2`` needs at least two labels in a column.

Every metric raises ``ValueError`` on non-finite predictions at labelled entries: a diverged model must not
be scored silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from graph_mtl.tasks import MAXIMISED_METRICS, Task

__all__ = [
    "METRICS",
    "METRICS_BY_KIND",
    "accuracy",
    "average_precision",
    "baseline_predictions",
    "better",
    "evaluate_tasks",
    "f1",
    "mae",
    "r2",
    "rmse",
    "roc_auc",
    "task_metric",
    "trivial_baseline",
]


# ----------------------------------------------------------------------------------------------- helpers


def _as_array(x: Any) -> np.ndarray:
    """A float64 numpy copy of an array-like or a (possibly on-GPU, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _binary_labels(y_true: np.ndarray) -> np.ndarray:
    """Boolean positives of a 0/1 label vector; any other value is an error."""
    y = _as_array(y_true).ravel()
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("binary labels must be 0 or 1 (NaN labels must be masked before this call)")
    return y == 1


def _check_finite(pred: np.ndarray, what: str = "predictions") -> None:
    if not np.all(np.isfinite(pred)):
        raise ValueError(f"{what} contain NaN or inf at labelled entries")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` in increasing order; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values in the sorted array
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


# ------------------------------------------------------------------------------------ column metrics


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC ``(R_pos - P (P + 1) / 2) / (P N)`` with average ranks for ties.

    Raises ``ValueError`` unless both classes occur in ``y_true``.
    """
    pos = _binary_labels(y_true)
    s = _as_array(score).ravel()
    if len(s) != len(pos):
        raise ValueError(f"roc_auc: {len(pos)} labels but {len(s)} scores")
    _check_finite(s, "scores")
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc is undefined unless both classes are present")
    rank_sum = float(_average_ranks(s)[pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over thresholds at the distinct scores (descending).

    Raises ``ValueError`` when ``y_true`` holds no positive (recall is undefined).
    """
    pos = _binary_labels(y_true)
    s = _as_array(score).ravel()
    if len(s) != len(pos):
        raise ValueError(f"average_precision: {len(pos)} labels but {len(s)} scores")
    _check_finite(s, "scores")
    n_pos = int(pos.sum())
    if n_pos == 0:
        raise ValueError("average_precision is undefined without a positive label")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, hits = s[order], pos[order]
    # last position of each group of tied scores: the operating points of the step curve
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(hits)[last].astype(np.float64)
    predicted = (last + 1).astype(np.float64)
    precision = tp / predicted
    recall = tp / n_pos
    recall_step = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_step * precision))


def accuracy(y_true: np.ndarray, pred_class: np.ndarray) -> float:
    """Fraction of ``pred_class == y_true`` (hard classes, e.g. arg-max logits or ``logit > 0``)."""
    y = _as_array(y_true).ravel()
    p = _as_array(pred_class).ravel()
    if len(y) != len(p):
        raise ValueError(f"accuracy: {len(y)} labels but {len(p)} predictions")
    if len(y) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(y == p))


def _f1_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-class ``2 TP / (2 TP + FP + FN)``, 0 where the denominator is 0."""
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def f1(y_true: np.ndarray, pred: np.ndarray) -> float:
    """F1 from logits: binary F1 at ``logit > 0`` for 1-D ``pred``, macro-F1 of arg-max for ``[n, C]``."""
    p = _as_array(pred)
    y = _as_array(y_true).ravel()
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.shape[0] != len(y):
        raise ValueError(f"f1: {len(y)} labels but {p.shape[0]} predictions")
    if len(y) == 0:
        raise ValueError("f1 of an empty set is undefined")
    _check_finite(p)
    if p.ndim == 1:
        truth = _binary_labels(y)
        guess = p > 0
        tp = np.sum(truth & guess)
        fp = np.sum(~truth & guess)
        fn = np.sum(truth & ~guess)
        return float(_f1_counts(np.array([tp]), np.array([fp]), np.array([fn]))[0])
    if p.ndim != 2:
        raise ValueError(f"f1: predictions must be 1-D logits or [n, C] class logits, got shape {p.shape}")
    labels = _class_indices(y, p.shape[1])
    guess = np.argmax(p, axis=1)
    classes = np.union1d(labels, guess)
    tp = np.array([np.sum((labels == c) & (guess == c)) for c in classes], dtype=np.float64)
    fp = np.array([np.sum((labels != c) & (guess == c)) for c in classes], dtype=np.float64)
    fn = np.array([np.sum((labels == c) & (guess != c)) for c in classes], dtype=np.float64)
    return float(np.mean(_f1_counts(tp, fp, fn)))


def _regression_pair(y_true: np.ndarray, pred: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = _as_array(y_true).ravel()
    p = _as_array(pred).ravel()
    if len(y) != len(p):
        raise ValueError(f"{name}: {len(y)} labels but {len(p)} predictions")
    if len(y) == 0:
        raise ValueError(f"{name} of an empty set is undefined")
    _check_finite(p)
    return y, p


def rmse(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Root mean squared error ``sqrt(mean((y - p)^2))``."""
    y, p = _regression_pair(y_true, pred, "rmse")
    return float(np.sqrt(np.mean((y - p) ** 2)))


def mae(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error ``mean(|y - p|)``."""
    y, p = _regression_pair(y_true, pred, "mae")
    return float(np.mean(np.abs(y - p)))


def r2(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``; for ``SS_tot = 0``: 1 if exact, else 0.

    Needs at least two samples (as sklearn, which returns NaN for one).
    """
    y, p = _regression_pair(y_true, pred, "r2")
    if len(y) < 2:
        raise ValueError("r2 needs at least two samples")
    ss_res = float(np.sum((y - p) ** 2))
    ss_tot = float(np.sum((y - np.mean(y)) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


#: Single-column metric functions by name (the names used in :class:`graph_mtl.tasks.Task`).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "rocauc": roc_auc,
    "ap": average_precision,
    "accuracy": accuracy,
    "f1": f1,
    "rmse": rmse,
    "mae": mae,
    "r2": r2,
}

#: Metrics that :func:`task_metric` can compute for each task kind.
METRICS_BY_KIND: dict[str, tuple[str, ...]] = {
    "binary": ("rocauc", "ap", "accuracy", "f1"),
    "multilabel": ("rocauc", "ap", "accuracy", "f1"),
    "multiclass": ("accuracy", "f1"),
    "regression": ("rmse", "mae", "r2"),
}


# -------------------------------------------------------------------------------------- task metrics


def _class_indices(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer class indices from float labels; every label must be an integer in ``[0, num_classes)``."""
    if not np.all((y == np.round(y)) & (y >= 0) & (y < num_classes)):
        raise ValueError(f"multiclass labels must be integer class indices in [0, {num_classes})")
    return y.astype(np.int64)


def _as_2d(x: Any) -> np.ndarray:
    a = _as_array(x)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"expected a [n, k] array, got shape {a.shape}")
    return a


def task_metric(metric: str, kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float | None, int]:
    """Score one task: ``(value, number of columns scored)``, or ``(None, 0)`` if no column can be scored.

    ``y_true`` is ``[n, k]`` with NaN for missing labels (``k = 1`` for binary and multiclass; a 1-D array is
    read as one column); ``y_pred`` holds raw model outputs ``[n, num_outputs]``: logits for binary and
    multilabel, class logits for multiclass, values for regression. See the module docstring for the rules
    (OGB column skipping for rocauc/ap, per-column mean for regression).
    """
    if kind not in METRICS_BY_KIND:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {tuple(METRICS_BY_KIND)}")
    if metric not in METRICS_BY_KIND[kind]:
        raise ValueError(
            f"metric {metric!r} is not defined for {kind} tasks; use one of {METRICS_BY_KIND[kind]}"
        )
    y = _as_2d(y_true)
    p = _as_2d(y_pred)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"{y.shape[0]} label rows but {p.shape[0]} prediction rows")

    if kind == "multiclass":
        if y.shape[1] != 1:
            raise ValueError(f"a multiclass task has one label column of class indices, got {y.shape[1]}")
        rows = ~np.isnan(y[:, 0])
        if not rows.any():
            return None, 0
        labels = _class_indices(y[rows, 0], p.shape[1])
        logits = p[rows]
        _check_finite(logits)
        if metric == "accuracy":
            return accuracy(labels, np.argmax(logits, axis=1)), 1
        return f1(labels, logits), 1

    if y.shape != p.shape:
        raise ValueError(f"labels have shape {y.shape} but predictions {p.shape}; {kind} needs them equal")
    fn = METRICS[metric]
    values: list[float] = []
    for j in range(y.shape[1]):
        labelled = ~np.isnan(y[:, j])
        yj, pj = y[labelled, j], p[labelled, j]
        if len(yj) == 0:
            continue
        if kind in ("binary", "multilabel"):
            pos = _binary_labels(yj)
            if metric in ("rocauc", "ap") and (pos.all() or not pos.any()):
                continue  # OGB: a column needs both classes among its labels
            if metric == "accuracy":
                _check_finite(pj)
                values.append(accuracy(yj, (pj > 0).astype(np.float64)))
                continue
        elif metric == "r2" and len(yj) < 2:
            continue
        values.append(fn(yj, pj))
    if not values:
        return None, 0
    return float(np.mean(values)), len(values)


def evaluate_tasks(
    tasks: Sequence[Task], y_true: Mapping[str, np.ndarray], y_pred: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Score every task with its own metric.

    Returns ``{"per_task": {name: value | None}, "columns": {name: columns scored}, "mean": float | None,
    "mean_by_metric": {metric: float}, "skipped": [names scored None]}``. ``mean_by_metric`` is the unweighted
    mean over the scored tasks of each metric; ``mean`` is that mean when every scored task uses one metric, and
    ``None`` when they use several (a mean of RMSE with ROC-AUC means nothing).
    """
    per_task: dict[str, float | None] = {}
    columns: dict[str, int] = {}
    by_metric: dict[str, list[float]] = {}
    for task in tasks:
        for name, source in (("labels", y_true), ("predictions", y_pred)):
            if task.name not in source:
                raise KeyError(f"task {task.name!r}: no {name} given")
        value, n_cols = task_metric(task.metric, task.kind, y_true[task.name], y_pred[task.name])
        per_task[task.name] = value
        columns[task.name] = n_cols
        if value is not None:
            by_metric.setdefault(task.metric, []).append(value)
    scored = [v for v in per_task.values() if v is not None]
    return {
        "per_task": per_task,
        "columns": columns,
        "mean": float(np.mean(scored)) if scored and len(by_metric) == 1 else None,
        "mean_by_metric": {m: float(np.mean(v)) for m, v in by_metric.items()},
        "skipped": [name for name, v in per_task.items() if v is None],
    }


# ----------------------------------------------------------------------------------------- baselines


def trivial_baseline(task: Task, y_train: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The constant output row ``[num_outputs]`` of a trivial model fitted on the training labels.

    * regression: the per-column training mean (0 for a column without labels);
    * multiclass: one-hot logits of the majority class (lowest index on ties; class 0 without labels);
    * binary / multilabel: per column the logit ``log(q / (1 - q))`` of the positive rate ``q`` clipped to
      ``[eps, 1 - eps]`` (0 without labels). A constant score has ROC-AUC 0.5 and accuracy equal to the
      majority rate at ``logit > 0``.
    """
    y = _as_2d(y_train)
    if task.kind == "multiclass":
        if y.shape[1] != 1:
            raise ValueError(f"task {task.name!r}: multiclass labels must be one column")
        labelled = y[~np.isnan(y[:, 0]), 0]
        counts = np.bincount(_class_indices(labelled, task.num_outputs), minlength=task.num_outputs)
        row = np.zeros(task.num_outputs)
        row[int(np.argmax(counts))] = 1.0
        return row
    if y.shape[1] != task.num_outputs:
        raise ValueError(f"task {task.name!r}: {y.shape[1]} label columns for num_outputs={task.num_outputs}")
    labelled = ~np.isnan(y)
    counts = labelled.sum(axis=0)
    sums = np.where(labelled, y, 0.0).sum(axis=0)
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    if task.kind == "regression":
        return mean
    rate = np.clip(mean, eps, 1.0 - eps)
    return np.where(counts > 0, np.log(rate) - np.log1p(-rate), 0.0)


def baseline_predictions(task: Task, y_train: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of :func:`trivial_baseline` - shape ``[n, num_outputs]``, ready for :func:`task_metric`."""
    return np.tile(trivial_baseline(task, y_train), (n, 1))


# ------------------------------------------------------------------------------------------ comparing


def better(metric: str, a: float | None, b: float | None) -> bool:
    """Whether ``a`` strictly beats ``b`` under ``metric`` (maximised if in ``MAXIMISED_METRICS``).

    A value beats ``None`` (no score); ``None`` beats nothing.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {tuple(METRICS)}")
    if a is None:
        return False
    if b is None:
        return True
    return a > b if metric in MAXIMISED_METRICS else a < b
