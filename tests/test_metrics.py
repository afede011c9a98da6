"""Tests of graph_mtl.engine.metrics against scikit-learn and the OGB Evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from graph_mtl.engine.metrics import (
    METRICS,
    accuracy,
    average_precision,
    baseline_predictions,
    better,
    evaluate_tasks,
    f1,
    mae,
    r2,
    rmse,
    roc_auc,
    task_metric,
    trivial_baseline,
)
from graph_mtl.tasks import MAXIMISED_METRICS, Task

SETTINGS = settings(max_examples=60, deadline=None)


def _binary_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Labels with both classes and scores drawn from few levels (many ties) or continuous."""
    n = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    y[0], y[1] = 0.0, 1.0
    if draw(st.booleans()):
        score = rng.integers(0, draw(st.integers(1, 4)), n).astype(float)  # heavy ties
    else:
        score = rng.normal(size=n)
    return y, score


binary_cases = st.composite(_binary_case)


# ------------------------------------------------------------------------------ column metrics vs sklearn


@SETTINGS
@given(binary_cases())
def test_roc_auc_matches_sklearn(case: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = case
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@SETTINGS
@given(binary_cases())
def test_average_precision_matches_sklearn(case: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = case
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_ranking_metrics_edge_cases() -> None:
    assert roc_auc([0, 1], [0.3, 0.3]) == 0.5
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    assert average_precision([1, 1, 1], [0.1, 0.5, 0.5]) == 1.0  # only positives: defined
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError):
        roc_auc([0, 2], [0.1, 0.2])  # labels must be 0/1
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1, np.nan])  # diverged model


@SETTINGS
@given(st.integers(1, 50), st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_multiclass_accuracy_and_macro_f1_match_sklearn(n: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n).astype(float)
    logits = rng.normal(size=(n, c))
    guess = logits.argmax(1)
    assert accuracy(y, guess) == pytest.approx(skm.accuracy_score(y, guess))
    assert f1(y, logits) == pytest.approx(skm.f1_score(y, guess, average="macro", zero_division=0))
    value, cols = task_metric("f1", "multiclass", y[:, None], logits)
    assert cols == 1 and value == pytest.approx(f1(y, logits))


@SETTINGS
@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_binary_f1_at_logit_zero_matches_sklearn(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    logits = rng.normal(size=n)
    logits[: n // 4] = 0.0  # exactly probability 0.5 counts as negative
    expected = skm.f1_score(y, (1 / (1 + np.exp(-logits)) > 0.5).astype(int), zero_division=0)
    assert f1(y, logits) == pytest.approx(expected)


@SETTINGS
@given(st.integers(1, 40), st.integers(0, 2**31 - 1), st.booleans())
def test_regression_metrics_match_sklearn(n: int, seed: int, constant: bool) -> None:
    rng = np.random.default_rng(seed)
    y = np.full(n, 1.5) if constant else rng.normal(size=n)
    p = y + rng.normal(scale=0.5, size=n)
    assert rmse(y, p) == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)))
    assert mae(y, p) == pytest.approx(skm.mean_absolute_error(y, p))
    if n >= 2:
        assert r2(y, p) == pytest.approx(skm.r2_score(y, p), abs=1e-9)
        assert r2(y, y) == pytest.approx(skm.r2_score(y, y))


def test_metrics_registry_covers_task_metrics() -> None:
    assert set(METRICS) == {"rocauc", "ap", "accuracy", "f1", "rmse", "mae", "r2"}
    assert MAXIMISED_METRICS <= set(METRICS)


# ------------------------------------------------------------------------------------------ task_metric


def _nan_mask(rng: np.random.Generator, y: np.ndarray, rate: float) -> np.ndarray:
    y = y.copy()
    y[rng.random(y.shape) < rate] = np.nan
    return y


@pytest.mark.parametrize("metric", ["rocauc", "ap"])
def test_multilabel_ranking_masks_nan_and_skips_single_class_columns(metric: str) -> None:
    rng = np.random.default_rng(0)
    n, k = 60, 6
    y = _nan_mask(rng, rng.integers(0, 2, (n, k)).astype(float), 0.3)
    p = rng.integers(0, 5, (n, k)).astype(float)  # ties
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # only negatives
    y[:, 4] = np.where(np.isnan(y[:, 4]), np.nan, 1.0)  # only positives
    y[:, 5] = np.nan  # nothing labelled
    ref = skm.roc_auc_score if metric == "rocauc" else skm.average_precision_score
    expected = [ref(y[~np.isnan(y[:, j]), j], p[~np.isnan(y[:, j]), j]) for j in (0, 1, 3)]
    value, cols = task_metric(metric, "multilabel", y, p)
    assert cols == 3
    assert value == pytest.approx(np.mean(expected), abs=1e-12)


def test_no_scorable_column_gives_none() -> None:
    y = np.array([[1.0, np.nan], [1.0, np.nan], [np.nan, np.nan]])
    assert task_metric("rocauc", "multilabel", y, np.zeros((3, 2))) == (None, 0)
    assert task_metric("ap", "binary", y[:, :1], np.zeros((3, 1))) == (None, 0)
    assert task_metric("rmse", "regression", np.full((4, 2), np.nan), np.zeros((4, 2))) == (None, 0)
    assert task_metric("accuracy", "multiclass", np.full((4, 1), np.nan), np.zeros((4, 3))) == (None, 0)


def test_all_nan_column_is_ignored_for_regression_and_accuracy() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=(30, 3))
    y[:, 1] = np.nan
    p = rng.normal(size=(30, 3))
    value, cols = task_metric("rmse", "regression", y, p)
    assert cols == 2
    assert value == pytest.approx(np.mean([rmse(y[:, j], p[:, j]) for j in (0, 2)]))
    yb = (y > 0).astype(float)
    yb[:, 1] = np.nan
    value, cols = task_metric("accuracy", "multilabel", yb, p)
    assert cols == 2
    assert value == pytest.approx(np.mean([skm.accuracy_score(yb[:, j], p[:, j] > 0) for j in (0, 2)]))


@pytest.mark.parametrize("metric", ["rmse", "mae", "r2"])
def test_regression_is_per_column_mean_with_nan_mask(metric: str) -> None:
    rng = np.random.default_rng(2)
    y = _nan_mask(rng, rng.normal(size=(50, 4)), 0.25)
    p = y + rng.normal(scale=0.3, size=y.shape)
    p[np.isnan(p)] = 0.0
    ref = {
        "rmse": lambda a, b: math.sqrt(skm.mean_squared_error(a, b)),
        "mae": skm.mean_absolute_error,
        "r2": skm.r2_score,
    }[metric]
    cols = [ref(y[~np.isnan(y[:, j]), j], p[~np.isnan(y[:, j]), j]) for j in range(4)]
    assert task_metric(metric, "regression", y, p) == (pytest.approx(np.mean(cols)), 4)


def test_multiclass_nan_rows_are_masked() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 40).astype(float)
    y[::5] = np.nan
    logits = rng.normal(size=(40, 4))
    keep = ~np.isnan(y)
    value, cols = task_metric("accuracy", "multiclass", y[:, None], logits)
    assert cols == 1
    assert value == pytest.approx(skm.accuracy_score(y[keep], logits[keep].argmax(1)))


def test_task_metric_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        task_metric("rmse", "binary", np.zeros((3, 1)), np.zeros((3, 1)))
    with pytest.raises(ValueError):
        task_metric("rocauc", "multilabel", np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        task_metric("accuracy", "multiclass", np.array([[0.0], [3.0]]), np.zeros((2, 3)))  # class 3 of 3
    with pytest.raises(ValueError):
        task_metric("rocauc", "binary", np.array([[0.0], [1.0]]), np.array([[0.0], [np.nan]]))


def test_rocauc_matches_ogb_evaluator_moltox21() -> None:
    from ogb.graphproppred import Evaluator

    evaluator = Evaluator("ogbg-moltox21")
    rng = np.random.default_rng(4)
    for rate in (0.1, 0.5, 0.9):
        y = _nan_mask(rng, rng.integers(0, 2, (80, 12)).astype(float), rate)
        y[:, 3] = np.where(np.isnan(y[:, 3]), np.nan, 1.0)  # a column OGB skips
        p = rng.normal(size=(80, 12))
        p[:, :4] = np.round(p[:, :4])  # ties
        expected = evaluator.eval({"y_true": y, "y_pred": p})["rocauc"]
        value, cols = task_metric("rocauc", "multilabel", y, p)
        assert value == pytest.approx(expected, abs=1e-12)
        assert cols < 12


def test_rmse_matches_ogb_evaluator_molesol() -> None:
    from ogb.graphproppred import Evaluator

    rng = np.random.default_rng(5)
    y = _nan_mask(rng, rng.normal(size=(40, 1)), 0.2)
    p = rng.normal(size=(40, 1))
    expected = Evaluator("ogbg-molesol").eval({"y_true": y, "y_pred": p})["rmse"]
    assert task_metric("rmse", "regression", y, p)[0] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------- evaluate_tasks


def test_evaluate_tasks_reports_skipped_and_means_by_metric() -> None:
    rng = np.random.default_rng(6)
    tasks = [
        Task("tox", "graph", "multilabel", num_outputs=3),
        Task("dead", "graph", "binary"),
        Task("sol", "graph", "regression"),
        Task("cls", "node", "multiclass", num_outputs=3),
    ]
    n = 30
    y_true = {
        "tox": rng.integers(0, 2, (n, 3)).astype(float),
        "dead": np.full((n, 1), np.nan),
        "sol": rng.normal(size=(n, 1)),
        "cls": rng.integers(0, 3, (n, 1)).astype(float),
    }
    y_pred = {
        "tox": rng.normal(size=(n, 3)),
        "dead": rng.normal(size=(n, 1)),
        "sol": rng.normal(size=(n, 1)),
        "cls": rng.normal(size=(n, 3)),
    }
    out = evaluate_tasks(tasks, y_true, y_pred)
    assert out["skipped"] == ["dead"]
    assert out["per_task"]["dead"] is None
    assert out["columns"] == {"tox": 3, "dead": 0, "sol": 1, "cls": 1}
    scores = [out["per_task"][t] for t in ("tox", "sol", "cls")]
    assert all(v is not None for v in scores) and out["mean"] is None  # three metrics: no mean over them
    one_metric = evaluate_tasks(tasks[:1], y_true, y_pred)
    assert one_metric["mean"] == pytest.approx(out["per_task"]["tox"])
    assert out["mean_by_metric"] == {
        "rocauc": pytest.approx(out["per_task"]["tox"]),
        "rmse": pytest.approx(out["per_task"]["sol"]),
        "accuracy": pytest.approx(out["per_task"]["cls"]),
    }
    with pytest.raises(KeyError):
        evaluate_tasks(tasks, {k: v for k, v in y_true.items() if k != "sol"}, y_pred)


def test_evaluate_tasks_all_skipped() -> None:
    task = Task("b", "graph", "binary")
    out = evaluate_tasks([task], {"b": np.ones((4, 1))}, {"b": np.zeros((4, 1))})
    assert out == {
        "per_task": {"b": None},
        "columns": {"b": 0},
        "mean": None,
        "mean_by_metric": {},
        "skipped": ["b"],
    }


# ------------------------------------------------------------------------------------------- baselines


def test_regression_baseline_rmse_is_spread_around_train_mean() -> None:
    rng = np.random.default_rng(7)
    task = Task("r", "graph", "regression", num_outputs=2)
    y_train = _nan_mask(rng, rng.normal(loc=[1.0, -3.0], size=(100, 2)), 0.2)
    y_test = rng.normal(loc=[1.2, -2.5], scale=[1.0, 2.0], size=(50, 2))
    pred = baseline_predictions(task, y_train, 50)
    assert pred.shape == (50, 2)
    mu = np.nanmean(y_train, axis=0)
    np.testing.assert_allclose(pred[0], mu)
    expected = np.mean([math.sqrt(np.mean((y_test[:, j] - mu[j]) ** 2)) for j in range(2)])
    assert task_metric("rmse", "regression", y_test, pred) == (pytest.approx(expected), 2)
    # around its own mean the baseline RMSE is the (population) std and R2 is 0
    self_pred = baseline_predictions(task, y_test, 50)
    value, _ = task_metric("rmse", "regression", y_test, self_pred)
    assert value == pytest.approx(np.mean(np.std(y_test, axis=0)))
    assert task_metric("r2", "regression", y_test, self_pred)[0] == pytest.approx(0.0, abs=1e-12)


def test_classification_baselines() -> None:
    rng = np.random.default_rng(8)
    ml = Task("ml", "graph", "multilabel", num_outputs=3)
    y_train = np.stack([rng.random(200) < q for q in (0.1, 0.7, 0.5)], axis=1).astype(float)
    y_train[:, 2] = np.nan  # no training label: logit 0
    row = trivial_baseline(ml, y_train)
    np.testing.assert_allclose(1 / (1 + np.exp(-row[:2])), y_train[:, :2].mean(0))
    assert row[2] == 0.0
    y_test = rng.integers(0, 2, (40, 3)).astype(float)
    pred = baseline_predictions(ml, y_train, 40)
    assert task_metric("rocauc", "multilabel", y_test, pred) == (0.5, 3)
    acc, _ = task_metric("accuracy", "multilabel", y_test[:, :2], pred[:, :2])
    expected = np.mean([np.mean(y_test[:, 0] == 0), np.mean(y_test[:, 1] == 1)])
    assert acc == pytest.approx(expected)

    mc = Task("mc", "node", "multiclass", num_outputs=4)
    y_train = np.array([[0.0], [2.0], [2.0], [1.0], [np.nan], [2.0]])
    np.testing.assert_array_equal(trivial_baseline(mc, y_train), [0, 0, 1, 0])
    y_test = np.array([[2.0], [1.0], [2.0], [3.0]])
    assert task_metric("accuracy", "multiclass", y_test, baseline_predictions(mc, y_train, 4)) == (0.5, 1)


# ---------------------------------------------------------------------------------------------- better


def test_better() -> None:
    for metric in ("rocauc", "ap", "accuracy", "f1", "r2"):
        assert better(metric, 0.8, 0.7) and not better(metric, 0.7, 0.8)
    for metric in ("rmse", "mae"):
        assert better(metric, 0.7, 0.8) and not better(metric, 0.8, 0.7)
    assert not better("rmse", 0.5, 0.5)  # strict
    assert better("rocauc", 0.1, None) and not better("rocauc", None, 0.1) and not better("rmse", None, None)
    with pytest.raises(ValueError):
        better("loss", 1.0, 2.0)
