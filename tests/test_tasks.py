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


def _column_batch(seed: int = 0):
    """Six rows of a 5-column target (NaN-holed, column 4 unlabelled) with a node mask over the rows."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (6, 5), generator=gen).float()
    y[torch.rand(6, 5, generator=gen) < 0.4] = float("nan")
    y[:, 4] = float("nan")
    y[:, 3] = torch.randn(6, generator=gen) * 3 + 1

    class Batch:
        pass

    batch = Batch()
    batch.y, batch.node_mask = y, torch.tensor([True, True, False, True, True, True])
    return batch


@pytest.mark.parametrize("level", ["graph", "node"])
def test_column_losses_equal_the_per_task_masked_loss(level):
    """The column-wise pass gives each task's masked_loss (scalers, node mask, absent task and all) and keeps
    every loss its own autograd node: a task's gradient reaches its own prediction only."""
    batch = _column_batch()
    tasks = [Task(f"c{j}", level, "binary", columns=(j,)) for j in (0, 1, 2, 4)]
    tasks.insert(2, Task("r.3", level, "regression", columns=(3,), loss="smooth_l1"))
    tasks.append(Task("m", level, "multilabel", num_outputs=2, columns=(0, 1)))
    scalers = {"r.3": (torch.tensor([1.0]), torch.tensor([3.0]))}
    preds = {t.name: torch.randn(6, t.num_outputs, requires_grad=True) for t in tasks}
    losses = task_losses(tasks, preds, batch, scalers)
    assert list(losses) == [t.name for t in tasks if t.name != "c4"]  # task order kept, the unlabelled one absent
    y_scaled = batch.y.clone()
    y_scaled[:, 3] = (y_scaled[:, 3] - 1.0) / 3.0
    for task in tasks[:-1]:
        y = y_scaled[:, list(task.columns)]
        expected = masked_loss(task, preds[task.name], y, labelled_mask(task, y, batch.node_mask))
        if expected is None:
            continue
        assert losses[task.name].item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():  # evaluation: one [n, T] pass, the same values
        plain = task_losses(tasks, {k: v.detach() for k, v in preds.items()}, batch, scalers)
    assert list(plain) == list(losses)
    assert all(plain[k].item() == pytest.approx(losses[k].item(), rel=1e-5) for k in losses)
    grads = torch.autograd.grad(losses["c0"], list(preds.values()), allow_unused=True)
    assert [g is not None for g in grads] == [t.name == "c0" for t in tasks]


def test_collect_labels_joins_graphs_once_per_target_and_honours_node_masks():
    from torch_geometric.data import Data

    graphs = [Data(y_graph=torch.tensor([[1.0, float("nan")]]), y=torch.tensor([0.0, 1.0, 2.0]), num_nodes=3,
                   node_mask=torch.tensor([True, False, True])),
              Data(y_graph=torch.tensor([[0.0, 1.0]]), y=torch.tensor([3.0, 4.0]), num_nodes=2)]
    tasks = [Task("g.1", "graph", "binary", target="y_graph", columns=(1,)),
             Task("n", "node", "regression", target="y")]
    labels = collect_labels(tasks, graphs)
    assert torch.equal(labels["g.1"].isnan(), torch.tensor([[True], [False]]))
    expected = torch.tensor([[0.0], [float("nan")], [2.0], [3.0], [4.0]])
    assert torch.allclose(labels["n"], expected, equal_nan=True)
