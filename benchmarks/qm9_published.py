"""A QM9 compare beside the published delta-m %: both orderings and their Spearman rank correlation.

Reads the ``compare.json`` written by ``graph-mtl compare`` (for example with ``benchmarks/configs/qm9_cpu.yaml``)
and prints one Markdown row per balancer that the published table also has, then Spearman's rho between the two
orderings of those methods (ranks averaged over ties; rho = 1 - 6 sum d^2 / (n (n^2 - 1)) without ties, the
Pearson correlation of the ranks in general).

    python benchmarks/qm9_published.py runs/qm9_cpu/compare.json

Published: Navon et al. 2022 (Nash-MTL), Table 1, QM9 delta-m % over 3 seeds (110k training molecules,
complete graph, 300 epochs); FAMO from Liu et al. 2023 on the same protocol.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: graph_mtl balancer name -> (name in the paper, published delta-m %)
PUBLISHED: dict[str, tuple[str, float]] = {
    "ew": ("LS", 177.6),
    "rlw": ("RLW", 203.8),
    "dwa": ("DWA", 175.3),
    "uw": ("UW", 108.0),
    "mgda": ("MGDA", 120.5),
    "pcgrad": ("PCGrad", 125.7),
    "cagrad": ("CAGrad", 112.8),
    "imtl": ("IMTL-G", 77.2),
    "nashmtl": ("Nash-MTL", 62.0),
    "famo": ("FAMO", 58.5),
}


def ranks(values: list[float]) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions."""
    array = np.asarray(values, dtype=float)
    order = array.argsort(kind="stable")
    result = np.empty(len(array))
    result[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        result[tied] = result[tied].mean()
    return result


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation of two equally long lists."""
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def table(summary: dict) -> tuple[list[str], float]:
    """Markdown rows (ours vs published, best first by ours) and Spearman's rho over the common methods."""
    common = [b for b in summary["balancers"] if b in PUBLISHED]
    ours = [summary["balancers"][b]["delta_m"]["mean"] for b in common]
    theirs = [PUBLISHED[b][1] for b in common]
    our_rank, their_rank = ranks(ours), ranks(theirs)
    lines = ["| method | paper name | ours Δm% (CPU scale) | our rank | published Δm% | published rank |",
             "|---|---|---|---|---|---|"]
    for i in np.argsort(our_rank, kind="stable"):
        row = summary["balancers"][common[i]]
        lines.append(f"| {common[i]} | {PUBLISHED[common[i]][0]} | {row['delta_m']['mean']:.1f} ± "
                     f"{row['delta_m']['std']:.1f} | {our_rank[i]:g} | {theirs[i]:.1f} | {their_rank[i]:g} |")
    return lines, spearman(ours, theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="compare.json of a QM9 graph-mtl compare")
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    lines, rho = table(summary)
    print("\n".join(lines))
    print(f"\nSpearman rank correlation over these {len(lines) - 2} methods: {rho:.2f}")


if __name__ == "__main__":
    main()
