"""Scaffold and random splits: deterministic, disjoint, complete, scaffold-pure, sized as asked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rdkit import Chem

from graph_mtl.data import random_split, scaffold_split
from graph_mtl.data.molecules import read_smiles_file
from graph_mtl.data.splits import murcko_scaffold, scaffold_groups


@pytest.fixture(scope="module")
def nci_smiles() -> list[str]:
    """The first 600 parseable SMILES of the embedded NCI file."""
    rows = read_smiles_file()[:610]
    return [s for _, s, _ in rows if Chem.MolFromSmiles(s) is not None][:600]


def check_partition(split: dict[str, list[int]], n: int) -> None:
    assert set(split) == {"train", "valid", "test"}
    for idx in split.values():
        assert idx == sorted(idx)
    together = split["train"] + split["valid"] + split["test"]
    assert sorted(together) == list(range(n))


def test_scaffold_split_is_a_deterministic_partition(nci_smiles):
    first = scaffold_split(nci_smiles)
    assert scaffold_split(list(nci_smiles)) == first
    check_partition(first, len(nci_smiles))


def test_scaffold_split_keeps_each_scaffold_in_one_split(nci_smiles):
    split = scaffold_split(nci_smiles)
    home: dict[str, str] = {}
    for name, idx in split.items():
        for i in idx:
            scaffold = murcko_scaffold(nci_smiles[i])
            assert home.setdefault(scaffold, name) == name, f"scaffold {scaffold!r} in two splits"


def test_scaffold_split_sizes_are_about_80_10_10(nci_smiles):
    n = len(nci_smiles)
    sizes = {k: len(v) for k, v in scaffold_split(nci_smiles).items()}
    assert sizes["train"] <= 0.8 * n and sizes["train"] >= 0.75 * n
    assert 0.05 * n <= sizes["valid"] <= 0.15 * n
    assert 0.05 * n <= sizes["test"] <= 0.15 * n


def test_scaffold_groups_order_and_greedy_fill():
    smiles = ["CCO", "c1ccccc1C", "CCN", "c1ccccc1O", "C1CCCCC1N", "c1ccccc1N", "CC"]
    groups = scaffold_groups(smiles)
    # acyclic "" and benzene both have 3 members: the tie goes to the smaller first index; cyclohexane last
    assert groups == [[0, 2, 6], [1, 3, 5], [4]]
    # caps: train 3.5, train+valid 5.25; benzene overflows both (test), cyclohexane fits valid
    split = scaffold_split(smiles, frac=(0.5, 0.25, 0.25))
    assert split == {"train": [0, 2, 6], "valid": [4], "test": [1, 3, 5]}


def test_scaffold_chirality_is_kept():
    chiral = murcko_scaffold("O[C@H]1C[C@@H](c2ccccc2)CC1c1ccccc1")
    assert "@" in chiral and chiral != murcko_scaffold("OC1CC(c2ccccc2)CC1c1ccccc1")


def test_scaffold_split_rejects_invalid_smiles_with_index():
    with pytest.raises(ValueError, match="index 2"):
        scaffold_split(["CCO", "c1ccccc1", "C1CC"])


@pytest.mark.parametrize("frac", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5)])
def test_bad_fractions_raise(frac):
    with pytest.raises(ValueError, match="frac"):
        scaffold_split(["CCO"], frac)
    with pytest.raises(ValueError, match="frac"):
        random_split(10, frac)


def test_random_split_deterministic_and_seeded():
    a, b = random_split(100, (0.8, 0.1, 0.1), seed=1), random_split(100, (0.8, 0.1, 0.1), seed=1)
    assert a == b
    assert random_split(100, (0.8, 0.1, 0.1), seed=2) != a
    assert {k: len(v) for k, v in a.items()} == {"train": 80, "valid": 10, "test": 10}


def test_random_split_rejects_bad_n():
    with pytest.raises(ValueError, match="n:"):
        random_split(-1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    a=st.floats(0, 1),
    b=st.floats(0, 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_split_is_a_partition(n, a, b, seed):
    f_train = a
    f_valid = (1 - a) * b
    frac = (f_train, f_valid, 1 - f_train - f_valid)
    split = random_split(n, frac, seed)
    check_partition(split, n)
    assert abs(len(split["train"]) - f_train * n) <= 1
