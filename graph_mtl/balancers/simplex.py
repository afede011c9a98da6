"""Euclidean projection onto the probability simplex, for the methods that step task weights on it (MoCo,
MoDo, SDMGrad)."""

from __future__ import annotations

import torch
from torch import Tensor


def project_onto_simplex(v: Tensor) -> Tensor:
    """``argmin_{w >= 0, sum w = 1} ||w - v||``: ``w = max(v - theta, 0)`` with the threshold ``theta`` found
    from the sorted entries (Held, Wolfe & Crowder 1974; no host read-back). ``v`` is shifted by its maximum
    first (the projection is invariant to adding a constant), so that huge steps still land on the simplex."""
    v = v - v.max()
    u = torch.sort(v, descending=True).values
    cumulative = u.cumsum(0) - 1
    k = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    rho = ((u - cumulative / k > 0).sum() - 1).clamp_min(0)  # the entries above the threshold: a prefix
    theta = cumulative[rho] / (rho + 1)
    return (v - theta).clamp_min(0)
