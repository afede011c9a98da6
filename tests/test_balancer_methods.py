"""The defining equation of every Gramian and Jacobian method, checked on explicit gradients."""

from __future__ import annotations

import torch
from test_balancer_common import linear_losses, make

from graph_mtl.balancers.alignedmtl import aligned_mtl_weights
from graph_mtl.balancers.cagrad import cagrad_weights
from graph_mtl.balancers.graddrop import graddrop_update
from graph_mtl.balancers.gradvac import gradvac_weights
from graph_mtl.balancers.imtl import imtl_weights
from graph_mtl.balancers.nashmtl import nash_weights
from graph_mtl.balancers.pcgrad import random_orders


def jacobian(t: int = 3, p: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(t, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_nash_solves_the_bargaining_system() -> None:
    J = jacobian(4)
    G = J @ J.T
    alpha = nash_weights(G, eps=1e-12)  # on the raw Gramian, as the authors
    assert (alpha > 0).all()
    assert torch.allclose(G @ alpha, 1 / alpha, rtol=1e-6)


def test_imtl_has_equal_projections_on_unit_gradients() -> None:
    J = jacobian(4)
    alpha = imtl_weights(J @ J.T)
    d = alpha @ J
    projections = (J / J.norm(dim=1, keepdim=True)) @ d
    assert torch.isclose(alpha.sum(), torch.tensor(1.0, dtype=alpha.dtype))
    assert torch.allclose(projections, projections[0].expand(4), rtol=1e-8)


def test_cagrad_is_the_best_worst_case_in_its_ball() -> None:
    J = jacobian(3, 4, seed=2)
    c = 0.5
    d = cagrad_weights(J @ J.T, c=c, rescale=0) @ J
    g0 = J.mean(0)
    assert torch.isclose((d - g0).norm(), c * g0.norm(), rtol=1e-6)
    # no point of the ball |x - g0| <= c |g0| improves the worst task more than d does
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 4, generator=gen, dtype=torch.float64)
    x = g0 + c * g0.norm() * x / x.norm(dim=1, keepdim=True) * torch.rand(2000, 1, generator=gen,
                                                                            dtype=torch.float64)
    assert ((x @ J.T).min(dim=1).values <= (J @ d).min() + 1e-6).all()


def test_aligned_mtl_balances_the_principal_components() -> None:
    J = jacobian(3, 5)
    w = aligned_mtl_weights(J @ J.T)
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)  # J = U S V^T; aligned: sigma_min U V^T
    expected = (S.min() * (U @ Vh)).T @ torch.full((3,), 1 / 3, dtype=J.dtype)
    assert torch.allclose(w @ J, expected, atol=1e-8)


def test_gradvac_moves_towards_the_target_similarity() -> None:
    J = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # cos = 0.6
    target = torch.full((2, 2), 0.9, dtype=torch.float64)
    orders = random_orders(2, torch.Generator().manual_seed(0))
    w = gradvac_weights(J @ J.T, orders, target, beta=0.5)
    C_row0 = torch.tensor([1.0, w[1] - 1], dtype=torch.float64)  # w = 1^T C and C_11 = 1
    g0 = C_row0 @ J
    assert torch.isclose(g0 @ J[1] / g0.norm(), torch.tensor(0.9, dtype=J.dtype), atol=1e-6)
    assert torch.allclose(target[0, 1], torch.tensor(0.75, dtype=J.dtype))  # (1 - beta) 0.9 + beta 0.6


def test_dbmtl_scales_log_loss_gradients_to_the_largest() -> None:
    J = jacobian(3, 5).float()
    theta = torch.nn.Parameter(torch.zeros(5))
    names = ["t0", "t1", "t2"]
    losses = {n: (J[i] * theta).sum() + (i + 1.0) for i, n in enumerate(names)}
    w = make("dbmtl", names, beta=0.0).backward(losses, shared_params=[theta])
    L = torch.tensor([1.0, 2.0, 3.0])
    contributions = w.unsqueeze(1) * J  # w_i g_i = alpha_i grad log L_i
    norms = contributions.norm(dim=1)
    assert torch.allclose(norms, (J.norm(dim=1) / L).max().expand(3), rtol=1e-5)
    assert torch.allclose(theta.grad, contributions.sum(0), atol=1e-5)


def test_dbmtl_moving_average() -> None:
    J = jacobian(2, 3).float()
    theta = torch.nn.Parameter(torch.zeros(3))
    balancer = make("dbmtl", ["t0", "t1"], beta=0.5)
    balancer.backward(linear_losses(J, theta, ["t0", "t1"]), shared_params=[theta])
    assert torch.allclose(balancer.method.buffer, 0.5 * J)  # g + beta (0 - g); losses are 1
    theta.grad = None
    balancer.backward(linear_losses(2 * J, theta, ["t0", "t1"]), shared_params=[theta])
    assert torch.allclose(balancer.method.buffer, 2 * J + 0.5 * (0.5 * J - 2 * J))


def test_graddrop_keeps_one_sign_per_coordinate() -> None:
    J = torch.tensor([[1.0, -2.0, 3.0, 0.0], [2.0, 1.0, -3.0, -1.0]])
    update = graddrop_update(J, torch.tensor([0.5, 0.5, 0.5, 0.5]))
    # purity: 1, 1/6, 1/2, 0  -> keep positives if P > U, negatives if P < U
    assert torch.equal(update, torch.tensor([3.0, -2.0, 0.0, -1.0]))
    assert torch.equal(graddrop_update(J, torch.zeros(4), leak=1.0), J.sum(0))
