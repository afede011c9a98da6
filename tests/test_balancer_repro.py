"""The repros of the exactness issues, held by the methods' own defining conditions (no reference code).

* MGDA returns the min-norm point of the hull at any relative scale of the gradients: the KKT conditions.
* Nash-MTL solves ``alpha_i (G alpha)_i = 1`` on the raw Gramian (``||d|| = sqrt(t)``), clipped by ``max_norm``.
* A task whose shared gradient is exactly zero gets a sane, finite weight, never all of it (IMTL-G, CAGrad,
  Nash-MTL), and an all-zero ``J`` gives finite weights.
* FAMO's logits move by the paper's rule from the losses of the same batch before and after the step.
"""

from __future__ import annotations

import pytest
import torch

from graph_mtl.balancers import create

F64 = torch.float64


def unit_rows(t: int = 3, D: int = 20, seed: int = 0) -> torch.Tensor:
    J = torch.randn(t, D, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return J / J.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------- MGDA


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scales", [(0.01, 1e5, 1), (1e-3, 1e5, 1), (1e-8, 1e8, 1), (0.1, 1e4, 1)])
def test_mgda_min_norm_point_at_any_scale(scales: tuple[float, ...], seed: int) -> None:
    """Unit rows in R^20 scaled by ``scales``. ``d = w^T J`` is the min-norm point of the hull iff ``w`` is on
    the simplex, ``g_i . d >= ||d||^2`` for every ``i`` and ``= ||d||^2`` where ``w_i > 0``.

    The KKT residuals ``(g_i . d - ||d||^2) / (||g_i|| ||d||)`` are held to 1e-9: float64 knows the cosine of
    ``g_i`` and ``d`` to about 1e-16 times the condition, not ``g_i . d`` to 1e-16 of ``||d||^2`` when
    ``||g_i|| / ||d|| = 1e16``. The issue's failure (weights ~[0.67, 0, 0.33], ``||d|| = 0.33`` for scales
    (0.01, 1e5, 1)) has a residual of about -30 on the first row. ``||d||`` is also at most the shortest row
    (a vertex of the hull), to 1e-12 relative.
    """
    J = unit_rows(seed=seed) * torch.tensor(scales, dtype=F64).unsqueeze(1)
    w = create("mgda")(J @ J.T)
    d = w @ J
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
    assert d.norm() <= J.norm(dim=1).min() * (1 + 1e-12)
    residual = (J @ d - d @ d) / (J.norm(dim=1) * d.norm())
    assert (residual >= -1e-9).all(), residual
    active = w > 1e-12
    assert residual[active].abs().max() < 1e-9, residual


# ---------------------------------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e4])
@pytest.mark.parametrize("t", [2, 3, 5])
def test_nashmtl_solves_the_raw_gramian(t: int, scale: float) -> None:
    """Unclipped (``max_norm=0``): ``alpha_i (G alpha)_i = 1`` to 1e-5 (the ridge ``eps=1e-6``), so
    ``||d|| = sqrt(t)`` at every gradient scale, to 1e-5 relative; ``eps=1e-12``: to 1e-9."""
    J = scale * torch.randn(t, 8, generator=torch.Generator().manual_seed(t), dtype=F64)
    G = J @ J.T
    for eps, tol in ((1e-6, 1e-5), (1e-12, 1e-9)):
        alpha = create("nashmtl", t, max_norm=0.0, eps=eps)(G)
        assert (alpha > 0).all()
        assert torch.allclose(alpha * (G @ alpha), torch.ones(t, dtype=F64), rtol=0, atol=tol)
        assert abs(float((alpha @ J).norm()) / t**0.5 - 1) < tol


@pytest.mark.parametrize("max_norm", [0.5, 1.0, 10.0])
def test_nashmtl_max_norm_clips_the_update(max_norm: float) -> None:
    """With ``max_norm`` the update norm is ``min(sqrt(t), max_norm)`` (1e-9 relative) and the weights are the
    unclipped ones scaled down; the default is the authors' 1."""
    t = 3
    J = 1e3 * torch.randn(t, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    G = J @ J.T
    free = create("nashmtl", t, max_norm=0.0)(G)
    alpha = create("nashmtl", t, max_norm=max_norm)(G)
    assert abs(float((free @ J).norm()) / t**0.5 - 1) < 1e-5
    expected = min(float((free @ J).norm()), max_norm)
    assert abs(float((alpha @ J).norm()) / expected - 1) < 1e-9
    assert torch.allclose(alpha / alpha.sum(), free / free.sum(), rtol=1e-12)
    assert create("nashmtl", t).max_norm == 1.0


# ---------------------------------------------------------------------------------------- zero gradients


ZERO_SAFE = {"imtl": {}, "cagrad": {}, "nashmtl": {"max_norm": 0.0}}


@pytest.mark.parametrize("zero", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(ZERO_SAFE))
def test_zero_gradient_task_gets_a_sane_weight(name: str, zero: int) -> None:
    """Task ``zero``'s loss does not reach the shared parameters (its row of ``J`` is 0). Its weight is finite
    and at most ``1/t`` (IMTL-G and Nash-MTL: 0; CAGrad: the mean-gradient part ``1/t / (1 + c^2)``), the
    other tasks get what the method gives them without it (``d`` to 1e-8 relative) and ``d != 0``."""
    t = 3
    J = torch.randn(t, 10, generator=torch.Generator().manual_seed(4), dtype=F64)
    J[zero] = 0
    method = create(name, t, **ZERO_SAFE[name])
    w = method(J @ J.T)
    assert torch.isfinite(w).all()
    assert 0 <= float(w[zero]) <= 1 / t
    if name == "cagrad":
        assert float(w[zero]) == pytest.approx(1 / t / (1 + 0.5**2), rel=1e-12)
    else:
        assert float(w[zero]) == 0
    keep = [i for i in range(t) if i != zero]
    d = w @ J
    assert d.norm() > 0.1 * J.norm(dim=1).max()
    if name != "cagrad":  # CAGrad's g0 is the mean over all t tasks, zero ones included (as in the paper)
        J2 = J[keep]
        d2 = create(name, t - 1, **ZERO_SAFE[name])(J2 @ J2.T) @ J2
        assert (d - d2).norm() < 1e-8 * d2.norm()


def test_cagrad_zero_task_update_is_the_live_tasks_worst_case() -> None:
    """CAGrad with a zero task: ``d = g0 + c ||g0|| g_w / ||g_w||`` with ``g0`` the mean over all three tasks and
    ``w`` the dual's solution over the two live ones, checked on the dual's optimality: ``g_w`` is, among
    the live tasks' simplex, the minimiser of ``g_w . g0 + c ||g0|| ||g_w||`` (grid of 2001 points, 1e-9)."""
    t, c = 3, 0.5
    J = torch.randn(t, 10, generator=torch.Generator().manual_seed(4), dtype=F64)
    J[2] = 0
    w = create("cagrad", t, c=c, rescale=0)(J @ J.T)
    g0 = J.mean(dim=0)
    lam_w = w[:2] - 1 / t
    gw = lam_w / lam_w.sum() @ J[:2]
    assert torch.allclose(w @ J, g0 + c * g0.norm() * gw / gw.norm(), rtol=1e-10, atol=0)
    grid = torch.linspace(0, 1, 2001, dtype=F64).unsqueeze(1)
    candidates = grid * J[0] + (1 - grid) * J[1]
    objective = candidates @ g0 + c * g0.norm() * candidates.norm(dim=1)
    assert float(gw @ g0 + c * g0.norm() * gw.norm()) <= float(objective.min()) + 1e-9


@pytest.mark.parametrize("name", ["imtl", "cagrad", "nashmtl", "mgda", "upgrad", "alignedmtl", "pcgrad", "gradvac"])
def test_all_zero_jacobian_gives_finite_weights(name: str) -> None:
    """Every gradient zero: finite weights (and so a zero update) from every Gramian method."""
    w = create(name, 3)(torch.zeros(3, 3, dtype=F64))
    assert torch.isfinite(w).all()


# ---------------------------------------------------------------------------------------- FAMO


def test_famo_logits_follow_the_paper() -> None:
    """FAMO (Liu et al. 2023): with ``z = softmax(xi)`` and ``delta_i = log(L_i(before) + eps) - log(L_i(after) +
    eps)`` on the SAME batch, the logits take an Adam step (lr, L2 weight decay ``gamma``) along
    ``d_j = sum_i delta_i dz_i/dxi_j = z_j (delta_j - sum_i z_i delta_i)``. Written out plainly here for four
    steps; the logits and weights ``w_i = (z_i / L_i) / sum_j (z_j / L_j)`` agree to 1e-6."""
    T, lr, gamma, eps = 3, 0.025, 1e-3, 1e-8
    famo = create("famo", T, lr=lr, weight_decay=gamma, eps=eps)
    xi, m, v = torch.zeros(T, dtype=F64), torch.zeros(T, dtype=F64), torch.zeros(T, dtype=F64)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 5):
        before = torch.rand(T, generator=g) + 0.5
        after = before * (torch.rand(T, generator=g) * 0.5 + 0.5)  # every loss went down, by different amounts
        z = torch.softmax(xi, dim=0)
        w_paper = (z / (before.double() + eps)) / (z / (before.double() + eps)).sum()
        assert torch.allclose(famo(before).double(), w_paper, rtol=1e-6, atol=0)
        famo.after_step(before, after, list(range(T)))
        delta = torch.log(before.double() + eps) - torch.log(after.double() + eps)
        grad = z * (delta - (z * delta).sum()) + gamma * xi
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        xi = xi - lr * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
        assert torch.allclose(famo.logits.value.double(), xi, rtol=1e-6, atol=1e-8)
    assert xi.abs().max() > 0.01  # the logits did move
