"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023), Algorithm 1.

With the eigendecomposition ``G = V diag(lambda) V^T`` restricted to the eigenvalues above
``lambda_max t eps_float32`` (the numerical rank), the balance transformation is
``B = sqrt(lambda_min) V diag(lambda)^{-1/2} V^T``; it makes the principal components of the gradient system
equally strong (condition number 1). The weights are ``B p`` with the preference ``p = 1/t`` (as in torchjd).
Eigendecomposition in float64 with masks, so no data-dependent shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from graph_mtl.balancers.base import GramianWeighting
from graph_mtl.balancers.registry import register


def aligned_mtl_weights(G: Tensor) -> Tensor:
    """Aligned-MTL's weights ``B 1/t`` from the Gramian ``G``."""
    t = len(G)
    lam, V = torch.linalg.eigh(G.double())
    keep = lam > lam.max() * t * torch.finfo(torch.float32).eps
    inv_root = torch.where(keep, 1 / torch.where(keep, lam, 1.0).sqrt(), 0.0)
    lam_min = torch.where(keep, lam, torch.inf).min()
    B = torch.where(keep.any(), lam_min.clamp_min(0).sqrt(), 0.0) * (V * inv_root) @ V.T
    B = torch.where(keep.any(), B, torch.eye(t, dtype=B.dtype, device=B.device))  # zero Gramian: identity
    return (B.sum(dim=1) / t).to(G.dtype)


@register("alignedmtl", "Senushkin et al. 2023")
class AlignedMTL(GramianWeighting):
    """Aligned-MTL (Senushkin et al. 2023): align the principal components of the task gradients.

    Args:
    """

    def weights(self, gramian: Tensor, losses: Tensor, index: list[int]) -> Tensor:
        return aligned_mtl_weights(gramian)
