"""GradNorm against a hand computation of two steps, and its invariants."""

from __future__ import annotations

import pytest
import torch
from test_balancer_common import NAMES, TinyMTL, batch, flat_grad, losses_of, make, step

from graph_mtl.balancers import create
from graph_mtl.balancers.gradnorm import gradnorm_loss


def hand_step(model: TinyMTL, x, y, w: torch.Tensor, initial: torch.Tensor | None, lr: float, alpha: float):
    """Paper formulas, task by task: the network gradient, L(0), and the next weights."""
    losses, _ = losses_of(model, x, y)
    L = torch.stack([losses[n] for n in NAMES])
    norms = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(L[i], model.last_shared(),
                                                                                   retain_graph=True)]).norm()
                         for i in range(3)])
    network = torch.cat([g.reshape(-1) for g in torch.autograd.grad((w * L).sum(), list(model.parameters()))])
    initial = L.detach() if initial is None else initial
    ratio = L.detach() / initial
    r = ratio / ratio.mean()
    G = w * norms
    target = G.mean() * r**alpha  # +alpha
    grad = torch.sign(G - target) * norms
    new = w - lr * grad
    return network, initial, new * 3 / new.sum()


def test_two_steps_against_hand_computation() -> None:
    model, hand = TinyMTL(), TinyMTL()
    balancer = make("gradnorm", NAMES, lr=0.1, optimizer="sgd", alpha=1.5)
    w, initial = torch.ones(3), None
    for seed in (1, 2):
        x, y = batch(seed)
        network, initial, w_next = hand_step(hand, x, y, w, initial, 0.1, 1.5)
        used = step(balancer, model, x, y)
        assert torch.allclose(used, w, atol=1e-6)  # the network stepped with the weights before the update
        # L_grad reached the weights only: every parameter holds exactly grad sum_i w_i L_i
        assert torch.allclose(flat_grad(model.parameters()), network, atol=1e-6)
        assert torch.allclose(balancer.method.initial, initial)  # L_i(0) = the first step's losses
        assert torch.allclose(balancer.method.task_weights, w_next, atol=1e-6)
        w = w_next


def test_target_uses_plus_alpha() -> None:
    w = torch.ones(2, requires_grad=True)
    norms = torch.ones(2)
    ratios = torch.tensor([2.0, 1.0])  # task 0 trains slower: its weight must grow
    loss = gradnorm_loss(w, norms, ratios, alpha=1.5)
    target0 = 1.0 * (2.0 / 1.5) ** 1.5
    assert torch.isclose(loss, torch.tensor(abs(1 - target0) + abs(1 - (1 / 1.5) ** 1.5)))
    (grad,) = torch.autograd.grad(loss, w)
    assert grad[0] < 0 < grad[1]


def test_weights_sum_to_t_after_every_step_and_absent_tasks() -> None:
    model = TinyMTL()
    balancer = make("gradnorm", NAMES, lr=0.5)
    for seed in range(5):
        x, y = batch(seed)
        names = NAMES if seed % 2 == 0 else ["a", "c"]
        w = step(balancer, model, x, y, names)
        assert torch.isclose(balancer.method.task_weights.sum(), torch.tensor(3.0))
        assert torch.isfinite(w).all() and (names != NAMES) <= (w[1] == 0)


def test_needs_last_shared_params() -> None:
    model = TinyMTL()
    losses, _ = losses_of(model, *batch())
    with pytest.raises(ValueError, match="last_shared_params"):
        make("gradnorm", NAMES).backward(losses, shared_params=model.shared())
    with pytest.raises(ValueError, match="alpha"):
        create("gradnorm", NAMES, alpha=-1)
