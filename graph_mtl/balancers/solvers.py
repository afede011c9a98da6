"""Small exact solvers over Gramians, in float64 (no cvxpy, no quadprog).

:func:`nonneg_qp` solves a batch of strictly convex quadratic programs over the non-negative orthant with the
block principal pivoting method (Judice & Pires 1994, as used for NNLS by Kim & Park 2011): it guesses the set
of free variables, solves the equality-constrained system for all problems at once with one batched linear
solve, and swaps the variables that violate the KKT conditions, with the backup rule that guarantees
termination for positive-definite matrices. It reads a few values back to the host per solve (one per pivoting round),
never one per task pair.
"""

from __future__ import annotations

import torch
from torch import Tensor


def regularized(G: Tensor, eps: float) -> Tensor:
    """``psd(G) / tr(G) + eps I`` in float64: scale-free and positive definite.

    A float32 Gramian can be slightly indefinite (eigenvalues of about ``-1e-7 tr(G)``), which would make the
    quadratic programs non-convex; its negative eigenvalues are clipped to 0 first.
    """
    G = G.double()
    G = (G + G.T) / 2
    trace = G.diagonal().sum()
    G = torch.where(trace > 0, G / torch.where(trace > 0, trace, torch.ones_like(trace)), torch.zeros_like(G))
    lam, V = torch.linalg.eigh(G)
    G = (V * lam.clamp_min(0)) @ V.T
    return G + eps * torch.eye(len(G), dtype=G.dtype, device=G.device)


def nonneg_qp(Q: Tensor, q: Tensor, free: Tensor | None = None, tol: float = 1e-12) -> Tensor:
    """Solve ``min_x 1/2 x^T Q x + q_b^T x  s.t.  x >= 0`` for every row ``q_b`` of ``q [B, n]``.

    Args:
        Q: ``[n, n]`` symmetric positive definite (float64).
        q: ``[B, n]`` linear terms.
        free: ``[B, n]`` initial guess of the variables that are > 0 (default: all free).
        tol: relative tolerance of the KKT conditions.

    Returns:
        ``x [B, n]``, the minimisers.
    """
    B, n = q.shape
    eye = torch.eye(n, dtype=Q.dtype, device=Q.device)
    free = torch.ones(B, n, dtype=torch.bool, device=Q.device) if free is None else free.clone()
    scale = Q.abs().amax() + q.abs().amax(dim=1, keepdim=True)
    best = torch.full((B,), n + 1, dtype=torch.long, device=Q.device)
    backup = torch.full((B,), 3, dtype=torch.long, device=Q.device)
    x = torch.zeros_like(q)
    for _ in range(10 * n + 20):
        both = free.unsqueeze(2) & free.unsqueeze(1)
        M = torch.where(both, Q, eye)  # fixed variables: x_i = 0
        x = torch.linalg.solve(M, torch.where(free, -q, 0.0).unsqueeze(2)).squeeze(2)
        y = x @ Q + q  # the gradient; the multipliers of the active constraints
        bound = tol * scale * (1 + x.abs().amax(dim=1, keepdim=True))
        bad = (free & (x < -bound)) | (~free & (y < -bound))
        count = bad.sum(dim=1)
        if not bool(count.any()):
            break
        better = count < best
        best = torch.where(better, count, best)
        backup = torch.where(better, 3, backup - (count > 0).long())
        # full exchange while it improves (or for 3 more rounds); else swap only the last violating variable
        last = torch.zeros_like(bad)
        last_idx = (bad.long() * torch.arange(1, n + 1, device=Q.device)).argmax(dim=1)
        last[torch.arange(B, device=Q.device), last_idx] = True
        swap = torch.where((backup >= 0).unsqueeze(1), bad, bad & last)
        free = free ^ swap
    return torch.where(free, x, 0.0).clamp_min(0.0)


def simplex_min_norm(G: Tensor, eps: float = 1e-10) -> Tensor:
    """Weights ``w`` on the simplex minimising ``w^T G w``: the min-norm point of the hull of the rows of J.

    With ``v* = argmin_{v >= 0} 1/2 v^T G v - 1^T v`` the KKT conditions of both problems coincide and
    ``w = v* / sum(v*)`` (Sener & Koltun 2018 solve the same problem with Frank-Wolfe; this is exact). To be
    exact at any relative scale of the gradients the problem is solved in ``x = D v`` with ``D = diag(||g_i||)``:
    ``min_{x >= 0} 1/2 x^T C x - (1/||g||)^T x`` where ``C = D^-1 G D^-1`` holds the cosines (unit diagonal),
    so the ridge ``eps I`` is relative to every row, however small. A zero gradient makes ``0`` the min-norm
    point: the weight then goes to the zero rows.
    """
    G = G.double()
    G = (G + G.T) / 2
    n = G.diagonal().clamp_min(0).sqrt()
    zero = n == 0
    safe = torch.where(zero, torch.ones_like(n), n)
    C = G / safe.unsqueeze(0) / safe.unsqueeze(1)
    C = torch.where(torch.eye(len(G), dtype=torch.bool, device=G.device), torch.ones_like(C), C)
    lam, V = torch.linalg.eigh(C)
    Q = (V * lam.clamp_min(0)) @ V.T + eps * torch.eye(len(C), dtype=C.dtype, device=C.device)
    q = -(1 / safe) / (1 / safe).amax()  # scaled: w is invariant to a positive factor on q
    x = nonneg_qp(Q, q.unsqueeze(0))[0]
    v = x / safe
    w = v / v.sum()
    return torch.where(zero.any(), zero.double() / zero.sum().clamp_min(1), w)
