"""The batched (vmap) per-task product, the GPU's path, forced on for every balancer on the CPU: the same step
as one backward per task (the CPU's path)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch_geometric.data import Batch

from graph_mtl.balancers import BALANCERS, create
from graph_mtl.engine.step import StepEngine
from graph_mtl.models import GNNEncoder, MultiTaskGNN
from graph_mtl.tasks import task_losses


def _step(name: str, batched: bool, tiny_dataset) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = MultiTaskGNN(GNNEncoder(hidden=16, num_layers=2, conv="gin", node_encoder="atom", norm="none",
                                    dropout=0.0), tiny_dataset.tasks)
    batch = Batch.from_data_list(tiny_dataset.splits["train"][:8])
    names = [t.name for t in tiny_dataset.tasks]
    out = model(batch)
    losses = task_losses(model.tasks, out.preds, batch)
    method = create(name, names, seed=0) if "seed" in inspect.signature(BALANCERS[name]).parameters else \
        create(name, names)
    engine = StepEngine(method)
    engine.jacobians.batched = batched
    w = engine.backward(losses, shared_params=list(model.shared_parameters()), representation=out.balancer_repr,
                        task_params={n: list(model.task_parameters(n)) for n in names},
                        last_shared_params=list(model.last_shared_parameters()))
    assert engine.jacobians.batched == batched  # no silent fall-back to the loop
    return w, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_batched_product_gives_the_loop_step(name, tiny_dataset):
    w_loop, g_loop = _step(name, False, tiny_dataset)
    w_batched, g_batched = _step(name, True, tiny_dataset)
    assert torch.allclose(w_batched, w_loop, rtol=1e-4, atol=1e-6)
    for a, b in zip(g_batched, g_loop):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
