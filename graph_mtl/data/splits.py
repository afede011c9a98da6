"""Deterministic train/valid/test splits: Bemis-Murcko scaffold split and a seeded random split.

Both return ``{"train": [...], "valid": [...], "test": [...]}`` with each index list sorted ascending.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from rdkit import Chem, rdBase
from rdkit.Chem.Scaffolds import MurckoScaffold

from graph_mtl.data.base import SPLITS


def check_fractions(frac: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, valid, test)`` fractions: three finite non-negative numbers summing to 1."""
    values = tuple(float(f) for f in frac)
    if len(values) != 3:
        raise ValueError(f"frac: expected 3 fractions (train, valid, test), got {len(values)}")
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(f"frac: fractions must be finite and >= 0, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"frac: fractions must sum to 1, got {values} (sum {sum(values):.6g})")
    return values  # type: ignore[return-value]


def murcko_scaffold(smiles: str, index: int | None = None) -> str:
    """Canonical Bemis-Murcko scaffold SMILES (ring systems + linkers, chirality kept); ``""`` if acyclic."""
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        where = "" if index is None else f" at index {index}"
        raise ValueError(f"invalid SMILES{where}: {smiles!r}")
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=True)


def scaffold_groups(smiles: Sequence[str]) -> list[list[int]]:
    """Indices grouped by scaffold, ordered by (group size descending, first index ascending)."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        groups.setdefault(murcko_scaffold(s, i), []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def scaffold_split(smiles: Sequence[str], frac: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, list[int]]:
    """Bemis-Murcko scaffold split: whole scaffold groups go to one split, so test scaffolds are unseen.

    Groups (largest first, ties by first index) are placed greedily: a group joins train if train would stay
    within ``frac[0] * n``, otherwise valid if train + valid would stay within ``(frac[0] + frac[1]) * n``,
    otherwise test. This is the pretrain-gnns / OGB rule, so the result depends only on the SMILES order.
    """
    f_train, f_valid, _ = check_fractions(frac)
    n = len(smiles)
    train_cap, train_valid_cap = f_train * n, (f_train + f_valid) * n
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for group in scaffold_groups(smiles):
        if len(out["train"]) + len(group) <= train_cap:
            out["train"].extend(group)
        elif len(out["train"]) + len(out["valid"]) + len(group) <= train_valid_cap:
            out["valid"].extend(group)
        else:
            out["test"].extend(group)
    return {name: sorted(idx) for name, idx in out.items()}


def random_split(n: int, frac: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[int]]:
    """Random split of ``range(n)``: ``round(frac[0] n)`` train, ``round(frac[1] n)`` valid, rest test."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    f_train, f_valid, _ = check_fractions(frac)
    n_train = min(n, round(f_train * n))
    n_valid = min(n - n_train, round(f_valid * n))
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator).tolist()
    parts = (perm[:n_train], perm[n_train : n_train + n_valid], perm[n_train + n_valid :])
    return {name: sorted(idx) for name, idx in zip(SPLITS, parts)}
