"""PCGrad: golden value, Algorithm 1 written as a plain loop, non-conflict, and the drop-in ``PCGrad``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_balancer_common import NAMES, TinyMTL, batch, flat_grad, linear_losses, losses_of, make, step

from graph_mtl.balancers.pcgrad import random_orders
from graph_mtl.dropin import PCGrad

GOLDEN_J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
GOLDEN = torch.tensor([0.5848, 3.8012, 3.8012])


def reference_pcgrad(J: torch.Tensor, orders: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Yu et al. 2020, Algorithm 1, one task and one pair at a time."""
    projected = []
    for i in range(len(J)):
        g = J[i].clone()
        for j in orders[i].tolist():
            dot = g @ J[j]
            if dot < 0 and J[j].norm() > 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        projected.append(g)
    total = torch.stack(projected).sum(0)
    return total / len(J) if reduction == "mean" else total


def pcgrad_update(J: torch.Tensor, reduction: str = "sum",
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.nn.Parameter(torch.zeros(J.shape[1], dtype=J.dtype))
    w = make("pcgrad", [f"t{i}" for i in range(len(J))], reduction=reduction, seed=seed).backward(
        linear_losses(J, theta), shared_params=[theta])
    return theta.grad, w


@pytest.mark.parametrize("reduction, factor", [("sum", 1.0), ("mean", 0.5)])
def test_golden_value(reduction: str, factor: float) -> None:
    update, _ = pcgrad_update(GOLDEN_J, reduction)
    assert torch.allclose(update, GOLDEN * factor, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_algorithm_1(seed: int, reduction: str) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    J = torch.randn(5, 8, generator=g, dtype=torch.float64)
    J[2] = 0.0  # a task without gradient is skipped
    update, _ = pcgrad_update(J, reduction, seed)
    orders = random_orders(5, torch.Generator().manual_seed(seed))
    assert torch.allclose(update, reference_pcgrad(J, orders, reduction), atol=1e-10)


def test_permutations_are_fresh_and_exclude_self() -> None:
    gen = torch.Generator().manual_seed(0)
    first, second = random_orders(6, gen), random_orders(6, gen)
    assert not torch.equal(first, second)
    for row, i in zip(first, range(6)):
        assert sorted(row.tolist()) == [k for k in range(6) if k != i]


vectors = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=3, max_size=3)


@settings(max_examples=40, deadline=None)
@given(vectors, vectors)
def test_two_tasks_never_conflict_afterwards(a: list[float], b: list[float]) -> None:
    J = torch.tensor([a, b], dtype=torch.float64)
    update, _ = pcgrad_update(J)
    assert (J @ update >= -1e-9 * (1 + J.norm() ** 2)).all()


def test_drop_in_matches_engine_and_leaves_heads_plain() -> None:
    x, y = batch()
    engine_model, dropin_model = TinyMTL(), TinyMTL()
    step(make("pcgrad", reduction="sum", seed=3), engine_model, x, y)
    optimizer = torch.optim.SGD(dropin_model.parameters(), lr=0.1)
    dropin = PCGrad(optimizer, reduction="sum", seed=3)
    losses, _ = losses_of(dropin_model, x, y)
    dropin.pc_backward([losses[n] for n in NAMES])
    assert torch.allclose(flat_grad(dropin_model.shared()), flat_grad(engine_model.shared()), atol=1e-6)
    losses, _ = losses_of(dropin_model, x, y)
    for n in NAMES:
        plain = torch.autograd.grad(losses[n], dropin_model.task_params()[n], retain_graph=True)
        head = flat_grad(dropin_model.task_params()[n])
        assert torch.allclose(head, torch.cat([g.reshape(-1) for g in plain]))
    before = [p.detach().clone() for p in dropin_model.parameters()]
    dropin.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, dropin_model.parameters()))


def test_drop_in_golden_with_sum_reduction() -> None:
    theta = torch.nn.Parameter(torch.zeros(3))
    dropin = PCGrad(torch.optim.SGD([theta], lr=1.0), reduction="sum", seed=0)
    dropin.pc_backward(list(linear_losses(GOLDEN_J, theta).values()))
    assert torch.allclose(theta.grad, GOLDEN, atol=1e-4)
    with pytest.raises(ValueError, match="reduction"):
        PCGrad(torch.optim.SGD([theta], lr=1.0), reduction="max")
