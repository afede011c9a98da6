"""Loss weightings (UW, DWA, RLW, FAMO, fixed) against their formulas."""

from __future__ import annotations

import pytest
import torch
from test_balancer_common import TinyMTL, batch, flat_grad, losses_of, make, step

NAMES = ["t0", "t1", "t2"]


def constant_losses(values: list[float], theta: torch.nn.Parameter, names=NAMES) -> dict[str, torch.Tensor]:
    """Losses with the given values and gradient ``(i + 1) theta``-direction (values stay fixed)."""
    return {n: v + (i + 1) * theta.sum() for i, (n, v) in enumerate(zip(names, values))}


def call(balancer, values: list[float], names=NAMES) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.nn.Parameter(torch.zeros(2))
    w = balancer.backward(constant_losses(values, theta, names), shared_params=[theta])
    return w, theta.grad


def test_loss_weighting_scales_heads_too() -> None:
    model = TinyMTL()
    x, y = batch()
    w = step(make("uw", names=["a", "b", "c"]), model, x, y)
    losses, _ = losses_of(model, x, y)
    total = sum(w[i] * losses[n] for i, n in enumerate("abc"))
    expected = torch.autograd.grad(total, list(model.parameters()))
    assert torch.allclose(flat_grad(model.parameters()), torch.cat([g.reshape(-1) for g in expected]))


def test_uncertainty_weighting_steps_the_log_variances() -> None:
    uw = make("uw", NAMES, lr=0.1, optimizer="sgd")
    L = [0.5, 1.0, 4.0]
    w, grad = call(uw, L)
    assert torch.allclose(w, torch.ones(3))
    assert torch.allclose(grad, torch.full((2,), 6.0))  # sum_i w_i (i + 1)
    s = -0.1 * (1 - torch.tensor(L))  # d/ds (exp(-s) L + s) = 1 - exp(-s) L at s = 0
    w, _ = call(uw, L)
    assert torch.allclose(w, torch.exp(-s))
    with pytest.raises(ValueError, match="lr"):
        make("uw", NAMES, lr=0)


def test_dwa_uses_the_ratio_of_epoch_means() -> None:
    dwa = make("dwa", NAMES)
    for epoch_losses in ([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], [[0.5, 2.0, 6.0], [0.5, 2.0, 6.0]]):
        for values in epoch_losses:
            w, _ = call(dwa, values)
            assert torch.allclose(w, torch.ones(3))  # the first two epochs
        dwa.on_epoch_end()
    w, _ = call(dwa, [1.0, 1.0, 1.0])
    r = torch.tensor([0.5, 1.0, 2.0])
    assert torch.allclose(w, 3 * torch.softmax(r / 2, dim=0))
    w, _ = call(dwa, [1.0, 1.0], names=["t0", "t2"])  # absent task: 0, the others keep their weight
    assert w[1] == 0 and torch.allclose(w[[0, 2]], 3 * torch.softmax(r / 2, dim=0)[[0, 2]])


def test_rlw_is_a_seeded_softmax_of_normals() -> None:
    rlw = make("rlw", NAMES, seed=5)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        w, _ = call(rlw, [1.0, 2.0, 3.0])
        assert torch.allclose(w, torch.softmax(torch.randn(3, generator=gen), dim=0))
    w, _ = call(rlw, [1.0, 3.0], names=["t0", "t2"])
    assert torch.allclose(w[[0, 2]], torch.softmax(torch.randn(3, generator=gen)[[0, 2]], dim=0))


def test_famo_weights_and_logit_update() -> None:
    famo = make("famo", NAMES, lr=0.025, weight_decay=0.0, estimate="next_batch")
    first, second = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 2.0, 5.0])
    w, _ = call(famo, first.tolist())
    inv = (1 / 3) / first
    assert torch.allclose(w, inv / inv.sum())
    w, _ = call(famo, second.tolist())
    delta = first.log() - second.log()
    z = torch.full((3,), 1 / 3)
    grad = z * (delta - (z * delta).sum())
    logits = -0.025 * torch.sign(grad)  # Adam's first step
    inv = torch.softmax(logits, dim=0) / second
    assert torch.allclose(w, inv / inv.sum(), atol=1e-6)


def test_famo_same_batch_moves_the_logits_as_next_batch_would_with_the_same_losses() -> None:
    """The paper's re-evaluation after the step (``after_step``) moves the logits by ``log L(before) -
    log L(after)``; the free estimate does the same with the next batch's losses. Same numbers, same logits."""
    eager, lazy = make("famo", NAMES), make("famo", NAMES, estimate="next_batch")
    call(eager, [1.0, 2.0, 4.0])
    call(lazy, [1.0, 2.0, 4.0])
    assert eager.wants_losses_after_step and not lazy.wants_losses_after_step
    theta = torch.nn.Parameter(torch.zeros(2))
    eager.after_step(constant_losses([0.5, 2.0, 5.0], theta))  # re-evaluated after the optimizer step
    call(lazy, [0.5, 2.0, 5.0])
    assert torch.allclose(eager.method.logits.value, lazy.method.logits.value)
    assert not torch.equal(eager.method.logits.value, torch.zeros(3))
    w_eager, _ = call(eager, [0.7, 1.0, 3.0])  # same batch: no move on the next step's losses
    inv = torch.softmax(eager.method.logits.value, dim=0) / torch.tensor([0.7, 1.0, 3.0])
    assert torch.allclose(w_eager, inv / inv.sum(), atol=1e-6)


def test_fixed_weights() -> None:
    w, grad = call(make("fixed", NAMES, weights={"t1": 2.0}, default=0.5), [1.0, 1.0, 1.0])
    assert torch.equal(w, torch.tensor([0.5, 2.0, 0.5]))
    assert torch.allclose(grad, torch.full((2,), 0.5 + 4.0 + 1.5))
