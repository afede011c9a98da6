"""graph_mtl's methods against an independent implementation: torchjd 0.18.0.

Every method torchjd also implements is compared on random Jacobians (:data:`SEEDS`; ``t = 2..6`` tasks,
``D = max(5, t)..40`` coordinates, row norms ``e^N(0, 1)``) and on the edge cases of :func:`edge_jacobians`
(duplicate rows, opposite rows, row scales 1e-2..1e2 and 1e-4..1e4) where torchjd's result is defined. The
update ``d = w^T J`` is compared by ``||d - d_ref|| / ||d_ref||``; the weights too where both normalise them
alike. Each test states its tolerance. Not in torchjd: GradNorm, DB-MTL and MGDA-UB (MGDA on another ``J``).

Deliberate differences of definition or solver (the tests hold graph_mtl to the exact definition instead):

* MGDA: torchjd runs Frank-Wolfe (Sener & Koltun's Algorithm 2), which converges like ``1/k``; graph_mtl
  solves the quadratic program exactly. Compared with ``epsilon=1e-12``: ``d`` to 1e-3, and graph_mtl's
  ``||d||`` (the objective) is never larger. Opposite rows: the min-norm point is 0, only ``||d||`` is compared.
* CAGrad: torchjd solves the dual with Clarabel, graph_mtl with SLSQP to ``ftol=1e-15``; the dual is flat
  near its optimum, so ``w`` differs by about 1e-4: ``d`` to 1e-3, and graph_mtl's dual objective is never
  larger. torchjd has no ``rescale`` (graph_mtl's ``rescale=0``). Where the dual's ``g_w`` vanishes (opposite
  rows) or its worst case is a row 1e4 shorter than the longest (row scales 1e-2..1e2), torchjd returns
  ``w = 0`` (its ``norm_eps``) and graph_mtl the mean gradient or the exact answer: not compared.
* Nash-MTL: torchjd's port of the authors' solver stops at ``||G a - 1/a|| < 1e-3`` (on ``G / ||G||_F``):
  ``d`` to 1e-3 and graph_mtl's residual of ``alpha_i (G alpha)_i = 1`` is never larger. From row scales
  1e-2..1e2 on, the authors' normalisation loses the short rows (graph_mtl solves on the cosines, see its
  docstring): the residuals are compared instead; opposite rows or ``t > D``: no bargaining solution exists.
* IMTL-G: torchjd's generalisation ``w ~ pinv(G) ||g||`` is the paper's equal-projection update wherever one
  exists with nonzero projections (full row rank, duplicate rows). Opposite rows: only ``d = 0`` has equal
  projections (graph_mtl) while torchjd returns a least-squares compromise; at row scales 1e-4..1e4
  ``pinv`` truncates ``G``'s small singular values: not compared (graph_mtl is checked on the property).
* Aligned-MTL: graph_mtl cuts the spectrum at ``lambda_max t eps_float32`` (gradients arrive in float32),
  torchjd at the Gramian dtype's epsilon: compared in float64 where no eigenvalue lies between the two cuts
  (not at row scales 1e-2..1e2 and beyond, whose smallest eigenvalue, 1e-8 of the largest, does).
* PCGrad and GradVac: torchjd draws its permutations with ``torch.randperm`` from the global generator; the
  tests record them and hand the same orders to graph_mtl's surgery. GradVac: torchjd's ``eps=0`` (its guard
  of the denominators), ``beta=0.5``, three steps of state.
* GradDrop: the same uniform sample (``torch.rand`` on the global generator, same seed).
* RLW: both draw ``randn(T)`` (graph_mtl from its own generator seeded like torchjd's global one).
* UW: torchjd's objective is Kendall's ``1/2 e^{-s} L + 1/2 s``, graph_mtl's drops the 1/2: graph_mtl's
  weights are twice torchjd's and its log-variance gradient too, which Adam does not see (up to its ``eps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

pytest.importorskip("torchjd", reason="torchjd (the dev extra) is the independent oracle")

from torchjd import aggregation as tjd  # noqa: E402
from torchjd import scalarization as tjs  # noqa: E402

from graph_mtl.balancers import create  # noqa: E402
from graph_mtl.balancers.graddrop import graddrop_update  # noqa: E402
from graph_mtl.balancers.gradvac import gradvac_weights  # noqa: E402
from graph_mtl.balancers.pcgrad import pcgrad_weights  # noqa: E402

SEEDS = range(8)
F64 = torch.float64


def random_jacobian(seed: int) -> torch.Tensor:
    """``t = 2..6`` rows in ``R^D``, ``D = max(5, t)..40``, row norms ``e^N(0, 1)`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    t = int(torch.randint(2, 7, (), generator=g))
    D = int(torch.randint(max(5, t), 41, (), generator=g))
    scales = torch.randn(t, 1, generator=g, dtype=F64).exp()
    return torch.randn(t, D, generator=g, dtype=F64) * scales


def edge_jacobians() -> dict[str, torch.Tensor]:
    """The edge cases: duplicate rows, opposite rows, tiny and huge row scales."""
    B = torch.randn(4, 12, generator=torch.Generator().manual_seed(1), dtype=F64)
    scaled = lambda s: B[:3] * torch.tensor(s, dtype=F64).unsqueeze(1)  # noqa: E731
    return {"duplicate": B[[0, 0, 1, 2]], "duplicate pairs": B[[0, 1, 0, 1]],
            "opposite": torch.stack([B[0], -B[0], B[1]]),
            "scales 1e-2..1e2": scaled([1e-2, 1.0, 1e2]), "scales 1e-4..1e4": scaled([1e-4, 1.0, 1e4])}


EDGES = edge_jacobians()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def cases(excluded: tuple[str, ...] = ()) -> list:
    """pytest params: the random Jacobians and the edge cases not ``excluded``."""
    return ([pytest.param(random_jacobian(s), id=f"seed{s}") for s in SEEDS]
            + [pytest.param(J, id=name) for name, J in EDGES.items() if name not in excluded])


# ---------------------------------------------------------------------------------------- Gramian weightings


@pytest.mark.parametrize("J", cases())
def test_upgrad_matches_torchjd(J: torch.Tensor) -> None:
    """Same definition, normalisation (trace, ``norm_eps=1e-4``) and ridge (``reg_eps=1e-4``): ``d`` and ``w``
    to 1e-9 relative (torchjd solves with quadprog, graph_mtl by block principal pivoting)."""
    pytest.importorskip("quadprog", reason="torchjd's UPGrad needs quadprog (torchjd[quadprog-projector])")
    G = J @ J.T
    w, ref = create("upgrad")(G), tjd.UPGradWeighting()(G)
    assert rel(w @ J, ref @ J) < 1e-9
    assert rel(w, ref) < 1e-9


@pytest.mark.parametrize("J", cases(excluded=("opposite", "scales 1e-4..1e4")))
def test_imtl_matches_torchjd(J: torch.Tensor) -> None:
    """``d`` to 1e-8 relative; ``w`` too where it is unique (full row rank), both summing to 1."""
    G = J @ J.T
    w, ref = create("imtl")(G), tjd.IMTLGWeighting()(G)
    assert rel(w @ J, ref @ J) < 1e-8
    if torch.linalg.matrix_rank(J) == len(J):
        assert rel(w, ref) < 1e-8


def test_imtl_beyond_torchjd_has_equal_projections() -> None:
    """Where torchjd's IMTL-G is not defined: at row scales 1e-4..1e4 and 1e-8..1e8 graph_mtl's update still
    has equal projections on the unit gradients (to 1e-9 relative); opposite rows give ``d = 0`` (1e-12)."""
    B = EDGES["scales 1e-2..1e2"]
    for s in (1e4, 1e8):
        J = B * torch.tensor([1 / s, 1.0, s], dtype=F64).unsqueeze(1)
        d = create("imtl")(J @ J.T) @ J
        projections = (J / J.norm(dim=1, keepdim=True)) @ d
        assert torch.allclose(projections, projections.mean().expand(3), rtol=1e-9, atol=0)
    J = EDGES["opposite"]
    assert (create("imtl")(J @ J.T) @ J).norm() < 1e-12 * J.norm()


@pytest.mark.parametrize("J", cases(excluded=("scales 1e-2..1e2", "scales 1e-4..1e4")))
def test_alignedmtl_matches_torchjd(J: torch.Tensor) -> None:
    """``d`` and ``w`` to 1e-9 relative (both float64 eigendecompositions, preference ``1/t``)."""
    G = J @ J.T
    w, ref = create("alignedmtl")(G), tjd.AlignedMTLWeighting()(G)
    assert rel(w @ J, ref @ J) < 1e-9
    assert rel(w, ref) < 1e-9


@pytest.mark.parametrize("J", cases(excluded=("opposite",)))
def test_mgda_matches_torchjd(J: torch.Tensor) -> None:
    """``d`` to 1e-3 relative against Frank-Wolfe run to ``epsilon=1e-12``; graph_mtl's ``||d||`` is never
    larger (1e-12 relative): it is the exact minimum."""
    G = J @ J.T
    w, ref = create("mgda")(G), tjd.MGDAWeighting(epsilon=1e-12, max_iters=10_000)(G)
    assert rel(w @ J, ref @ J) < 1e-3
    assert (w @ J).norm() <= (ref @ J).norm() * (1 + 1e-12)
    assert w.min() >= 0 and abs(float(w.sum()) - 1) < 1e-12


def test_mgda_opposite_rows_reach_zero() -> None:
    """Opposite rows: 0 is in the hull, so the min-norm point is 0: graph_mtl's ``||d||`` is below 1e-9 of
    the rows' and below Frank-Wolfe's."""
    J = EDGES["opposite"]
    G = J @ J.T
    d, ref = create("mgda")(G) @ J, tjd.MGDAWeighting(epsilon=1e-12, max_iters=10_000)(G) @ J
    assert d.norm() < 1e-9 * J.norm(dim=1).min()
    assert d.norm() <= ref.norm()


def cagrad_objective(G: torch.Tensor, weights: torch.Tensor, c: float) -> float:
    """CAGrad's dual objective ``w^T b + c ||g0|| sqrt(w^T G w)`` at the ``w`` behind ``weights = 1/t + lambda w``
    (clipped to ``w >= 0``: an interior-point solver may step outside the simplex by its tolerance)."""
    x = (weights - 1 / len(G)).clamp_min(0)
    w = x / x.sum()
    b = G.mean(dim=1)
    return float(w @ b + c * b.mean().sqrt() * (w @ G @ w).sqrt())


@pytest.mark.parametrize("J", cases(excluded=("opposite", "scales 1e-2..1e2", "scales 1e-4..1e4")))
def test_cagrad_matches_torchjd(J: torch.Tensor) -> None:
    """``rescale=0`` (torchjd has no rescaling), ``c = 0.5``: ``d`` and ``w`` to 1e-3 relative; graph_mtl's
    dual objective is at most torchjd's (+1e-9 relative)."""
    pytest.importorskip("cvxpy", reason="torchjd's CAGrad needs cvxpy and clarabel (torchjd[cagrad])")
    G = J @ J.T
    w, ref = create("cagrad", c=0.5, rescale=0)(G), tjd.CAGradWeighting(c=0.5)(G)
    assert rel(w @ J, ref @ J) < 1e-3
    assert rel(w, ref) < 1e-3
    ours, theirs = cagrad_objective(G, w, 0.5), cagrad_objective(G, ref, 0.5)
    assert ours <= theirs + 1e-9 * abs(theirs)


def nash_residual(G: torch.Tensor, alpha: torch.Tensor) -> float:
    """``max_i |alpha_i (G alpha)_i - 1|``."""
    return float((alpha * (G @ alpha) - 1).abs().max())


@pytest.mark.parametrize("max_norm", [0.0, 1.0])
@pytest.mark.parametrize("J", cases(excluded=("opposite", "scales 1e-2..1e2", "scales 1e-4..1e4")))
def test_nashmtl_matches_torchjd(J: torch.Tensor, max_norm: float) -> None:
    """One step from the same start (``alpha = 1``): ``d`` and ``w`` to 1e-3 relative, unclipped
    (``max_norm=0``) and with the authors' default ``max_norm=1``; unclipped, graph_mtl's residual of
    ``alpha_i (G alpha)_i = 1`` is at most torchjd's (and below 1e-5)."""
    pytest.importorskip("cvxpy", reason="torchjd's Nash-MTL needs cvxpy and ecos (torchjd[nash-mtl])")
    G = J @ J.T
    w = create("nashmtl", len(J), max_norm=max_norm)(G)
    ref = tjd.NashMTL(n_tasks=len(J), max_norm=max_norm).weighting(J)
    assert rel(w @ J, ref @ J) < 1e-3
    assert rel(w, ref) < 1e-3
    if max_norm == 0:
        assert nash_residual(G, w) <= max(nash_residual(G, ref), 1e-5)


@pytest.mark.parametrize("name", ["scales 1e-2..1e2", "scales 1e-4..1e4"])
def test_nashmtl_beyond_torchjd_solves_the_system(name: str) -> None:
    """At row scales 1e-2..1e2 and beyond, torchjd (the authors' normalisation by ``||G||_F``) leaves
    ``alpha_i (G alpha)_i`` off 1 by more than 1, graph_mtl solves it to 1e-5 (``max_norm=0``)."""
    pytest.importorskip("cvxpy", reason="torchjd's Nash-MTL needs cvxpy and ecos (torchjd[nash-mtl])")
    J = EDGES[name]
    G = J @ J.T
    assert nash_residual(G, create("nashmtl", 3, max_norm=0.0)(G)) < 1e-5
    assert nash_residual(G, tjd.NashMTL(n_tasks=3, max_norm=0.0).weighting(J)) > 1


def recorded_permutations(call: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``call()``'s result and the permutations it drew with ``torch.randperm``."""
    drawn: list[torch.Tensor] = []
    real = torch.randperm

    def recording(*args, **kwargs) -> torch.Tensor:
        p = real(*args, **kwargs)
        drawn.append(p.clone())
        return p

    torch.randperm = recording
    try:
        return call(), drawn
    finally:
        torch.randperm = real


@pytest.mark.parametrize("J", cases())
def test_pcgrad_matches_torchjd(J: torch.Tensor) -> None:
    """With torchjd's permutations (task ``i`` draws a permutation of all tasks and skips itself): ``d`` and
    ``w`` to 1e-12 relative (``reduction="sum"``, the paper's)."""
    G = J @ J.T
    torch.manual_seed(0)
    ref, drawn = recorded_permutations(lambda: tjd.PCGradWeighting()(G))
    orders = torch.stack([p[p != i] for i, p in enumerate(drawn)])
    w = pcgrad_weights(G, orders)
    assert rel(w @ J, ref @ J) < 1e-12
    assert rel(w, ref) < 1e-12


@pytest.mark.parametrize("J", cases())
def test_gradvac_matches_torchjd(J: torch.Tensor) -> None:
    """Three steps on perturbed ``J`` with torchjd's permutations (task ``i`` shuffles the others), ``beta =
    0.5``: ``d`` and ``w`` to 1e-10 relative and the moving averages ``phihat`` to 1e-12."""
    t = len(J)
    weighting = tjd.GradVacWeighting(beta=0.5, eps=0.0)
    target = torch.zeros(t, t, dtype=F64)
    g = torch.Generator().manual_seed(t)
    torch.manual_seed(0)
    for _ in range(3):
        Js = J + 0.5 * J.norm(dim=1, keepdim=True) * torch.randn(J.shape, generator=g, dtype=F64) / J.shape[1]**0.5
        G = Js @ Js.T
        ref, drawn = recorded_permutations(lambda G=G: weighting(G))
        others = [[j for j in range(t) if j != i] for i in range(t)]
        orders = torch.tensor([[others[i][k] for k in p.tolist()] for i, p in enumerate(drawn)])
        w = gradvac_weights(G, orders, target, beta=0.5)
        assert rel(w @ Js, ref @ Js) < 1e-10
        assert rel(w, ref) < 1e-10
        assert torch.allclose(target, weighting._phi_t, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------- aggregators


@pytest.mark.parametrize("leak", [0.0, 0.3])
@pytest.mark.parametrize("J", cases())
def test_graddrop_matches_torchjd(J: torch.Tensor, leak: float) -> None:
    """The same uniform sample per coordinate: ``d`` to 1e-12 relative, with and without leak."""
    torch.manual_seed(3)
    ref = tjd.GradDrop(leak=torch.full((len(J),), leak, dtype=F64))(J)
    torch.manual_seed(3)
    uniform = torch.rand(J.shape[1], dtype=F64)
    assert rel(graddrop_update(J, uniform, leak), ref) < 1e-12


# ---------------------------------------------------------------------------------------- loss weightings


def scalarizer_weights(scalarizer: Callable[[torch.Tensor], torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
    """The weights of a torchjd scalarizer: the gradient of its scalar with respect to the losses."""
    x = losses.clone().requires_grad_(True)
    return torch.autograd.grad(scalarizer(x), x)[0]


def loss_sequence(T: int, steps: int, seed: int = 0) -> torch.Tensor:
    """``[steps, T]`` positive losses drifting down."""
    g = torch.Generator().manual_seed(seed)
    decay = torch.linspace(1.0, 0.3, steps).unsqueeze(1)
    return (torch.rand(steps, T, generator=g) + 0.2) * decay


def test_ew_and_fixed_match_torchjd() -> None:
    """EW = torchjd's ``Sum``, fixed weights = ``Constant``: exact."""
    losses = loss_sequence(3, 1)[0]
    assert torch.equal(create("ew", 3)(losses), scalarizer_weights(tjs.Sum(), losses))
    fixed = torch.tensor([0.5, 2.0, 1.0])
    assert torch.equal(create("fixed", ["a", "b", "c"], weights=fixed.tolist())(losses),
                       scalarizer_weights(tjs.Constant(fixed), losses))


def test_rlw_matches_torchjd() -> None:
    """Softmax of ``randn(T)`` from the same seed, 5 steps: to 1e-6 (float32)."""
    seed, T = 7, 4
    rlw = create("rlw", T, seed=seed)
    torch.manual_seed(seed)
    for losses in loss_sequence(T, 5):
        ref = scalarizer_weights(tjs.Random(), losses)
        assert torch.allclose(rlw(losses), ref, rtol=1e-6, atol=0)


def test_dwa_matches_torchjd() -> None:
    """Four epochs of three steps, temperature 2: the weights of every step to 1e-6 (float32)."""
    T = 3
    dwa, ref = create("dwa", T, temperature=2.0), tjs.DWA(temperature=2.0)
    losses = loss_sequence(T, 12)
    for epoch in range(4):
        for step in range(3):
            x = losses[3 * epoch + step]
            assert torch.allclose(dwa(x), scalarizer_weights(ref, x), rtol=1e-6, atol=0)
        dwa.on_epoch_end()
        ref.step()
    assert not torch.allclose(dwa(losses[0]), torch.ones(T))  # the weights did move


def test_famo_matches_torchjd() -> None:
    """Six steps of the same-batch re-evaluation (``lr=0.025``, ``weight_decay=1e-3``): the weights of every
    step and the logits to 1e-5 (float32, both Adam)."""
    T = 3
    famo = create("famo", T, lr=0.025, weight_decay=1e-3)
    ref = tjs.FAMO(T, lr=0.025, weight_decay=1e-3)
    before, after = loss_sequence(T, 6, seed=1), loss_sequence(T, 6, seed=2)
    index = list(range(T))
    for b, a in zip(before, after):
        assert torch.allclose(famo(b), scalarizer_weights(ref, b), rtol=1e-5, atol=0)
        famo.after_step(b, a, index)
        ref.update(a)
        assert torch.allclose(famo.logits.value, ref._w.detach(), rtol=1e-5, atol=1e-7)
    assert famo.logits.value.abs().max() > 0.05  # the logits did move


def test_uw_matches_torchjd() -> None:
    """Six steps, Adam ``lr=0.05`` on the log-variances (torchjd's jointly through ``torch.optim.Adam``): the
    weights are twice torchjd's (its objective halves Kendall's) and the log-variances equal, to 1e-5."""
    T = 3
    uw = create("uw", T, lr=0.05, optimizer="adam")
    ref = tjs.UW(T)
    optimizer = torch.optim.Adam(ref.parameters(), lr=0.05)
    for losses in loss_sequence(T, 6, seed=3):
        x = losses.clone().requires_grad_(True)
        optimizer.zero_grad()
        ref(x).backward()
        assert torch.allclose(uw(losses), 2 * x.grad, rtol=1e-5, atol=0)
        optimizer.step()
        assert torch.allclose(uw.log_var.value, ref.log_var.detach(), rtol=1e-5, atol=1e-7)
    assert not math.isclose(float(uw.log_var.value.abs().max()), 0.0)
