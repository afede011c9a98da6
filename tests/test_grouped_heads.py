"""Grouped heads: the same predictions, losses and balancer steps as separate heads, at a fraction of the cost."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch_geometric.data import Batch

from graph_mtl.balancers import create
from graph_mtl.engine.gradients import TaskRows
from graph_mtl.engine.step import StepEngine
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.models.multitask import GROUPED_HEADS_FROM
from graph_mtl.tasks import task_losses


@pytest.fixture()
def batch(tiny_dataset):
    return Batch.from_data_list(tiny_dataset.splits["train"][:8])


def _tasks(tiny_dataset, copies: int = 4):
    """``copies`` binary tasks on one column, a regression task between them (two loss groups, a column subset)."""
    ring = next(t for t in tiny_dataset.tasks if t.name == "ring")
    size = next(t for t in tiny_dataset.tasks if t.name == "size")
    tasks = [dataclasses.replace(ring, name=f"ring.{i}") for i in range(copies)]
    return tasks[:2] + [size] + tasks[2:]


def _pair(tiny_dataset, layers: int = 2):
    """A grouped model and a separate-heads model with the same encoder and the same head weights."""
    tasks = _tasks(tiny_dataset)

    def build(grouped):
        torch.manual_seed(0)
        encoder = GNNEncoder(hidden=16, num_layers=2, conv="sage", node_encoder="atom", norm="none", dropout=0.0)
        return MultiTaskGNN(encoder, tasks, head_layers=layers, grouped_heads=grouped)

    grouped, separate = build(True), build(False)
    with torch.no_grad():
        for t, task in enumerate(tasks):
            linears = [m for m in separate.head(task.name).mlp if isinstance(m, torch.nn.Linear)]
            for linear, weight, bias in zip(linears, grouped.grouped.weights, grouped.grouped.biases):
                linear.weight.copy_(weight[t].T)
                linear.bias.copy_(bias[t, 0])
    return grouped, separate, tasks


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_grouped_heads_predict_and_lose_as_separate_heads(batch, tiny_dataset, layers):
    grouped, separate, tasks = _pair(tiny_dataset, layers)
    out_g, out_s = grouped(batch), separate(batch)
    assert list(out_g.preds) == [t.name for t in tasks]
    for name in out_s.preds:
        assert torch.allclose(out_g.preds[name], out_s.preds[name], atol=1e-6)
    loss_g, loss_s = task_losses(tasks, out_g.preds, batch), task_losses(tasks, out_s.preds, batch)
    assert list(loss_g) == list(loss_s)
    for name in loss_s:
        assert torch.allclose(loss_g[name], loss_s[name], atol=1e-6)
    assert out_g.task_rows.shape == (len(tasks), batch.num_graphs, 16)
    grouped.per_task_rows = False  # the first layer as one matrix product from [B, in]: the same numbers
    out_p = grouped(batch)
    assert out_p.task_rows is None and not isinstance(out_p.balancer_repr, TaskRows)
    for name in out_s.preds:
        assert torch.allclose(out_p.preds[name], out_s.preds[name], atol=1e-6)


def _rows_against_loop(batch, tiny_dataset, method: str, mode: str = "auto", check_jacobian: bool = False):
    """One step of ``method`` from the per-task rows and one from the plain per-task loop, on the same model and
    batch: their weights and every parameter's gradient must agree."""
    grouped, _, tasks = _pair(tiny_dataset)
    names = [t.name for t in tasks]
    steps = {}
    for kind in ("rows", "loop"):
        grouped.zero_grad(set_to_none=True)
        out = grouped(batch)
        losses = task_losses(tasks, out.preds, batch)
        if check_jacobian and kind == "rows":
            J_rows, _ = TaskRows(out.task_rows).jacobian(torch.stack(list(losses.values())).sum(), range(len(names)))
            J_loop = torch.stack([torch.autograd.grad(losses[n], out.graph_repr, retain_graph=True)[0].reshape(-1)
                                  for n in names])
            assert torch.allclose(J_rows, J_loop, atol=1e-7)
        representation = out.balancer_repr if kind == "rows" else out.shared_repr
        assert isinstance(representation, TaskRows) == (kind == "rows")
        torch.manual_seed(1)  # PCGrad's random task order
        engine = StepEngine(create(method, names), grad_mode=mode)
        assert engine.takes_task_gradients
        w = engine.backward(losses, shared_params=list(grouped.shared_parameters()), representation=representation,
                            task_params={n: list(grouped.task_parameters(n)) for n in names},
                            last_shared_params=list(grouped.last_shared_parameters()))
        steps[kind] = (w, [p.grad.clone() for p in grouped.parameters()])
    assert torch.allclose(steps["rows"][0], steps["loop"][0], atol=1e-6)
    for a, b in zip(steps["rows"][1], steps["loop"][1]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method, mode", [("pcgrad", "rep"), ("mgda", "rep"), ("upgrad", "rep"),
                                          ("pcgrad", "exact"), ("upgrad", "exact")])
def test_task_rows_give_the_per_task_loop_jacobian_and_the_same_step(batch, tiny_dataset, method, mode):
    """From the per-task rows (one backward through the heads; exact: then per task through the encoder only)
    against the plain per-task loop, at the pooled representation (rep) or at the shared parameters (exact)."""
    _rows_against_loop(batch, tiny_dataset, method, mode, check_jacobian=True)


def test_gradnorm_reads_the_last_layer_through_the_rows_as_through_the_loop(batch, tiny_dataset):
    _rows_against_loop(batch, tiny_dataset, "gradnorm")


def test_head_gradients_are_each_tasks_own(batch, tiny_dataset):
    """Slice t of the grouped weights gets the gradient of L_t alone, as a separate head would."""
    grouped, separate, tasks = _pair(tiny_dataset)
    for model in (grouped, separate):
        out = model(batch)
        sum(task_losses(tasks, out.preds, batch).values()).backward()
    for t, task in enumerate(tasks):
        linear = separate.head(task.name).mlp[0]
        assert torch.allclose(grouped.grouped.weights[0].grad[t], linear.weight.grad.T, atol=1e-6)


def test_grouping_is_automatic_from_many_tasks_and_refused_where_it_cannot_be(tiny_dataset):
    encoder = GNNEncoder(hidden=8, num_layers=1, conv="sage", node_encoder="atom")
    few = _tasks(tiny_dataset)
    many = _tasks(tiny_dataset, copies=GROUPED_HEADS_FROM)
    assert MultiTaskGNN(encoder, few).grouped is None
    model = MultiTaskGNN(encoder, many)
    assert model.grouped is not None and len(model.heads) == 0
    assert "grouped.weights.0" in model.state_dict()
    assert MultiTaskGNN(encoder, many, grouped_heads=False).grouped is None
    with pytest.raises(ValueError, match="model.grouped_heads: every task must be graph-level"):
        MultiTaskGNN(encoder, tiny_dataset.tasks, grouped_heads=True)
    with pytest.raises(ValueError, match="model.grouped_heads: pool 'attention'"):
        MultiTaskGNN(encoder, few, pool="attention", grouped_heads=True)
    assert MultiTaskGNN(encoder, tiny_dataset.tasks).grouped is None  # node tasks: separate heads, no error
