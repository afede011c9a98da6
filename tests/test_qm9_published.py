"""benchmarks/qm9_published.py: ranks with ties and Spearman's rho against hand computations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from qm9_published import PUBLISHED, ranks, spearman, table  # noqa: E402


def test_ranks_average_ties():
    assert ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_spearman_against_hand_computation():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1,2,3,4) vs (2,1,4,3): sum d^2 = 4, rho = 1 - 6*4 / (4*15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)


def test_table_keeps_only_published_methods_ordered_by_ours():
    def row(value):
        return {"delta_m": {"mean": value, "std": 1.0}}

    summary = {"balancers": {"ew": row(30.0), "famo": row(10.0), "upgrad": row(5.0), "nashmtl": row(20.0)}}
    lines, rho = table(summary)
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["famo", "nashmtl", "ew"]
    assert rho == pytest.approx(spearman([30, 10, 20], [PUBLISHED["ew"][1], PUBLISHED["famo"][1],
                                                        PUBLISHED["nashmtl"][1]]))
    assert rho == pytest.approx(1.0)  # famo < nashmtl < ew in both orderings
    every, same_rho = table(summary, every_method=True)
    assert [line.split("|")[1].strip() for line in every[2:]] == ["upgrad", "famo", "nashmtl", "ew"]
    assert every[2] == "| upgrad |  | 5.0 ± 1.0 |  |  |  |" and same_rho == rho  # not published: blank, unranked
    summary["balancers"]["famo"] = row(25.0)  # ours: nashmtl < famo < ew; ranks (3,2,1) vs (3,1,2): rho = 0.5
    assert table(summary)[1] == pytest.approx(0.5)
