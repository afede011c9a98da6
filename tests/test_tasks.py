import math

import pytest
import torch

from graph_mtl.tasks import Task, check_labels, collect_labels, fit_scalers, labelled_mask, masked_loss, task_losses


def test_bce_ignores_nan_and_means_over_labelled():
    task = Task("t", "graph", "binary")
    pred = torch.tensor([[0.0], [2.0], [5.0]])
    y = torch.tensor([[1.0], [float("nan")], [0.0]])
    loss = masked_loss(task, pred, y, labelled_mask(task, y))
    expected = (math.log(2) + math.log1p(math.exp(5.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_all_nan_gives_no_loss_not_nan():
    task = Task("t", "graph", "regression")
    y = torch.full((4, 1), float("nan"))
    assert masked_loss(task, torch.randn(4, 1), y, labelled_mask(task, y)) is None


def test_multilabel_is_flat_mean_over_labelled_entries():
    task = Task("t", "graph", "multilabel", num_outputs=2)
    pred = torch.zeros(2, 2)
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    loss = masked_loss(task, pred, y, labelled_mask(task, y))
    assert loss.item() == pytest.approx(math.log(2))


def test_multiclass_cross_entropy_skips_missing_rows():
    task = Task("t", "node", "multiclass", num_outputs=3)
    pred = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 10.0]])
    y = torch.tensor([[0.0], [float("nan")], [2.0]])
    loss = masked_loss(task, pred, y, labelled_mask(task, y))
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(pred[[0, 2]], torch.tensor([0, 2])).item())


def test_node_mask_restricts_node_tasks_only():
    node = Task("n", "node", "regression")
    graph = Task("g", "graph", "regression")
    y = torch.ones(3, 1)
    mask = torch.tensor([True, False, True])
    assert labelled_mask(node, y, mask).sum() == 2
    assert labelled_mask(graph, y, mask).sum() == 3


def test_absent_task_left_out_of_losses():
    class Batch:
        y = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])

    tasks = [Task("a", "graph", "binary", columns=(0,)), Task("b", "graph", "binary", columns=(1,))]
    losses = task_losses(tasks, {"a": torch.zeros(2, 1), "b": torch.zeros(2, 1)}, Batch())
    assert set(losses) == {"a"}


def test_scalers_standardise_regression_targets():
    class G:
        def __init__(self, v):
            self.y = torch.tensor([[v]])

    tasks = [Task("r", "graph", "regression")]
    scalers = fit_scalers(tasks, collect_labels(tasks, [G(1.0), G(3.0), G(float("nan"))]))
    mean, std = scalers["r"]
    assert mean.item() == pytest.approx(2.0) and std.item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(name="t", level="edge", kind="binary"), "level"),
        (dict(name="t", level="node", kind="ordinal"), "kind"),
        (dict(name="t", level="node", kind="binary", num_outputs=2), "multilabel"),
        (dict(name="t", level="node", kind="multiclass", num_outputs=1), "num_outputs"),
        (dict(name="t", level="node", kind="binary", loss="hinge"), "loss"),
    ],
)
def test_bad_task_specs_are_clear_errors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Task(**kwargs)


def test_missing_target_attribute_names_it():
    with pytest.raises(KeyError, match="y_missing"):
        Task("t", "graph", "binary", target="y_missing").labels(object())


def test_target_statistics_are_computed_in_float64():
    task = Task("big", "graph", "regression")
    y = torch.tensor([[1e30], [3e30], [float("nan")]], dtype=torch.float32)  # squares overflow float32
    mean, std = fit_scalers([task], {"big": y})["big"]
    assert mean.dtype == std.dtype == torch.float32
    assert mean.item() == pytest.approx(2e30, rel=1e-6) and std.item() == pytest.approx(1e30, rel=1e-6)


def test_targets_beyond_float32_are_refused_naming_the_task():
    task = Task("huge", "graph", "regression")
    with pytest.raises(ValueError, match="task 'huge'.*exceeds float32"):
        fit_scalers([task], {"huge": torch.tensor([[-1e39], [1e39]], dtype=torch.float64)})
    with pytest.raises(ValueError, match="task 'huge' has infinite training labels"):
        check_labels([task], {"huge": torch.tensor([[1.0], [float("inf")]])})
