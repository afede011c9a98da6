"""Properties every balancer must have: finite results on degenerate gradients, T=1, order-freeness, absent
tasks, the min-norm and non-conflict guarantees, and fp32 math under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_balancer_common import NAMES, TinyMTL, batch, flat_grad, gradient_methods, linear_losses, make, step

from graph_mtl.balancers import BALANCERS

ALL = sorted(BALANCERS)
ORDER_FREE = ["alignedmtl", "cagrad", "dbmtl", "ew", "imtl", "mgda", "mgda_ub", "nashmtl", "upgrad"]


def run(name: str, J: torch.Tensor, names=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The update and weights of balancer ``name`` on linear losses with Jacobian ``J``."""
    names = names or [f"t{i}" for i in range(len(J))]
    theta = torch.nn.Parameter(torch.zeros(J.shape[1], dtype=J.dtype))
    z = theta * 1  # the "representation": the Jacobian at z is J as well
    balancer = make(name, names, **kwargs)
    w = balancer.backward(linear_losses(J, z, names), shared_params=[theta], representation=z,
                          task_params={}, last_shared_params=[theta])
    return theta.grad, w


def degenerate() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 4, generator=g)
    return {"zero": torch.zeros(3, 4), "one zero": torch.cat([r[:2], torch.zeros(1, 4)]),
            "duplicate": torch.stack([r[0], r[0], r[1]]), "opposite": torch.stack([r[0], -r[0], r[1]]),
            "tiny": r * 1e-20, "huge": r * 1e20, "mixed": r * torch.tensor([[1e-20], [1.0], [1e20]])}


@pytest.mark.parametrize("case", list(degenerate()))
@pytest.mark.parametrize("name", ALL)
def test_finite_on_degenerate_gradients(name: str, case: str) -> None:
    update, w = run(name, degenerate()[case])
    assert torch.isfinite(update).all() and torch.isfinite(w).all(), (update, w)
    if case == "zero":
        assert (update == 0).all()


@pytest.mark.parametrize("name", gradient_methods())
def test_single_task_is_the_plain_gradient(name: str) -> None:
    g = torch.tensor([[3.0, -1.0, 0.5]])
    update, _ = run(name, g, **({"beta": 0.0} if name == "dbmtl" else {}))  # (losses are 1 here)
    factor = (1 + 0.5) / (1 + 0.5**2) if name == "cagrad" else 1.0  # CAGrad: (1 + c) / (1 + c^2)
    if name == "nashmtl":  # alpha (G alpha) = 1 on the raw Gramian: the update has norm sqrt(t) = 1
        factor = 1 / g.norm()
    if name == "fairgrad":  # G w = w^(-1/alpha) with alpha = 1: w = |g|^-1
        factor = 1 / g.norm()
    if name == "moco":  # with its defaults (LibMTL's) one task's update is g / (2 |g|)
        factor = 0.5 / g.norm()
    assert torch.allclose(update, factor * g[0], rtol=1e-5), update


matrices = st.integers(2, 4).flatmap(lambda t: st.lists(
    st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=4, max_size=4), min_size=t, max_size=t))


@settings(max_examples=10, deadline=None)
@given(matrices, st.randoms(use_true_random=False))
def test_order_free_methods_are_permutation_equivariant(rows: list, rnd) -> None:
    J = torch.tensor(rows, dtype=torch.float32)
    perm = list(range(len(J)))
    rnd.shuffle(perm)
    for name in ORDER_FREE:
        kwargs = {"beta": 0.0} if name == "dbmtl" else {}
        update, w = run(name, J, **kwargs)
        update_p, w_p = run(name, J[perm], **kwargs)
        scale = 1e-4 * (1 + update.abs().max())
        assert torch.allclose(update_p, update, atol=scale), name
        assert torch.allclose(w_p, w[perm], atol=1e-3 * (1 + w.abs().max())), name


@settings(max_examples=25, deadline=None)
@given(matrices)
def test_mgda_is_the_min_norm_point_of_the_hull(rows: list) -> None:
    J = torch.tensor(rows, dtype=torch.float32)
    d, w = run("mgda", J)
    assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0), atol=1e-5)
    tol = 1e-4 * (1 + (J**2).sum())
    assert (J @ d >= d @ d - tol).all()  # KKT: no vertex of the hull is below the norm of d


@settings(max_examples=25, deadline=None)
@given(matrices)
def test_upgrad_conflicts_with_no_task(rows: list) -> None:
    J = torch.tensor(rows, dtype=torch.float32)
    d, w = run("upgrad", J)
    tol = 1e-3 * (J**2).sum() * (1 + w.abs().max()) + 1e-6
    assert (J @ d >= -tol).all()


@pytest.mark.parametrize("name", ALL)
def test_absent_task_gets_zero_weight_and_no_nan(name: str) -> None:
    model = TinyMTL()
    balancer = make(name)
    for seed in range(3):
        w = step(balancer, model, *batch(seed), names=["a", "c"])
        balancer.on_epoch_end()
        assert w[1] == 0 and torch.isfinite(w).all()
        assert all(p.grad is None for p in model.task_params()["b"])
        assert torch.isfinite(flat_grad(model.parameters())).all()
    w = step(balancer, model, *batch(5))  # and back with all tasks
    assert torch.isfinite(w).all() and torch.isfinite(flat_grad(model.parameters())).all()


@pytest.mark.parametrize("name", ALL)
def test_math_stays_fp32_under_bf16_autocast(name: str) -> None:
    J = torch.randn(3, 5, generator=torch.Generator().manual_seed(4))
    update, w = run(name, J)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # would round a Gramian or a solver input to bf16
        update_amp, w_amp = run(name, J)
    assert w_amp.dtype == torch.float32 and update_amp.dtype == torch.float32
    assert torch.allclose(w_amp, w, atol=1e-6) and torch.allclose(update_amp, update, atol=1e-6)


def test_bf16_forward_gives_fp32_weights() -> None:
    model = TinyMTL()
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds, z = model(x)
        losses = {n: ((preds[n].float() - y[n]) ** 2).mean() for n in NAMES}
    w = make("upgrad").backward(losses, shared_params=model.shared(), representation=z,
                                task_params=model.task_params())
    assert w.dtype == torch.float32 and torch.isfinite(w).all()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_gradvac_with_zero_rate_is_pcgrad() -> None:
    J = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    pc, _ = run("pcgrad", J, seed=7)
    balancer_args = {"seed": 7, "beta": 0.0}
    vac, _ = run("gradvac", J, **balancer_args)
    assert torch.allclose(vac, pc, atol=1e-5)
