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


def table(summary: dict, every_method: bool = False) -> tuple[list[str], float]:
    """Markdown rows (ours vs published, best first by ours) and Spearman's rho over the common methods; ranks
    are among the common methods. ``every_method`` adds the methods without a published figure (blank cells)."""
    balancers = summary["balancers"]
    common = [b for b in balancers if b in PUBLISHED]
    ours = [balancers[b]["delta_m"]["mean"] for b in common]
    theirs = [PUBLISHED[b][1] for b in common]
    our_rank = dict(zip(common, ranks(ours)))
    their_rank = dict(zip(common, ranks(theirs)))
    shown = balancers if every_method else common
    lines = ["| method | paper name | ours Δm% (CPU scale) | our rank | published Δm% | published rank |",
             "|---|---|---|---|---|---|"]
    for name in sorted(shown, key=lambda b: balancers[b]["delta_m"]["mean"]):
        stat = balancers[name]["delta_m"]
        paper, value = PUBLISHED.get(name, ("", None))
        published = (f"{our_rank[name]:g} | {value:.1f} | {their_rank[name]:g}" if value is not None else " |  | ")
        lines.append(f"| {name} | {paper} | {stat['mean']:.1f} ± {stat['std']:.1f} | {published} |")
    return lines, spearman(ours, theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="compare.json of a QM9 graph-mtl compare")
    parser.add_argument("--all", action="store_true", help="also list the methods without a published figure")
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    lines, rho = table(summary, every_method=args.all)
    common = sum(b in PUBLISHED for b in summary["balancers"])
    print("\n".join(lines))
    print(f"\nSpearman rank correlation over the {common} methods with a published figure: {rho:.2f}")


if __name__ == "__main__":
    main()
